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
from datetime import datetime

import joblib
import numpy as np
import pandas as pd
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from campaigns.models import ModelVersion
from customers.models import Order

from .candidates import ItemStats, lookup
from .data import Catalogue, catalogue_load, from_days, lines_load, to_days
from .model import Recommender, recommender_rank

FALLBACK_TTL = 300.0
FLAGS_TTL = 60.0
REASON_MAX = 300


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


def _active() -> tuple[int | None, Recommender]:
    row = ModelVersion.objects.filter(is_active=True).values_list("pk", "artefact").first()
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


def _current_products(product_ids: np.ndarray) -> pd.DataFrame:
    """Today's names, categories and flags for the model's items (a product may be deactivated since)."""
    key = ("products", id(product_ids))
    with _lock:
        cached = _cache.get("products")
        if cached is not None and cached[0] == key and time.monotonic() - cached[2] < FLAGS_TTL:
            return cached[1]
    current = catalogue_load().products.set_index("id")
    frame = current.reindex(product_ids)
    frame["active"] = frame["active"].fillna(False).astype(bool)
    frame["repurchasable"] = frame["repurchasable"].fillna(False).astype(bool)
    frame[["sku", "name", "category"]] = frame[["sku", "name", "category"]].fillna("")
    with _lock:
        _cache["products"] = (key, frame, time.monotonic())
    return frame


def _date(t: float, ref: datetime) -> str:
    d = from_days(t)
    return f"{d.day} {d:%B}" if d.year == ref.year else f"{d.day} {d:%B %Y}"


def _reasons(top: pd.DataFrame, profiles, stats: ItemStats, names: np.ndarray, now: datetime) -> list[str]:
    """One sentence per recommendation, naming the customer's product that led to it."""
    if top.empty:
        return []
    basket = top["co_anchor"] + 0.5 * top["co_recent"]
    sequence = top["seq_anchor"] + 0.5 * top["seq_recent"]
    customer = 0.5 * top["cust_recent"]
    strength = np.column_stack([basket, sequence, customer])
    kind = np.where(
        top["owned"] > 0,
        "repeat",
        np.where(
            top["complement"] > 0,
            "complement",
            np.where(
                strength.max(axis=1) > 0,
                np.array(["basket", "sequence", "customer"])[strength.argmax(axis=1)],
                "popular",
            ),
        ),
    )
    top = top.assign(kind=kind, row=np.arange(len(top)))

    # Which of the customer's products explains it: the one with the strongest link, anchor first.
    mine = pd.concat(
        [
            profiles.anchor[["r", "item", "t"]].assign(bonus=1.0),
            profiles.owned[["r", "item", "last_t"]].rename(columns={"last_t": "t"}).assign(bonus=0.0),
        ]
    ).drop_duplicates(["r", "item"])
    linked = top.loc[
        top["kind"].isin(["complement", "basket", "sequence", "customer"]), ["row", "r", "item", "kind"]
    ]
    linked = linked.merge(mine.rename(columns={"item": "source"}), on="r")
    tables = {
        "complement": stats.complements,
        "basket": stats.basket,
        "sequence": stats.sequence,
        "customer": stats.customer,
    }
    link = np.zeros(len(linked), np.float32)
    for name, table in tables.items():
        sel = (linked["kind"] == name).to_numpy()
        link[sel] = lookup(table, linked["source"].to_numpy()[sel], linked["item"].to_numpy()[sel])
    linked = linked.assign(link=link)
    linked = linked.loc[linked["link"] > 0].assign(rank=lambda f: f["link"] * (1 + 0.5 * f["bonus"]))
    best = linked.sort_values("rank", ascending=False).drop_duplicates("row").set_index("row")

    days = stats.seq_days
    within = f"{days // 7} weeks" if days % 7 == 0 and days > 7 else f"{days} days"
    if days == 7:
        within = "a week"
    out = []
    owned_idx = profiles.owned.set_index(["r", "item"])
    for row in top.itertuples(index=False):  # k rows per customer: the text itself needs a loop
        source = best.loc[row.row] if row.row in best.index else None
        if row.kind == "repeat":
            o = owned_idx.loc[(row.r, row.item)]
            times = "once" if o["n_orders"] == 1 else f"{int(o['n_orders'])} times"
            text = f"You bought this {times}, last on {_date(o['last_t'], now)}; time to stock up?"
        elif source is not None:
            name, when = names[int(source["source"])], _date(source["t"], now)
            text = {
                "complement": f"Goes with the {name} you bought on {when}",
                "basket": f"Often bought together with the {name} you bought on {when}",
                "sequence": f"Often bought within {within} of the {name} you bought on {when}",
                "customer": f"Customers who bought the {name} (you did on {when}) also bought this",
            }[row.kind]
        elif row.trend > 0.2:
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
    products = _current_products(recommender.product_ids)
    category, category_names = pd.factorize(products["category"].to_numpy())
    stats = dataclasses.replace(
        recommender.stats,
        active=products["active"].to_numpy(bool),
        repurchasable=products["repurchasable"].to_numpy(bool),
        category=category,
        category_names=np.asarray(category_names, dtype=object),
    )
    wanted = None
    if categories:
        wanted = np.flatnonzero(np.isin(stats.category_names, list(categories)))
        if not len(wanted):
            return result

    catalogue = Catalogue(
        products=pd.DataFrame({"id": recommender.product_ids}), complements=np.empty((0, 2))
    )
    lines = lines_load(catalogue=catalogue, customer_ids=customer_ids, before=now)
    anchor_orders = None
    if anchors:
        anchor_orders = np.array([int(anchors.get(c, -1) or -1) for c in customer_ids], np.int64)
        given = [o for o in anchor_orders.tolist() if o >= 0]
        missing = set(given) - set(lines["order"].unique().tolist())
        if missing:
            # An anchor placed after as_of (or just now) still anchors: load its lines too.
            extra = Order.objects.filter(pk__in=missing, status=Order.Status.PLACED).values_list(
                "customer_id", flat=True
            )
            if extra:
                more = lines_load(catalogue=catalogue, customer_ids=list(set(extra)))
                lines = pd.concat([lines, more.loc[more["order"].isin(missing)]], ignore_index=True)
    as_of_days = max(to_days(now), float(lines["t"].max()) + 1e-6 if len(lines) else to_days(now))
    top, profiles = recommender_rank(
        recommender=recommender,
        lines=lines,
        customer_ids=np.array(customer_ids, np.int64),
        as_of=np.full(len(customer_ids), as_of_days),
        anchor_orders=anchor_orders,
        owned_policy="repurchasable",
        categories=wanted,
        k=k,
        min_score=min_score,
        stats=stats,
    )
    reasons = _reasons(
        top, profiles, stats, products["name"].where(products["name"] != "", products["sku"]).to_numpy(), now
    )
    pids = recommender.product_ids[top["item"].to_numpy()]
    scores = np.clip(top["score"].to_numpy(dtype=float), 0.0, 1.0)
    for r, pid, score, reason in zip(top["r"].to_numpy(), pids, scores, reasons, strict=True):
        result[customer_ids[r]].append(Recommendation(int(pid), round(float(score), 6), reason, version_id))
    return result


def model_version_activate(*, version: ModelVersion) -> ModelVersion:
    """Make this version the one scoring uses (exactly one active, enforced by the database)."""
    with transaction.atomic():
        ModelVersion.objects.select_for_update().filter(is_active=True).exclude(pk=version.pk).update(
            is_active=False
        )
        ModelVersion.objects.filter(pk=version.pk).update(is_active=True)
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
