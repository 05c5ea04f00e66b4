"""A demo shop: products with known complements, customers and 18 months of orders, from a seed.

One catalogue spans three domains: an electronics shop (devices, accessories, consumables), a bank
(accounts, cards, insurance, loans) and a SaaS product (plans, add-on modules, credits). Each customer
shops in one domain. Buying an anchor product makes each of its complements likely, in the same order or
days to weeks later; consumables are bought again at their own rhythm; demand follows the season.

The output depends only on (seed, customers, end, batch_customers). Customers are generated and written a
batch at a time, each batch from its own random sub-stream and in its own transaction, with COPY on
PostgreSQL, so a million customers fit in bounded memory.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable

import numpy as np
import pandas as pd
from django.db import transaction

from ..bulk import analyze, bulk_insert, id_map
from ..importing import product_stats_refresh
from ..models import Customer, Order, OrderLine, Product
from .catalogue import CATALOGUE, CURRENCY, DOMAINS, HISTORY_MONTHS, SITE
from .simulation import Shop, batch_generate, lifetime_fill, orders_build, shop_build, timestamps

Progress = Callable[[int], None]


class DemoDataRefused(Exception):
    """The database already holds customers; the demo data is only generated into an empty one."""


def demo_window(*, end: dt.date | dt.datetime | str | None = None) -> tuple[pd.Timestamp, pd.Timestamp]:
    """(start, end) of the generated history: end defaults to today at midnight UTC."""
    stop = pd.Timestamp(end if end is not None else dt.datetime.now(dt.UTC).date())
    stop = stop.tz_localize("UTC") if stop.tzinfo is None else stop.tz_convert("UTC")
    stop = stop.normalize()
    return stop - pd.DateOffset(months=HISTORY_MONTHS), stop


def _products_ensure(shop: Shop, *, start: pd.Timestamp) -> tuple[np.ndarray, int]:
    """The catalogue's products (created if missing) and complement links; returns pks by position."""
    rows = [(*row, name) for name in DOMAINS for row in CATALOGUE[name]]
    known = id_map(Product, "sku", shop.sku)
    new = [r for r in rows if r[0] not in known]
    frame = pd.DataFrame(
        {
            "sku": [r[0] for r in new],
            "name": [r[1] for r in new],
            "category": [r[2] for r in new],
            "price": [f"{r[3]:.2f}" for r in new],
            "currency": CURRENCY,
            "active": True,
            "product_url": [f"{SITE}/{r[6]}/{r[0].lower()}" for r in new],
            "image_url": [f"{SITE}/images/{r[0].lower()}.jpg" for r in new],
            "repurchasable": [r[5] > 0 for r in new],
            "created_at": start,
            "updated_at": start,
        }
    )
    bulk_insert(Product, frame)
    known = id_map(Product, "sku", shop.sku)
    pks = np.array([known[s] for s in shop.sku], dtype=np.int64)
    through = Product.complements.through
    rule_of = np.repeat(np.arange(len(shop.sku)), shop.rule_count)
    links = {(int(pks[a]), int(pks[b])) for a, b in zip(rule_of, shop.rule_target, strict=True)}
    through.objects.bulk_create(
        [through(from_product_id=a, to_product_id=b) for a, b in sorted(links)], ignore_conflicts=True
    )
    return pks, len(new)


def _pks_by_key(model, keys: pd.Series) -> np.ndarray:
    """Primary keys of the rows just written, aligned with keys (consecutive, zero-padded, sorted).

    One range scan: id_map's IN lists cost more than the COPY itself at hundreds of thousands of keys.
    """
    rows = model.objects.filter(external_id__gte=keys.iloc[0], external_id__lte=keys.iloc[-1])
    found = np.array(rows.order_by("external_id").values_list("pk", flat=True), dtype=np.int64)
    if len(found) != len(keys):
        raise RuntimeError(
            f"{model.__name__}: expected {len(keys)} rows in the key range, found {len(found)}"
        )
    return found


def _batch_write(
    people: pd.DataFrame, orders: dict, lines: dict, *, start, product_pks, first_order_no: int
) -> None:
    bulk_insert(Customer, people)
    customer_pks = _pks_by_key(Customer, people["external_id"])
    numbers = pd.Series(np.arange(first_order_no, first_order_no + len(orders["customer"])))
    external = "D" + numbers.astype(str).str.zfill(9)
    placed = timestamps(start, orders["second"])
    bulk_insert(
        Order,
        pd.DataFrame(
            {
                "external_id": external,
                "customer_id": customer_pks[orders["customer"]],
                "placed_at": placed,
                "total": orders["total_cents"] / 100,
                "currency": CURRENCY,
                "channel": orders["channel"],
                "status": orders["status"],
                "content_hash": "",
                "created_at": placed,
            }
        ),
    )
    order_pks = _pks_by_key(Order, external)
    bulk_insert(
        OrderLine,
        pd.DataFrame(
            {
                "order_id": order_pks[lines["order"]],
                "line_no": lines["line_no"],
                "product_id": product_pks[lines["product"]],
                "quantity": lines["quantity"],
                "unit_price": lines["unit_cents"] / 100,
            }
        ),
    )


def demo_shop_generate(
    *,
    customers: int,
    seed: int,
    end: dt.date | dt.datetime | str | None = None,
    batch_customers: int = 20_000,
    progress: Progress | None = None,
) -> dict[str, int]:
    """Generate the demo shop into an empty database; returns counts of what was written.

    Raises DemoDataRefused if customers already exist (nothing is written then).
    """
    if customers < 1 or batch_customers < 1:
        raise ValueError("customers and batch_customers must be at least 1")
    existing = Customer.objects.count()
    if existing:
        raise DemoDataRefused(
            f"the database already has {existing:,} customers; demo data needs an empty one"
        )
    start, stop = demo_window(end=end)
    shop = shop_build(start, stop)
    counts: Counter = Counter()
    with transaction.atomic():
        product_pks, counts["products_created"] = _products_ensure(shop, start=start)
    counts["complement_links"] = int(shop.rule_count.sum())
    batches = range(0, customers, batch_customers)
    streams = np.random.SeedSequence(seed).spawn(len(batches))
    order_no = 1
    for first, stream in zip(batches, streams, strict=True):
        rng = np.random.default_rng(stream)
        n = min(batch_customers, customers - first)
        people, events, domain = batch_generate(rng, shop, start=start, first_no=first + 1, n=n)
        orders, lines = orders_build(rng, shop, events, domain)
        people = lifetime_fill(people, orders, start=start)
        with transaction.atomic():
            _batch_write(people, orders, lines, start=start, product_pks=product_pks, first_order_no=order_no)
        order_no += len(orders["customer"])
        counts["customers"] += n
        counts["consenting"] += int(people["marketing_consent"].sum())
        counts["suppressed"] += int((people["suppressed_reason"] != "").sum())
        counts["orders"] += len(orders["customer"])
        for status in (Order.Status.RETURNED, Order.Status.CANCELLED):
            counts[f"orders_{status.value}"] += int((orders["status"] == status.value).sum())
        counts["order_lines"] += len(lines["order"])
        if progress is not None:
            progress(n)
    product_stats_refresh()  # one pass over the lines at the end, not one per batch
    analyze(Customer, Order, OrderLine, Product)
    return dict(counts)
