"""Recommender at scale: training time and peak memory, then batched scoring of 100,000 customers.

    # on the orders in the database (e.g. after `generate_demo_data --customers 1000000`):
    DATABASE_URL=postgres://... .venv/bin/python bench/recommender_scale.py --from-db
    # on a synthetic history of the same shape, no database needed:
    .venv/bin/python bench/recommender_scale.py --customers 1000000
    # serving path only: the active ModelVersion scores --score customers of the database through
    # recommend_for_customers (history query, candidates, model, reasons), as a campaign would:
    DATABASE_URL=postgres://... .venv/bin/python bench/recommender_scale.py --active-model --score 100000

Prints wall time of each phase and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xsell_crm.settings")


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def synthetic(customers: int, products: int, seed: int):
    """~10 lines per customer over a year: Zipf-like popularity, products bought in related groups."""
    from campaigns.recommender.data import Catalogue

    rng = np.random.default_rng(seed)
    n_orders_per = rng.geometric(0.4, customers).clip(max=20)
    order_customer = np.repeat(np.arange(customers), n_orders_per)
    n_orders = len(order_customer)
    start = rng.uniform(0, 300, customers)
    order_t = 18_000 + start[order_customer] + rng.exponential(30, n_orders)
    order_t = np.minimum(order_t, 18_000 + 365)
    sizes = rng.geometric(0.3, n_orders).clip(max=15)
    line_order = np.repeat(np.arange(n_orders), sizes)
    popularity = 1.0 / np.arange(1, products + 1) ** 0.8
    popularity /= popularity.sum()
    # Each order has a theme (a block of 20 related products) and draws half its lines from it.
    theme = rng.choice(products, n_orders, p=popularity)[line_order] // 20 * 20
    in_theme = rng.random(len(line_order)) < 0.5
    item = np.where(
        in_theme,
        np.minimum(theme + rng.integers(0, 20, len(line_order)), products - 1),
        rng.choice(products, len(line_order), p=popularity),
    )
    lines = pd.DataFrame(
        {
            "customer": order_customer[line_order] + 1,
            "order": line_order + 1,
            "t": order_t[line_order],
            "product": item + 1,
            "quantity": np.ones(len(line_order), np.int32),
            "amount": (2.0 + item % 50).astype(float),
            "returned": rng.random(len(line_order)) < 0.01,
            "item": item,
        }
    ).drop_duplicates(["order", "item"])
    catalogue = Catalogue(
        products=pd.DataFrame(
            {
                "id": np.arange(1, products + 1),
                "sku": [f"S{i}" for i in range(products)],
                "name": [f"Product {i}" for i in range(products)],
                "category": [f"cat{i % 12}" for i in range(products)],
                "price": 2.0 + np.arange(products) % 50,
                "active": True,
                "repurchasable": np.arange(products) % 10 == 0,
            }
        ),
        complements=np.empty((0, 2), np.int64),
    )
    return lines.reset_index(drop=True), catalogue


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-db", action="store_true", help="use the orders in DATABASE_URL")
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--products", type=int, default=5_000)
    parser.add_argument("--score", type=int, default=100_000, help="customers to score in one batch")
    parser.add_argument("--max-customers", type=int, default=20_000, help="training customers per cutoff")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--active-model", action="store_true", help="score with the active ModelVersion only")
    parser.add_argument("--k", type=int, default=3)
    args = parser.parse_args()

    import django

    django.setup()
    if args.active_model:
        return score_active(args)
    from campaigns.recommender.data import catalogue_load, lines_load
    from campaigns.recommender.model import recommender_rank, recommender_train

    started = time.monotonic()
    if args.from_db:
        catalogue = catalogue_load()
        lines = lines_load(catalogue=catalogue)
    else:
        lines, catalogue = synthetic(args.customers, args.products, args.seed)
    loaded = time.monotonic()
    print(
        f"history: {len(lines):,} lines, {lines['customer'].nunique():,} customers, {catalogue.n_items:,} products "
        f"({'database' if args.from_db else 'synthetic'}), loaded in {loaded - started:.1f}s"
    )
    recommender = recommender_train(lines=lines, catalogue=catalogue, max_customers=args.max_customers)
    trained = time.monotonic()
    print(
        f"train: {trained - loaded:.1f}s (load + train {trained - started:.1f}s), algorithm {recommender.algorithm}"
    )
    print(f"peak memory after training: {peak_gb():.2f} GB")

    customers = np.sort(lines["customer"].unique())
    rng = np.random.default_rng(args.seed)
    batch = np.sort(rng.choice(customers, min(args.score, len(customers)), replace=False))
    mine = lines.loc[lines["customer"].isin(batch)]
    scoring = time.monotonic()
    top, _ = recommender_rank(
        recommender=recommender,
        lines=mine,
        customer_ids=batch,
        as_of=np.full(len(batch), float(lines["t"].max()) + 1),
        k=3,
    )
    done = time.monotonic()
    print(
        f"score: {len(batch):,} customers, {len(top):,} offers in {done - scoring:.1f}s "
        f"({(done - scoring) / len(batch) * 1e6:.0f} µs per customer)"
    )
    print(f"peak memory: {peak_gb():.2f} GB")


def score_active(args) -> None:
    from campaigns.recommender import recommend_for_customers
    from customers.models import Customer

    ids = np.array(Customer.objects.values_list("pk", flat=True))  # with or without orders
    rng = np.random.default_rng(args.seed)
    batch = np.sort(rng.choice(ids, min(args.score, len(ids)), replace=False)).tolist()
    started = time.monotonic()
    recommend_for_customers(customer_ids=batch[:10], k=args.k)  # model load, catalogue flags
    loaded = time.monotonic()
    result = recommend_for_customers(customer_ids=batch, k=args.k)
    done = time.monotonic()
    offers = sum(len(v) for v in result.values())
    print(f"model load and first call: {loaded - started:.1f}s")
    print(
        f"score: {len(batch):,} customers, {offers:,} offers with reasons in {done - loaded:.1f}s "
        f"({(done - loaded) / len(batch) * 1e6:.0f} µs per customer), load average {os.getloadavg()[0]:.2f}"
    )
    print(f"peak memory: {peak_gb():.2f} GB")


if __name__ == "__main__":
    main()
