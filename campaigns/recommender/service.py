"""recommend_for_customers: the one entry point campaigns and the API call.

Batched: one query for the customers' history, one for the catalogue flags, numpy for the rest. Scoring
uses the active ModelVersion (loaded once per process, reloaded when another version is activated);
with none, a fixed blend of the normalised co-purchase, sequence, complement and popularity scores,
fitted on the whole history and cached for a few minutes, so a fresh demo still gets offers.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import joblib
import numpy as np
import pandas as pd
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from campaigns.models import ModelVersion
from customers.models import Order

from .candidates import ItemStats, PairIndex, pair_index
from .data import Catalogue, catalogue_load, from_days, lines_load, to_days
from .model import Recommender, recommender_rank

FALLBACK_TTL = 300.0
FLAGS_TTL = 60.0
ACTIVE_TTL = 2.0
CHUNK = 5000  # customers scored together: bounded memory for a whole audience
REASON_MAX = 300
LINK_TABLES = {1: "complements", 2: "basket", 3: "sequence", 4: "customer"}  # by kind of reason


@dataclass(frozen=True)
class Recommendation:
    product_id: int
    score: float
    reason: str
    model_version_id: int | None


_lock = threading.Lock()
_cache: dict[str, tuple] = {}


def model_load(*, version: ModelVersion) -> Recommender:
    return joblib.load(settings.MODEL_DIR / version.artefact)


def _active_row() -> tuple[int, str] | None:
    """The active version's (pk, artefact), asked of the database at most every ACTIVE_TTL seconds:
    an API request should not pay a query for it. Activating in this process takes effect at once."""
    with _lock:
        cached = _cache.get("active")
        if cached is not None and time.monotonic() - cached[1] < ACTIVE_TTL:
            return cached[0]
    row = ModelVersion.objects.filter(is_active=True).values_list("pk", "artefact").first()
    with _lock:
        _cache["active"] = (row, time.monotonic())
    return row


def active_version_id() -> int | None:
    """The active ModelVersion's id (None: no model yet), as cheaply as _active_row()."""
    row = _active_row()
    return row[0] if row is not None else None


def _active() -> tuple[int | None, Recommender]:
    row = _active_row()
    with _lock:
        if row is not None:
            cached = _cache.get("model")
            if cached is None or cached[0] != row[0]:
                _cache["model"] = (row[0], joblib.load(settings.MODEL_DIR / row[1]))
            return _cache["model"]
        cached = _cache.get("fallback")
        if cached is None or time.monotonic() - cached[2] > FALLBACK_TTL:
            from .candidates import item_stats_fit

            catalogue = catalogue_load()
            lines = lines_load(catalogue=catalogue)
            stats = item_stats_fit(lines=lines, catalogue=catalogue)
            fallback = Recommender(
                stats=stats, classifier=None, product_ids=catalogue.products["id"].to_numpy(np.int64)
            )
            _cache["fallback"] = (None, fallback, time.monotonic())
        return _cache["fallback"][0], _cache["fallback"][1]


def cache_clear() -> None:
    with _lock:
        _cache.clear()


@dataclass(frozen=True)
class Serving:
    """What every call with one loaded model shares, built once per model and FLAGS_TTL."""

    stats: ItemStats  # the model's statistics with today's active/repurchasable flags and categories
    names: np.ndarray  # display name per item
    catalogue: Catalogue  # item index of the model's products, for loading history
    links: dict[str, PairIndex]  # the item-item tables that explain an offer, ready for lookups


def _serving(version_id: int | None, recommender: Recommender) -> Serving:
    """Today's names, categories and flags for the model's items (a product may be deactivated since)."""
    key = (version_id, id(recommender))
    with _lock:
        cached = _cache.get("serving")
        if cached is not None and cached[0] == key and time.monotonic() - cached[2] < FLAGS_TTL:
            return cached[1]
    frame = catalogue_load().products.set_index("id").reindex(recommender.product_ids)
    names = frame["name"].fillna("").to_numpy(object)
    names = np.where(names != "", names, frame["sku"].fillna("").to_numpy(object))
    category, category_names = pd.factorize(frame["category"].fillna("").to_numpy())
    stats = dataclasses.replace(
        recommender.stats,
        active=frame["active"].fillna(False).to_numpy(bool),
        repurchasable=frame["repurchasable"].fillna(False).to_numpy(bool),
        category=category,
        category_names=np.asarray(category_names, dtype=object),
    )
    catalogue = Catalogue(
        products=pd.DataFrame({"id": recommender.product_ids}), complements=np.empty((0, 2), np.int64)
    )
    links = {name: pair_index(getattr(stats, name)) for name in LINK_TABLES.values()}
    serving = Serving(stats=stats, names=names, catalogue=catalogue, links=links)
    with _lock:
        _cache["serving"] = (key, serving, time.monotonic())
    return serving


def purchase_day(moment: datetime, ref: datetime) -> str:
    """A purchase's day as reasons name it: "3 May", with the year only when it is not ref's."""
    d = moment.astimezone(UTC)
    return f"{d.day} {d:%B}" if d.year == ref.year else f"{d.day} {d:%B %Y}"


def _date(t: float, ref: datetime) -> str:
    return purchase_day(from_days(t), ref)


def _within(days: int) -> str:
    if days == 7:
        return "a week"
    return f"{days // 7} weeks" if days % 7 == 0 and days > 7 else f"{days} days"


def _reasons(
    top: pd.DataFrame,
    profiles,
    stats: ItemStats,
    links: dict[str, PairIndex],
    names: np.ndarray,
    now: datetime,
) -> list[str]:
    """One sentence per recommendation, naming the customer's product that led to it."""
    if top.empty:
        return []
    col = {name: top[name].to_numpy() for name in top.columns}
    strength = np.column_stack(
        [
            col["co_anchor"] + 0.5 * col["co_recent"],
            col["seq_anchor"] + 0.5 * col["seq_recent"],
            0.5 * col["cust_recent"],
        ]
    )
    kind = np.where(
        col["owned"] > 0,
        0,
        np.where(
            col["complement"] > 0, 1, np.where(strength.max(axis=1) > 0, 2 + strength.argmax(axis=1), 5)
        ),
    )

    # The customer's products that may explain an offer: the anchor order's (preferred) and all owned.
    span = np.int64(stats.n_items)
    a, o = profiles.anchor, profiles.owned
    mine_keys = np.r_[
        a["r"].to_numpy(np.int64) * span + a["item"].to_numpy(),
        o["r"].to_numpy(np.int64) * span + o["item"].to_numpy(),
    ]
    mine_t = np.r_[a["t"].to_numpy(float), o["last_t"].to_numpy(float)]
    mine_bonus = np.r_[np.ones(len(a)), np.zeros(len(o))]
    mine_keys, first = np.unique(mine_keys, return_index=True)  # anchor rows come first: they win
    mine_t, mine_bonus = mine_t[first], mine_bonus[first]
    mine_r = mine_keys // span

    # Every (offer, product of the same customer) pair, then the strongest link per offer.
    linked = np.flatnonzero((kind >= 1) & (kind <= 4))
    lo = np.searchsorted(mine_r, col["r"][linked], side="left")
    hi = np.searchsorted(mine_r, col["r"][linked], side="right")
    n = hi - lo
    row = np.repeat(linked, n)
    src = np.repeat(lo - np.cumsum(np.r_[0, n[:-1]]), n) + np.arange(n.sum())
    link = np.zeros(len(row), np.float32)
    for code, table in LINK_TABLES.items():
        sel = kind[row] == code
        link[sel] = links[table].get(mine_keys[src[sel]] % span, col["item"][row[sel]])
    good = link > 0
    row, src, strength_of = row[good], src[good], link[good] * (1 + 0.5 * mine_bonus[src[good]])
    order = np.lexsort((-strength_of, row))
    firsts = order[np.r_[True, row[order][1:] != row[order][:-1]]] if len(order) else order
    source = np.full(len(top), -1, np.int64)
    source[row[firsts]] = src[firsts]

    owned_keys = o["r"].to_numpy(np.int64) * span + o["item"].to_numpy()
    at = np.clip(
        np.searchsorted(owned_keys, col["r"].astype(np.int64) * span + col["item"]), 0, max(len(o) - 1, 0)
    )
    n_orders = o["n_orders"].to_numpy()[at] if len(o) else np.zeros(len(top))
    last_t = o["last_t"].to_numpy()[at] if len(o) else np.zeros(len(top))

    within = _within(stats.seq_days)
    out = []
    # k rows per customer: only the text itself is a loop, over plain Python values.
    for kind_i, src_i, trend, times_n, last in zip(
        kind.tolist(), source.tolist(), col["trend"].tolist(), n_orders.tolist(), last_t.tolist(), strict=True
    ):
        if kind_i == 0:
            times = "once" if times_n == 1 else f"{int(times_n)} times"
            text = f"You bought this {times}, last on {_date(last, now)}; time to stock up?"
        elif src_i >= 0:
            name, when = names[int(mine_keys[src_i] % span)], _date(mine_t[src_i], now)
            text = (
                f"Goes with the {name} you bought on {when}",
                f"Often bought together with the {name} you bought on {when}",
                f"Often bought within {within} of the {name} you bought on {when}",
                f"Customers who bought the {name} (you did on {when}) also bought this",
            )[kind_i - 1]
        elif trend > 0.2:
            text = "Trending with our customers this month"
        else:
            text = "Popular with our customers"
        out.append(text[:REASON_MAX])
    return out


def recommend_for_customers(
    *,
    customer_ids: list[int],
    k: int = 3,
    anchors: dict[int, int] | None = None,
    categories: list[str] | None = None,
    min_score: float = 0.0,
    as_of: datetime | None = None,
) -> dict[int, list[Recommendation]]:
    """Up to k offers per customer (best first); never owned (unless repurchasable), returned or inactive."""
    customer_ids = [int(c) for c in dict.fromkeys(customer_ids)]
    result: dict[int, list[Recommendation]] = {c: [] for c in customer_ids}
    if not customer_ids or k <= 0:
        return result
    now = as_of or timezone.now()
    version_id, recommender = _active()
    serving = _serving(version_id, recommender)
    wanted = None
    if categories:
        wanted = np.flatnonzero(np.isin(serving.stats.category_names, list(categories)))
        if not len(wanted):
            return result
    anchors = anchors or {}
    # Bounded memory and a steady pace for a whole audience; one query per chunk.
    for i in range(0, len(customer_ids), CHUNK):
        chunk = customer_ids[i : i + CHUNK]
        top, profiles = _chunk_rank(
            recommender=recommender,
            serving=serving,
            customer_ids=chunk,
            anchors=anchors,
            now=now,
            k=k,
            categories=wanted,
            min_score=min_score,
        )
        reasons = _reasons(top, profiles, serving.stats, serving.links, serving.names, now)
        pids = recommender.product_ids[top["item"].to_numpy()].tolist()
        scores = np.round(np.clip(top["score"].to_numpy(dtype=float), 0.0, 1.0), 6).tolist()
        for r, pid, score, reason in zip(top["r"].tolist(), pids, scores, reasons, strict=True):
            result[chunk[r]].append(Recommendation(pid, score, reason, version_id))
    return result


def _chunk_rank(
    *,
    recommender: Recommender,
    serving: Serving,
    customer_ids: list[int],
    anchors: dict[int, int],
    now: datetime,
    k: int,
    categories: np.ndarray | None,
    min_score: float,
):
    lines = lines_load(catalogue=serving.catalogue, customer_ids=customer_ids, before=now)
    anchor_orders = None
    if anchors:
        anchor_orders = np.array([int(anchors.get(c, -1) or -1) for c in customer_ids], np.int64)
        given = anchor_orders[anchor_orders >= 0]
        missing = set(given.tolist()) - set(np.unique(lines["order"].to_numpy()).tolist())
        if missing:
            # An anchor placed after as_of (or just now) still anchors: load its lines too.
            extra = Order.objects.filter(pk__in=missing, status=Order.Status.PLACED).values_list(
                "customer_id", flat=True
            )
            if extra:
                more = lines_load(catalogue=serving.catalogue, customer_ids=list(set(extra)))
                lines = pd.concat([lines, more.loc[more["order"].isin(missing)]], ignore_index=True)
    as_of_days = max(to_days(now), float(lines["t"].max()) + 1e-6 if len(lines) else to_days(now))
    return recommender_rank(
        recommender=recommender,
        lines=lines,
        customer_ids=np.array(customer_ids, np.int64),
        as_of=np.full(len(customer_ids), as_of_days),
        anchor_orders=anchor_orders,
        owned_policy="repurchasable",
        categories=categories,
        k=k,
        min_score=min_score,
        stats=serving.stats,
    )


def model_version_activate(*, version: ModelVersion) -> ModelVersion:
    """Make this version the one scoring uses (exactly one active, enforced by the database)."""
    with transaction.atomic():
        ModelVersion.objects.select_for_update().filter(is_active=True).exclude(pk=version.pk).update(
            is_active=False
        )
        ModelVersion.objects.filter(pk=version.pk).update(is_active=True)
    with _lock:
        _cache.pop("active", None)
    from .tasks import refresh_offers

    # The stored next-best offers were the old version's: recompute them all once this commits.
    transaction.on_commit(refresh_offers.delay)
    version.is_active = True
    return version


def model_version_train(
    *, horizon_days: int = 30, max_customers: int = 20_000, activate: bool | None = None, seed: int = 0
) -> ModelVersion:
    """Train on everything in the database and store the artefact and a ModelVersion.

    activate=None activates only when no version is active yet (a fresh install gets a model at
    once); later versions wait for a person to activate them in the admin, unless activate=True.
    """
    from .model import recommender_train

    started = time.monotonic()
    catalogue = catalogue_load()
    lines = lines_load(catalogue=catalogue)
    if lines.empty:
        raise ValueError("no orders to train on: import orders first")
    recommender = recommender_train(
        lines=lines, catalogue=catalogue, horizon_days=horizon_days, max_customers=max_customers, seed=seed
    )
    stamp = timezone.now()
    name = f"recommender-{stamp:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}.joblib"
    settings.MODEL_DIR.mkdir(parents=True, exist_ok=True)
    joblib.dump(recommender, settings.MODEL_DIR / name, compress=3)
    placed = lines.loc[~lines["returned"].to_numpy(), "t"]
    version = ModelVersion.objects.create(
        data_start=from_days(placed.min()),
        data_end=from_days(placed.max()),
        algorithm=recommender.algorithm,
        params=recommender.params,
        metrics={
            **recommender.metrics,
            "lines": int(len(lines)),
            "customers": int(lines["customer"].nunique()),
            "products": int(catalogue.n_items),
            "seconds": round(time.monotonic() - started, 1),
        },
        artefact=name,
    )
    if activate or (activate is None and not ModelVersion.objects.filter(is_active=True).exists()):
        model_version_activate(version=version)
    return version
