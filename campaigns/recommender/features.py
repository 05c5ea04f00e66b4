"""Customer profiles as of a moment, candidate pairs and their features, all as arrays.

A batch of R customers becomes row r = 0..R-1; sparse R x items matrices (anchor items, recency-weighted
recent items) multiplied by the item-item tables give every source score for every customer at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .candidates import ItemStats, lookup, top_per_row

RECENT_ITEMS = 30
RECENCY_DAYS = 90.0
DENSE_PAIRS = 50_000_000  # customers x items up to which candidate sets are flag arrays (50 MB)
FEATURES = [
    "co_anchor",
    "co_recent",
    "cust_recent",
    "seq_anchor",
    "seq_recent",
    "complement",
    "co_recent_rel",
    "cust_recent_rel",
    "seq_recent_rel",
    "owned",
    "own_orders",
    "own_share",
    "days_since_item",
    "item_in_anchor",
    "pop_all",
    "pop_7",
    "pop_30",
    "pop_90",
    "trend",
    "repeat_rate",
    "seq_self",
    "log_price",
    "price_rel",
    "cat_affinity",
    "n_orders",
    "days_since_last",
    "log_monetary",
    "n_distinct",
    "tenure",
]


@dataclass
class Profiles:
    customer_ids: np.ndarray
    as_of: np.ndarray
    owned: pd.DataFrame  # r, item, n_orders, last_t
    returned: pd.DataFrame  # r, item
    anchor: pd.DataFrame  # r, item, t (the anchor order's lines)
    n_orders: np.ndarray
    last_t: np.ndarray
    first_t: np.ndarray
    monetary: np.ndarray
    n_distinct: np.ndarray
    anchor_price: np.ndarray

    @property
    def n(self) -> int:
        return len(self.customer_ids)


def _first_of_runs(keys: np.ndarray) -> np.ndarray:
    """Positions where a sorted key array starts a new run."""
    return np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, np.int64)


def profiles_build(
    *,
    lines: pd.DataFrame,
    customer_ids: np.ndarray,
    as_of: np.ndarray,
    anchor_orders: np.ndarray | None = None,
) -> Profiles:
    """Each customer's history strictly before their as_of; anchor = the given order, else the latest.

    Plain numpy (sorts, run starts, bincount): the same code serves one API customer in a few hundred
    microseconds and a training cutoff of millions of lines, where pandas groupbys cost milliseconds
    of overhead per call.
    """
    customer_ids = np.asarray(customer_ids, dtype=np.int64)
    as_of = np.broadcast_to(np.asarray(as_of, dtype=float), customer_ids.shape).copy()
    n = len(customer_ids)
    sorter = np.argsort(customer_ids, kind="stable")
    cust = lines["customer"].to_numpy(np.int64)
    pos = np.clip(np.searchsorted(customer_ids, cust, sorter=sorter), 0, max(n - 1, 0))
    r = sorter[pos] if n else np.zeros(len(cust), np.int64)
    found = (customer_ids[r] == cust) if n else np.zeros(len(cust), bool)
    t_all = lines["t"].to_numpy(float)
    sel = np.flatnonzero(found)
    sel = sel[t_all[sel] < as_of[r[sel]]]
    r, t = r[sel].astype(np.int64), t_all[sel]
    order_ids = lines["order"].to_numpy(np.int64)[sel]
    item = lines["item"].to_numpy(np.int64)[sel]
    amount = lines["amount"].to_numpy(float)[sel]
    quantity = lines["quantity"].to_numpy()[sel]
    is_returned = lines["returned"].to_numpy(bool)[sel]

    span = np.int64(max(int(item.max()) + 1 if len(item) else 1, 1))
    ret_keys = np.unique(r[is_returned] * span + item[is_returned])
    returned = pd.DataFrame({"r": ret_keys // span, "item": ret_keys % span})

    placed = ~is_returned
    r, t, order_ids, item = r[placed], t[placed], order_ids[placed], item[placed]
    amount, quantity = amount[placed], quantity[placed]

    # Owned: (r, item) -> number of distinct orders, last time.
    by_pair = np.lexsort((order_ids, r * span + item))
    pair_keys = (r * span + item)[by_pair]
    pair_starts = _first_of_runs(pair_keys)
    new_order = np.r_[True, (pair_keys[1:] != pair_keys[:-1]) | (np.diff(order_ids[by_pair]) != 0)]
    owned_keys = pair_keys[pair_starts]
    owned = pd.DataFrame(
        {
            "r": owned_keys // span,
            "item": owned_keys % span,
            "n_orders": np.add.reduceat(new_order.astype(np.int64), pair_starts) if len(pair_starts) else [],
            "last_t": np.maximum.reduceat(t[by_pair], pair_starts) if len(pair_starts) else [],
        }
    ).astype({"r": np.int64, "item": np.int64, "n_orders": np.int64, "last_t": float})

    # Orders: one row each, sorted by (r, t, order) so the last of each customer is the latest.
    by_order = np.lexsort((order_ids, t, r))
    o_start = _first_of_runs(order_ids[by_order])
    o_id = order_ids[by_order][o_start]
    o_r = r[by_order][o_start]
    o_t = t[by_order][o_start]
    o_amount = np.add.reduceat(amount[by_order], o_start) if len(o_start) else np.zeros(0)
    n_orders = np.bincount(o_r, minlength=n).astype(float)
    monetary = np.bincount(o_r, weights=o_amount, minlength=n)
    last_t = np.full(n, np.nan)
    first_t = np.full(n, np.nan)
    first_t[o_r[::-1]] = o_t[::-1]  # the last write wins: each customer's earliest order
    last_t[o_r] = o_t
    n_distinct = np.bincount(owned["r"].to_numpy(), minlength=n).astype(float)

    # The anchor: the triggering order when given and in the history, else the most recent order.
    anchor_of = np.full(n, -1, np.int64)
    anchor_of[o_r] = o_id
    if anchor_orders is not None:
        given = np.asarray(anchor_orders, dtype=np.int64)
        known = np.isin(given, o_id)
        anchor_of = np.where((given >= 0) & known, given, anchor_of)
    in_anchor = order_ids == anchor_of[r]
    a_r, a_item, a_t = r[in_anchor], item[in_anchor], t[in_anchor]
    unit = amount[in_anchor] / np.maximum(quantity[in_anchor], 1)
    a_lines = np.bincount(a_r, minlength=n)
    anchor_price = np.full(n, np.nan)
    has = a_lines > 0
    anchor_price[has] = np.bincount(a_r, weights=unit, minlength=n)[has] / a_lines[has]
    a_keys, a_first = np.unique(a_r * span + a_item, return_index=True)
    anchor = pd.DataFrame({"r": a_keys // span, "item": a_keys % span, "t": a_t[a_first]})

    return Profiles(
        customer_ids=customer_ids,
        as_of=as_of,
        owned=owned,
        returned=returned,
        anchor=anchor,
        n_orders=n_orders,
        last_t=last_t,
        first_t=first_t,
        monetary=monetary,
        n_distinct=n_distinct,
        anchor_price=anchor_price,
    )


@dataclass
class SourceScores:
    """R x items sparse score matrices, one per candidate source."""

    anchor: sp.csr_matrix
    recent: sp.csr_matrix
    co_anchor: sp.csr_matrix
    co_recent: sp.csr_matrix
    cust_recent: sp.csr_matrix
    seq_anchor: sp.csr_matrix
    seq_recent: sp.csr_matrix
    complement: sp.csr_matrix


def sources_compute(*, stats: ItemStats, profiles: Profiles) -> SourceScores:
    n, n_items = profiles.n, stats.n_items
    a = profiles.anchor
    a_count = np.bincount(a["r"].to_numpy(), minlength=n)
    anchor = sp.csr_matrix(
        (1.0 / a_count[a["r"].to_numpy()], (a["r"].to_numpy(), a["item"].to_numpy())), shape=(n, n_items)
    )
    owned = profiles.owned
    age = profiles.as_of[owned["r"].to_numpy()] - owned["last_t"].to_numpy()
    weight = np.exp(-age / RECENCY_DAYS) * np.log1p(owned["n_orders"].to_numpy())
    o_r, o_item = owned["r"].to_numpy(), owned["item"].to_numpy()
    # Each customer's RECENT_ITEMS heaviest items (ties: lower item first).
    by_weight = np.lexsort((o_item, -weight, o_r))
    starts = np.searchsorted(o_r[by_weight], o_r[by_weight], side="left")
    pick = by_weight[np.arange(len(by_weight)) - starts < RECENT_ITEMS]
    total = np.bincount(o_r[pick], weights=weight[pick], minlength=n)
    recent_m = sp.csr_matrix(
        (weight[pick] / np.maximum(total[o_r[pick]], 1e-12), (o_r[pick], o_item[pick])), shape=(n, n_items)
    )
    owned_bin = sp.csr_matrix(
        (np.full(len(owned), 0.5), (owned["r"].to_numpy(), owned["item"].to_numpy())), shape=(n, n_items)
    )
    anchor_bin = anchor.copy()
    anchor_bin.data[:] = 1.0
    return SourceScores(
        anchor=anchor,
        recent=recent_m,
        co_anchor=(anchor @ stats.basket).tocsr(),
        co_recent=(recent_m @ stats.basket).tocsr(),
        cust_recent=(recent_m @ stats.customer).tocsr(),
        seq_anchor=(anchor @ stats.sequence).tocsr(),
        seq_recent=(recent_m @ stats.sequence).tocsr(),
        complement=(anchor_bin.maximum(owned_bin) @ stats.complements).tocsr(),
    )


def candidates_build(
    *,
    stats: ItemStats,
    profiles: Profiles,
    sources: SourceScores,
    per_source: int = 50,
    popular: int = 100,
    owned_policy: str = "none",
    categories: np.ndarray | None = None,
) -> pd.DataFrame:
    """(r, item) pairs: the union of each source's top items, complements, popular items and, by
    policy, the customer's own items ("all"), only repurchasable ones ("repurchasable") or none."""
    n = profiles.n
    parts = []
    for m in (
        sources.co_anchor,
        sources.co_recent,
        sources.cust_recent,
        sources.seq_anchor,
        sources.seq_recent,
    ):
        rows, cols = top_per_row(m, per_source)
        parts.append(np.column_stack([rows, cols]))
    comp = sources.complement.tocoo()
    parts.append(np.column_stack([comp.row, comp.col]))
    ref = float(np.nanmax(profiles.as_of)) if n else stats.end_t
    hot = np.unique(
        np.r_[
            stats.top_popular(as_of=ref, days=30, n=popular),
            stats.top_popular(as_of=ref, days=10_000, n=popular),
        ]
    )
    parts.append(np.column_stack([np.repeat(np.arange(n), len(hot)), np.tile(hot, n)]))
    owned = profiles.owned
    if owned_policy != "none":
        mine = owned
        if owned_policy == "repurchasable":
            mine = owned.loc[stats.repurchasable[owned["item"].to_numpy()]]
        parts.append(mine[["r", "item"]].to_numpy())
    n_items = np.int64(stats.n_items)
    keys = np.concatenate(parts).astype(np.int64) @ np.array([n_items, 1], np.int64)
    returned_keys = profiles.returned["r"].to_numpy(np.int64) * n_items + profiles.returned["item"].to_numpy()
    owned_keys = owned["r"].to_numpy(np.int64) * n_items + owned["item"].to_numpy()
    if n * n_items <= DENSE_PAIRS:
        # A batch of customers by a catalogue fits a flag per cell: sets without sorting.
        cells = np.zeros(n * n_items, bool)
        cells[keys] = True
        pairs = np.flatnonzero(cells)
        cells[:] = False
        cells[returned_keys] = True
        is_returned = cells[pairs]
        cells[:] = False
        cells[owned_keys] = True
        is_owned = cells[pairs]
    else:
        pairs = np.unique(keys)
        is_returned = np.isin(pairs, returned_keys)
        is_owned = np.isin(pairs, owned_keys)
    r, item = pairs // n_items, pairs % n_items

    drop = ~stats.active[item] | is_returned
    if categories is not None:
        drop |= ~np.isin(stats.category[item], categories)
    if owned_policy == "none":
        drop |= is_owned
    elif owned_policy == "repurchasable":
        drop |= is_owned & ~stats.repurchasable[item]
    return pd.DataFrame({"r": r[~drop], "item": item[~drop]})


def features_build(
    *, stats: ItemStats, profiles: Profiles, sources: SourceScores, pairs: pd.DataFrame
) -> np.ndarray:
    r = pairs["r"].to_numpy()
    item = pairs["item"].to_numpy()
    n_items = np.int64(stats.n_items)
    as_of = profiles.as_of[r]
    cols: dict[str, np.ndarray] = {}
    for name in ("co_anchor", "co_recent", "cust_recent", "seq_anchor", "seq_recent", "complement"):
        cols[name] = lookup(getattr(sources, name), r, item)
    for name in ("co_recent", "cust_recent", "seq_recent"):
        m = getattr(sources, name)
        row_max = np.zeros(profiles.n, np.float32)
        if m.nnz:
            row_max = np.asarray(m.max(axis=1).todense()).ravel()
        cols[f"{name}_rel"] = cols[name] / np.maximum(row_max[r], 1e-9)

    owned = profiles.owned
    okeys = owned["r"].to_numpy(np.int64) * n_items + owned["item"].to_numpy()
    order = np.argsort(okeys)
    okeys = okeys[order]
    want = r.astype(np.int64) * n_items + item
    pos = np.clip(np.searchsorted(okeys, want), 0, max(len(okeys) - 1, 0))
    hit = (okeys[pos] == want) if len(okeys) else np.zeros(len(want), bool)
    own_orders = np.where(hit, owned["n_orders"].to_numpy()[order][pos] if len(okeys) else 0, 0).astype(float)
    last_item = np.where(hit, owned["last_t"].to_numpy()[order][pos] if len(okeys) else np.nan, np.nan)
    cols["owned"] = hit.astype(float)
    cols["own_orders"] = own_orders
    cols["own_share"] = own_orders / np.maximum(profiles.n_orders[r], 1)
    cols["days_since_item"] = np.where(hit, as_of - last_item, 1e4)  # never bought: "very long ago"
    akeys = np.sort(profiles.anchor["r"].to_numpy(np.int64) * n_items + profiles.anchor["item"].to_numpy())
    cols["item_in_anchor"] = np.isin(want, akeys).astype(float)

    cols["pop_all"] = np.log1p(stats.buyers[item])
    shares = {}
    for days in (7, 30, 90):
        count, total = stats.window_counts(as_of=as_of, items=item, days=days)
        shares[days] = (count + 0.1) / (total + 100.0)
        cols[f"pop_{days}"] = np.log(shares[days])
    cols["trend"] = np.log(shares[30] / shares[90])
    cols["repeat_rate"] = stats.repeat_rate[item]
    cols["seq_self"] = stats.seq_self[item]
    price = stats.price[item]
    cols["log_price"] = np.log1p(np.nan_to_num(price, nan=0.0))
    cols["price_rel"] = np.log((price + 0.01) / (profiles.anchor_price[r] + 0.01))

    cat = stats.category[item]
    own_cat = stats.category[owned["item"].to_numpy()]
    n_cats = int(stats.category.max()) + 1 if len(stats.category) else 1
    cat_counts = np.bincount(owned["r"].to_numpy() * n_cats + own_cat, minlength=profiles.n * n_cats)
    cols["cat_affinity"] = cat_counts[r * n_cats + cat] / np.maximum(profiles.n_distinct[r], 1)

    cols["n_orders"] = profiles.n_orders[r]
    cols["days_since_last"] = as_of - profiles.last_t[r]
    cols["log_monetary"] = np.log1p(np.maximum(profiles.monetary[r], 0))
    cols["n_distinct"] = profiles.n_distinct[r]
    cols["tenure"] = as_of - profiles.first_t[r]
    return np.column_stack([np.asarray(cols[name], dtype=np.float32) for name in FEATURES])
