"""Next-best offers computed ahead: the API answers a customer from one indexed read, and a one-off or
recurring campaign's batch reads its customers' offers in one query instead of scoring them.

Scoring one customer live costs tens of milliseconds (the history query, candidates, the boosted trees),
scoring customers in bulk about half a millisecond each (bench/README.md, Recommender). So each
customer's best STORED_K offers are kept per active model: for everyone nightly (beat) and when a
version is activated, and for one customer whenever the API found their row missing or stale. A row is
used while it is right: computed by the active version, after the customer's last order (an order
import also drops its customers' rows), less than MAX_AGE ago, and only for products still active. An
anchor order, or more than STORED_K offers, is always scored live.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable

from django.db.models import F, Q
from django.utils import timezone

from campaigns.models import ModelVersion, StoredOffers
from customers.bulk import analyze
from customers.models import Customer, Product

from .service import CHUNK, Recommendation, active_version_id, recommend_for_customers

STORED_K = 10
MAX_AGE = dt.timedelta(days=2)  # nightly refresh, with a day's slack for a late or failed run


class ProductRows:
    """The products a campaign batch offers, read once for the batch instead of twice per chunk: its
    chunks offer the same few products again and again. A product changed meanwhile is seen by the next
    batch, as one changed while a chunk is composed is seen by the next chunk."""

    FIELDS = ("id", "sku", "name", "price", "currency", "category", "image_url", "product_url", "active")

    def __init__(self):
        self.rows: dict[int, dict] = {}

    def get(self, ids: Iterable[int]) -> dict[int, dict]:
        """{id: values of FIELDS} of these products (any that exist, active or not)."""
        ids = set(ids)
        missing = ids - self.rows.keys()
        if missing:
            self.rows.update(
                (p["id"], p) for p in Product.objects.filter(pk__any=missing).values(*self.FIELDS)
            )
        return {pk: self.rows[pk] for pk in ids if pk in self.rows}


def offers_store(
    *, customer_ids: Iterable[int], now: dt.datetime | None = None
) -> dict[int, list[Recommendation]]:
    """Score these customers (best STORED_K) and store their offers; returns what was scored."""
    now = now or timezone.now()
    scored = recommend_for_customers(customer_ids=list(customer_ids), k=STORED_K, as_of=now)
    rows = [
        StoredOffers(
            customer_id=customer,
            model_version_id=recs[0].model_version_id,
            computed_at=now,
            offers=[[r.product_id, r.score, r.reason] for r in recs],
        )
        for customer, recs in scored.items()
        if recs and recs[0].model_version_id is not None  # the no-model fallback is not worth keeping
    ]
    StoredOffers.objects.bulk_create(
        rows,
        batch_size=1000,
        update_conflicts=True,
        unique_fields=["customer"],
        update_fields=["model_version", "computed_at", "offers"],
    )
    # A customer erased while they were being scored must not get their row back.
    StoredOffers.objects.filter(
        customer_id__in=[row.customer_id for row in rows],
        customer__suppressed_reason=Customer.Suppression.ERASED,
    ).delete()
    return scored


def _active_now() -> int | None:
    # Read from the database, not the 2-second cache: a refresh must notice an activation at once.
    return ModelVersion.objects.filter(is_active=True).values_list("pk", flat=True).first()


def offers_refresh(*, on_progress: Callable[[int, int], None] | None = None) -> int:
    """Store every customer's offers with the active model, CHUNK customers at a time; returns rows kept.

    Stops early when another version is activated meanwhile: the activation starts its own refresh."""
    version = _active_now()
    if version is None:
        return 0
    customers = Customer.objects.exclude(suppressed_reason=Customer.Suppression.ERASED)
    total, done, last = customers.count(), 0, 0
    while True:
        ids = list(customers.filter(pk__gt=last).order_by("pk").values_list("pk", flat=True)[:CHUNK])
        if not ids or _active_now() != version:
            break
        offers_store(customer_ids=ids)
        done, last = done + len(ids), ids[-1]
        if on_progress:
            on_progress(done, total)
    # Rows of an older version would never be served again (none of the version active now).
    active = _active_now()
    if active is not None:
        StoredOffers.objects.exclude(model_version_id=active).delete()
    # Every row was just rewritten: until autovacuum gets round to it, the planner's statistics say that
    # few rows have this version, and a batch's offers are read through the version index (all rows)
    # instead of by primary key (measured: 7.3 ms against 0.8 ms for 250 customers).
    analyze(StoredOffers)
    return StoredOffers.objects.filter(model_version_id=active).count()


def _usable(
    offers: list, version: int, products: dict[int, str], k: int, min_score: float, wanted
) -> list | None:
    """The stored offers that answer this question (active products, score and category filters), or
    None when they cannot: fewer than k left of a full list, whose lower-ranked candidates were not kept."""
    kept = []
    for pid, score, reason in offers:
        if pid in products and score >= min_score and (wanted is None or products[pid] in wanted):
            kept.append(Recommendation(pid, score, reason, version))
            if len(kept) == k:
                return kept
    # A list shorter than STORED_K held every candidate the model had: then fewer than k is the answer.
    return kept if len(offers) < STORED_K else None


def _from_store(
    *,
    customer_ids: list[int],
    k: int,
    categories: list[str] | None,
    min_score: float,
    now: dt.datetime,
    products: ProductRows,
) -> dict[int, list[Recommendation]]:
    """Offers of these customers from rows that are still right (active version, computed after the
    customer's last order, less than MAX_AGE ago) and answer the question; customers without one are
    left out."""
    version = active_version_id()
    if version is None or k > STORED_K or not customer_ids:
        return {}
    rows = list(
        StoredOffers.objects.filter(
            customer_id__any=customer_ids, model_version_id=version, computed_at__gt=now - MAX_AGE
        )
        .filter(Q(customer__last_order_at__isnull=True) | Q(computed_at__gte=F("customer__last_order_at")))
        .values_list("customer_id", "offers")
    )
    products = {
        pk: p["category"]
        for pk, p in products.get({o[0] for row in rows for o in row[1]}).items()
        if p["active"]
    }
    wanted = set(categories) if categories else None
    found = {}
    for customer, offers in rows:
        kept = _usable(offers, version, products, k, min_score, wanted)
        if kept is not None:
            found[customer] = kept
    return found


def offers_for_customers(
    *,
    customer_ids: list[int],
    k: int,
    anchors: dict[int, int] | None = None,
    categories: list[str] | None = None,
    min_score: float = 0.0,
    now: dt.datetime | None = None,
    products: ProductRows | None = None,
) -> dict[int, list[Recommendation]]:
    """A batch's offers (a campaign chunk): stored ones where they answer, one live call for the rest.

    Anchored customers (post-purchase emails) are always scored live: their offers follow the order.
    products: the batch's product rows, kept across its chunks.
    """
    now = now or timezone.now()
    anchors = anchors or {}
    result = _from_store(
        customer_ids=[c for c in customer_ids if not anchors.get(c)],
        k=k,
        categories=categories,
        min_score=min_score,
        now=now,
        products=products or ProductRows(),
    )
    live = [c for c in customer_ids if c not in result]
    if live:
        result.update(
            recommend_for_customers(
                customer_ids=live,
                k=k,
                anchors={c: anchors[c] for c in live if anchors.get(c)},
                categories=categories,
                min_score=min_score,
                as_of=now,
            )
        )
    return result


def offers_for(*, customer_id: int, k: int, now: dt.datetime | None = None) -> list[Recommendation]:
    """The API's answer for one customer: stored offers when still right, else scored live (and stored)."""
    now = now or timezone.now()
    if k > STORED_K:
        return recommend_for_customers(customer_ids=[customer_id], k=k, as_of=now)[customer_id]
    stored = _from_store(
        customer_ids=[customer_id], k=k, categories=None, min_score=0.0, now=now, products=ProductRows()
    )
    if customer_id in stored:
        return stored[customer_id]
    return offers_store(customer_ids=[customer_id], now=now)[customer_id][:k]
