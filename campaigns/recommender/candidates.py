"""Item-to-item statistics fitted on purchase history, and candidate generation from them.

Three neighbour tables, each normalised like a cosine (count / sqrt(n_a * n_b), shrunk towards zero
for pairs seen only a few times) so bestsellers do not drown everything, and pruned to the top
neighbours of each item: same-order co-purchase, same-customer co-purchase, and sequence (b bought in
a later order within `seq_days` after a). Plus the marketer's complements and day-by-day popularity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

SHRINK = 3.0


@dataclass
class ItemStats:
    n_items: int
    basket: sp.csr_matrix
    customer: sp.csr_matrix
    sequence: sp.csr_matrix
    complements: sp.csr_matrix
    day0: int
    pop_cum: np.ndarray  # (days + 1, items) cumulative distinct buyers per day
    total_cum: np.ndarray  # (days + 1,) cumulative buyer-item pairs per day
    buyers: np.ndarray
    repeat_rate: np.ndarray
    seq_self: np.ndarray  # share of an item's orders followed by the same item within seq_days
    price: np.ndarray
    category: np.ndarray  # category code per item
    category_names: np.ndarray
    active: np.ndarray
    repurchasable: np.ndarray
    end_t: float
    seq_days: int

    def window_counts(
        self, *, as_of: np.ndarray, items: np.ndarray, days: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Buyers of each item, and all buyer-item pairs, in the `days` before each as_of."""
        n_days = self.pop_cum.shape[0] - 1
        hi = np.clip(np.floor(as_of).astype(np.int64) - self.day0, 0, n_days)
        lo = np.clip(hi - days, 0, n_days)
        counts = self.pop_cum[hi, items] - self.pop_cum[lo, items]
        return counts, self.total_cum[hi] - self.total_cum[lo]

    def top_popular(self, *, as_of: float, days: int, n: int) -> np.ndarray:
        n_days = self.pop_cum.shape[0] - 1
        hi = int(np.clip(np.floor(as_of) - self.day0, 0, n_days))
        counts = self.pop_cum[hi] - self.pop_cum[max(hi - days, 0)]
        return np.argsort(-counts, kind="stable")[:n]


def _binary(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=shape)
    m.data[:] = 1.0
    return m


def _normalise_prune(counts: sp.spmatrix, norm: np.ndarray, neighbours: int, keep_diag: bool = False):
    coo = counts.tocoo()
    keep = coo.row != coo.col if not keep_diag else np.ones(coo.nnz, bool)
    row, col, c = coo.row[keep], coo.col[keep], coo.data[keep].astype(np.float64)
    value = c / np.sqrt(norm[row] * norm[col]) * (c / (c + SHRINK))
    # One argsort on row + (1 - value) (value <= 1) orders rows, then values descending.
    order = np.argsort(row + (1.0 - np.minimum(value, 1.0)) * 0.999, kind="stable")
    row, col, value = row[order], col[order], value[order]
    starts = np.searchsorted(row, row, side="left")
    rank = np.arange(len(row)) - starts
    top = rank < neighbours
    return sp.csr_matrix((value[top].astype(np.float32), (row[top], col[top])), shape=counts.shape).tocsr()


def _sequence_counts(placed: pd.DataFrame, x_orders: sp.csr_matrix, order_codes, seq_days: int):
    """item x item counts of (a in an order, b in a later order of the same customer within seq_days)."""
    orders = (
        placed[["order", "customer", "t"]]
        .drop_duplicates("order")
        .assign(code=lambda f: order_codes(f["order"]))
    )
    orders = orders.sort_values(["customer", "t"], kind="stable")
    cust = pd.factorize(orders["customer"])[0].astype(np.float64)
    t = orders["t"].to_numpy()
    key = cust * 1e6 + (t - t.min())
    lo = np.arange(len(key)) + 1
    hi = np.searchsorted(key, key + seq_days, side="right")
    span = np.maximum(hi - lo, 0)
    src = np.repeat(np.arange(len(key)), span)
    dst = np.repeat(lo - np.cumsum(np.r_[0, span[:-1]]), span) + np.arange(span.sum())
    codes = orders["code"].to_numpy()
    n = x_orders.shape[0]
    follow = sp.csr_matrix((np.ones(len(src), np.float32), (codes[src], codes[dst])), shape=(n, n))
    later = follow @ x_orders
    later.data[:] = 1.0
    return (x_orders.T @ later).tocsr()


def item_stats_fit(
    *,
    lines: pd.DataFrame,
    catalogue,
    end_t: float | None = None,
    seq_days: int = 14,
    neighbours: int = 50,
    max_items_per_customer: int = 300,
) -> ItemStats:
    n_items = catalogue.n_items
    placed = lines.loc[
        ~lines["returned"].to_numpy(), ["customer", "order", "t", "item", "amount", "quantity"]
    ]
    end_t = float(placed["t"].max()) if end_t is None and len(placed) else float(end_t or 0.0)

    order_idx = pd.Index(placed["order"].unique())
    o_codes = order_idx.get_indexer(placed["order"])
    x_orders = _binary(o_codes, placed["item"].to_numpy(), (len(order_idx), n_items))
    in_orders = np.asarray(x_orders.sum(axis=0)).ravel()
    basket = _normalise_prune((x_orders.T @ x_orders).tocsr(), np.maximum(in_orders, 1), neighbours)

    # Customer level: a wholesaler with thousands of items would dominate the pair counts, so each
    # customer contributes at most their most recent items.
    per_item = placed.groupby(["customer", "item"], sort=False)["t"].max().reset_index()
    per_item["rank"] = per_item.groupby("customer")["t"].rank(method="first", ascending=False)
    per_item = per_item.loc[per_item["rank"] <= max_items_per_customer]
    c_codes, _ = pd.factorize(per_item["customer"])
    x_cust = _binary(
        c_codes, per_item["item"].to_numpy(), (int(c_codes.max()) + 1 if len(c_codes) else 0, n_items)
    )
    buyers_recent = np.asarray(x_cust.sum(axis=0)).ravel()
    customer = _normalise_prune((x_cust.T @ x_cust).tocsr(), np.maximum(buyers_recent, 1), neighbours)

    seq_counts = _sequence_counts(placed, x_orders, order_idx.get_indexer, seq_days)
    seq_self = seq_counts.diagonal() / np.maximum(in_orders, 1)
    sequence = _normalise_prune(seq_counts, np.maximum(in_orders, 1), neighbours)

    comp = catalogue.complements
    complements = sp.csr_matrix(
        (np.ones(len(comp), np.float32), (comp[:, 0], comp[:, 1])), shape=(n_items, n_items)
    )

    day = np.floor(placed["t"].to_numpy()).astype(np.int64)
    day0 = int(day.min()) if len(day) else 0
    n_days = int(day.max() - day0 + 1) if len(day) else 1
    daily = pd.DataFrame(
        {"d": day - day0, "c": placed["customer"].to_numpy(), "i": placed["item"].to_numpy()}
    )
    daily = daily.drop_duplicates()
    grid = np.bincount(
        daily["d"].to_numpy() * n_items + daily["i"].to_numpy(), minlength=n_days * n_items
    ).reshape(n_days, n_items)
    pop_cum = np.vstack([np.zeros((1, n_items), np.float32), np.cumsum(grid, axis=0, dtype=np.float32)])
    total_cum = pop_cum.sum(axis=1)

    orders_per = placed[["customer", "item", "order"]].drop_duplicates().groupby(["customer", "item"]).size()
    by_item = orders_per.groupby(level="item")
    buyers = np.bincount(by_item.size().index, weights=by_item.size().to_numpy(), minlength=n_items)
    repeaters = (orders_per >= 2).groupby(level="item").sum()
    repeat_rate = (np.bincount(repeaters.index, weights=repeaters.to_numpy(), minlength=n_items) + 0.5) / (
        buyers + 5.0
    )

    unit = placed["amount"].to_numpy() / np.maximum(placed["quantity"].to_numpy(), 1)
    price_sum = np.bincount(placed["item"].to_numpy(), weights=unit, minlength=n_items)
    price_n = np.bincount(placed["item"].to_numpy(), minlength=n_items)
    listed = catalogue.products["price"].to_numpy(dtype=float)
    price = np.where(price_n > 0, price_sum / np.maximum(price_n, 1), listed)

    category, category_names = pd.factorize(catalogue.products["category"])
    return ItemStats(
        n_items=n_items,
        basket=basket,
        customer=customer,
        sequence=sequence,
        complements=complements,
        day0=day0,
        pop_cum=pop_cum,
        total_cum=total_cum,
        buyers=buyers,
        repeat_rate=repeat_rate,
        seq_self=np.asarray(seq_self, dtype=float),
        price=price,
        category=category,
        category_names=np.asarray(category_names, dtype=object),
        active=catalogue.products["active"].to_numpy(bool),
        repurchasable=catalogue.products["repurchasable"].to_numpy(bool),
        end_t=end_t,
        seq_days=seq_days,
    )


def top_per_row(m: sp.csr_matrix, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the n largest stored values of each row (in no particular order)."""
    m = m.tocsr()
    counts = np.diff(m.indptr)
    rows = np.repeat(np.arange(m.shape[0]), counts)
    if not m.nnz or counts.max() <= n:
        return rows, m.indices.copy()
    if m.nnz > 0.05 * m.shape[0] * m.shape[1] and m.shape[1] > n:
        # Dense enough (a batch of customers against a catalogue of thousands): a partial sort per row
        # of the dense block beats sorting every stored value.
        dense = m.toarray()
        cols = np.argpartition(-dense, n - 1, axis=1)[:, :n]
        rows = np.repeat(np.arange(m.shape[0]), n)
        cols = cols.ravel()
        keep = dense[rows, cols] > 0
        return rows[keep], cols[keep]
    order = np.lexsort((-m.data, rows))
    rank = np.arange(len(order)) - m.indptr[rows[order]]
    pick = order[rank < n]
    return rows[pick], m.indices[pick]


@dataclass(frozen=True)
class PairIndex:
    """A sparse matrix's stored (row, col) pairs as sorted int64 keys: build once, look up often."""

    keys: np.ndarray
    data: np.ndarray
    n_cols: int

    def get(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        want = np.asarray(rows, dtype=np.int64) * np.int64(self.n_cols) + cols
        if not len(self.keys):
            return np.zeros(len(want), np.float32)
        pos = np.clip(np.searchsorted(self.keys, want), 0, len(self.keys) - 1)
        return np.where(self.keys[pos] == want, self.data[pos], 0.0).astype(np.float32)


def pair_index(m: sp.spmatrix) -> PairIndex:
    m = m.tocsr()
    m.sort_indices()
    n_cols = np.int64(m.shape[1])
    keys = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr)) * n_cols + m.indices
    return PairIndex(keys=keys, data=m.data, n_cols=int(n_cols))


def lookup(m: sp.spmatrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """m[rows[i], cols[i]] for every i, vectorised (0 where nothing is stored)."""
    return pair_index(m).get(rows, cols)
