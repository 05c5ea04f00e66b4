"""The simple recommenders every model is compared with, each returning (customers, k) items."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .candidates import ItemStats, top_per_row
from .features import Profiles
from .metrics import rank_top


def _owned_matrix(profiles: Profiles, n_items: int) -> sp.csr_matrix:
    o = profiles.owned
    return sp.csr_matrix(
        (np.ones(len(o), np.float32), (o["r"].to_numpy(), o["item"].to_numpy())), shape=(profiles.n, n_items)
    )


def _popular(stats: ItemStats, profiles: Profiles, k: int, unseen: bool) -> np.ndarray:
    order = np.argsort(-stats.buyers, kind="stable")
    order = order[stats.active[order]]
    if not unseen:
        return np.tile(order[:k], (profiles.n, 1))
    owned = _owned_matrix(profiles, stats.n_items)
    pool = order[: k + int(np.diff(owned.indptr).max(initial=0))]
    rows = np.repeat(np.arange(profiles.n), len(pool))
    items = np.tile(pool, profiles.n)
    keep = np.asarray(owned[rows, items]).ravel() == 0
    scores = np.tile(-np.arange(len(pool), dtype=float), profiles.n)
    return rank_top(rows=rows[keep], items=items[keep], scores=scores[keep], n_rows=profiles.n, k=k)


def global_popularity(*, stats: ItemStats, profiles: Profiles, k: int) -> np.ndarray:
    return _popular(stats, profiles, k, unseen=False)


def popularity_unseen(*, stats: ItemStats, profiles: Profiles, k: int) -> np.ndarray:
    return _popular(stats, profiles, k, unseen=True)


def cooccurrence_unseen(*, stats: ItemStats, profiles: Profiles, k: int) -> np.ndarray:
    """Sum of the (cosine-normalised, same-order) co-purchase of every product the customer bought."""
    owned = _owned_matrix(profiles, stats.n_items)
    scores = (owned @ stats.basket).tocsr()
    scores = scores - scores.multiply(owned)
    scores.eliminate_zeros()
    rows, cols = top_per_row(scores, k)
    values = np.asarray(scores[rows, cols]).ravel()
    return rank_top(rows=rows, items=cols, scores=values, n_rows=profiles.n, k=k)


def own_most_frequent(*, stats: ItemStats, profiles: Profiles, k: int) -> np.ndarray:
    o = profiles.owned
    score = o["n_orders"].to_numpy() + o["last_t"].to_numpy() / 1e6  # ties: most recent first
    return rank_top(rows=o["r"].to_numpy(), items=o["item"].to_numpy(), scores=score, n_rows=profiles.n, k=k)


BASELINES = {
    "global_popularity": global_popularity,
    "popularity_unseen": popularity_unseen,
    "cooccurrence_unseen": cooccurrence_unseen,
    "own_most_frequent": own_most_frequent,
}
