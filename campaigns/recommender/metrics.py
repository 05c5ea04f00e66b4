"""Top-k ranking and the offline metrics (recall, NDCG, hit rate; explore and repeat recall), vectorised."""

from __future__ import annotations

import numpy as np


def rank_top(*, rows: np.ndarray, items: np.ndarray, scores: np.ndarray, n_rows: int, k: int) -> np.ndarray:
    """(n_rows, k) items by descending score per row, -1 where a row has fewer than k candidates."""
    top = np.full((n_rows, k), -1, np.int64)
    if not len(rows):
        return top
    order = np.lexsort((items, -scores, rows))
    rows_s = rows[order]
    starts = np.searchsorted(rows_s, rows_s, side="left")
    rank = np.arange(len(order)) - starts
    keep = rank < k
    top[rows_s[keep], rank[keep]] = items[order][keep]
    return top


def _keys(rows: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    return np.unique(rows.astype(np.int64) * np.int64(n_items) + items.astype(np.int64))


def ranking_metrics(
    *,
    top: np.ndarray,
    truth_rows: np.ndarray,
    truth_items: np.ndarray,
    owned_rows: np.ndarray,
    owned_items: np.ndarray,
    n_items: int,
) -> dict[str, float]:
    """Per-customer metrics averaged over customers with at least one relevant item.

    recall = hits / relevant items; explore and repeat recall restrict both to products the customer
    had not / had bought before; NDCG uses binary gains; hit rate = at least one hit.
    """
    n_rows, k = top.shape
    truth = _keys(truth_rows, truth_items, n_items)
    owned = _keys(owned_rows, owned_items, n_items)
    repeat = truth[np.isin(truth, owned)]
    explore = truth[~np.isin(truth, owned)]
    flat = np.arange(n_rows, dtype=np.int64)[:, None] * np.int64(n_items) + top
    valid = top >= 0
    out: dict[str, float] = {}
    for name, keys in (("", truth), ("explore_", explore), ("repeat_", repeat)):
        relevant = np.bincount(keys // n_items, minlength=n_rows) if len(keys) else np.zeros(n_rows, int)
        hits = np.isin(flat, keys) & valid
        has = relevant > 0
        recall = hits.sum(axis=1)[has] / relevant[has]
        out[f"{name}recall@{k}"] = float(recall.mean()) if has.any() else 0.0
        out[f"{name}customers"] = int(has.sum())
        if not name:
            discount = 1.0 / np.log2(np.arange(k) + 2.0)
            dcg = (hits * discount).sum(axis=1)
            ideal = np.cumsum(discount)[np.minimum(relevant, k) - 1]
            out[f"ndcg@{k}"] = float((dcg[has] / ideal[has]).mean()) if has.any() else 0.0
            out[f"hit_rate@{k}"] = float(hits.any(axis=1)[has].mean()) if has.any() else 0.0
    return out
