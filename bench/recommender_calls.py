"""Per-call cost of recommend_for_customers: a campaign batch (200 customers) and the API path (1).

    DATABASE_URL=postgres://... .venv/bin/python bench/recommender_calls.py --batch 200 --calls 30
    DATABASE_URL=postgres://... .venv/bin/python bench/recommender_calls.py --batch 1 --calls 300 --profile

Uses the orders and the active model in the database (or the fallback blend without one). The first call
(model load, catalogue flags) is timed apart; the rest are steady-state calls on random customers.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xsell_crm.settings")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=200, help="customers per call")
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--anchors", action="store_true", help="pass each customer's latest order as anchor")
    parser.add_argument("--profile", action="store_true", help="print the top functions by cumulative time")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    import django

    django.setup()
    from django.db.models import Max

    from campaigns.recommender import recommend_for_customers
    from customers.models import Customer, Order

    ids = np.array(Customer.objects.filter(orders_count__gte=1).values_list("pk", flat=True))
    rng = np.random.default_rng(args.seed)
    batches = [
        rng.choice(ids, min(args.batch, len(ids)), replace=False).tolist() for _ in range(args.calls + 1)
    ]

    def call(batch: list[int]):
        anchors = None
        if args.anchors:
            anchors = dict(
                Order.objects.filter(customer_id__in=batch)
                .values("customer_id")
                .annotate(last=Max("pk"))
                .values_list("customer_id", "last")
            )
        return recommend_for_customers(customer_ids=batch, k=args.k, anchors=anchors)

    started = time.perf_counter()
    call(batches[0])
    print(f"first call (loads the model): {(time.perf_counter() - started) * 1000:.0f} ms")
    profiler = cProfile.Profile() if args.profile else None
    times, offers = [], 0
    for batch in batches[1:]:
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        result = call(batch)
        if profiler:
            profiler.disable()
        times.append(time.perf_counter() - started)
        offers += sum(len(v) for v in result.values())
    ms = np.array(times) * 1000
    print(
        f"{args.calls} calls of {args.batch} customers, k={args.k}: {offers / args.calls / args.batch:.2f} offers "
        f"per customer; ms per call p50 {np.percentile(ms, 50):.1f}  p95 {np.percentile(ms, 95):.1f}  "
        f"max {ms.max():.1f}; {args.batch * args.calls / ms.sum() * 1000:.0f} customers/s"
    )
    print(f"load average: {os.getloadavg()[0]:.2f}")
    if profiler:
        pstats.Stats(profiler).sort_stats(os.environ.get("SORT", "cumulative")).print_stats(35)


if __name__ == "__main__":
    main()
