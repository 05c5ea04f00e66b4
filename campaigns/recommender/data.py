"""Purchase history as numpy-backed frames, read in a few set-based queries.

Times are float days since the Unix epoch (`t`), products are dense indexes into the catalogue frame
(`item`), so every later step is array arithmetic rather than ORM objects.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from django.db import connection

from customers.models import Customer, Order, OrderLine, Product

DAY = 86400.0
LINE_COLUMNS = ["customer", "order", "t", "product", "quantity", "amount", "returned"]


@dataclass
class Catalogue:
    """Every product, row i is item i; `index_of` maps product pks to items."""

    products: pd.DataFrame  # id, sku, name, category, price, active, repurchasable
    complements: np.ndarray  # (n, 2) item -> complement item

    @property
    def n_items(self) -> int:
        return len(self.products)

    def index_of(self, product_ids: np.ndarray) -> np.ndarray:
        ids = self.products["id"].to_numpy()
        pos = np.searchsorted(ids, product_ids)
        pos = np.clip(pos, 0, max(len(ids) - 1, 0))
        found = (ids[pos] == product_ids) if len(ids) else np.zeros(len(product_ids), bool)
        return np.where(found, pos, -1)


def to_days(moment: datetime) -> float:
    return moment.timestamp() / DAY


def from_days(t: float) -> datetime:
    return datetime.fromtimestamp(float(t) * DAY, tz=UTC)


def _frame(sql: str, params: list, columns: list[str]) -> pd.DataFrame:
    """Run a SELECT into a DataFrame: COPY on PostgreSQL (millions of rows), a cursor elsewhere."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            buffer = io.BytesIO()
            with cursor.cursor.copy(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv)", params or None) as copy:
                for block in copy:
                    buffer.write(block)
            buffer.seek(0)
            if not buffer.getbuffer().nbytes:
                return pd.DataFrame(columns=columns)
            return pd.read_csv(buffer, header=None, names=columns, keep_default_na=False, na_values=[""])
        cursor.execute(sql, params)
        return pd.DataFrame(cursor.fetchall(), columns=columns)


def catalogue_load() -> Catalogue:
    table = Product._meta.db_table
    products = _frame(
        f"SELECT id, sku, name, category, price, active, repurchasable FROM {table} ORDER BY id",
        [],
        ["id", "sku", "name", "category", "price", "active", "repurchasable"],
    )
    products["id"] = products["id"].astype(np.int64)
    for name in ("sku", "name", "category"):
        products[name] = products[name].fillna("").astype(str)
    products["price"] = pd.to_numeric(products["price"], errors="coerce").astype(float)
    for name in ("active", "repurchasable"):
        products[name] = products[name].map(lambda v: v in (True, 1, "t", "true", "True")).astype(bool)
    through = Product.complements.through._meta
    pairs = _frame(f"SELECT from_product_id, to_product_id FROM {through.db_table}", [], ["from_id", "to_id"])
    catalogue = Catalogue(products=products.reset_index(drop=True), complements=np.empty((0, 2), np.int64))
    if len(pairs):
        items = np.column_stack(
            [
                catalogue.index_of(pairs["from_id"].to_numpy(np.int64)),
                catalogue.index_of(pairs["to_id"].to_numpy(np.int64)),
            ]
        )
        catalogue.complements = items[(items >= 0).all(axis=1)]
    return catalogue


def lines_load(
    *, catalogue: Catalogue, customer_ids: list[int] | None = None, before: datetime | None = None
) -> pd.DataFrame:
    """Placed and returned order lines (optionally of some customers, before a moment), one row each."""
    orders, lines = Order._meta.db_table, OrderLine._meta.db_table
    if connection.vendor == "postgresql":
        epoch = "EXTRACT(EPOCH FROM o.placed_at)::float8"
    else:
        epoch = "CAST(strftime('%%s', o.placed_at) AS REAL)"
    where, params = ["o.status IN ('placed', 'returned')"], []
    if customer_ids is not None:
        if not customer_ids:
            return _lines_frame({name: np.zeros(0) for name in LINE_COLUMNS}, catalogue)
        if connection.vendor == "postgresql":
            where.append("o.customer_id = ANY(%s)")
            params.append(list(map(int, customer_ids)))
        else:
            where.append(f"o.customer_id IN ({', '.join(['%s'] * len(customer_ids))})")
            params.extend(map(int, customer_ids))
    if before is not None:
        where.append("o.placed_at < %s")
        params.append(before)
    sql = (
        f"SELECT o.customer_id, l.order_id, {epoch}, l.product_id, l.quantity, "
        f"CAST(l.quantity * l.unit_price AS float), CASE WHEN o.status = 'returned' THEN 1 ELSE 0 END "
        f"FROM {lines} l JOIN {orders} o ON o.id = l.order_id WHERE {' AND '.join(where)}"
    )
    if customer_ids is not None:
        frame = _rows_frame(sql, params)
    else:
        loaded = _frame(sql, params, LINE_COLUMNS)
        frame = {name: loaded[name].to_numpy() for name in LINE_COLUMNS}
    return _lines_frame(frame, catalogue)


def _lines_frame(frame: dict[str, np.ndarray], catalogue: Catalogue) -> pd.DataFrame:
    frame["customer"] = frame["customer"].astype(np.int64)
    frame["order"] = frame["order"].astype(np.int64)
    frame["t"] = frame["t"].astype(np.float64) / DAY
    frame["product"] = frame["product"].astype(np.int64)
    frame["quantity"] = frame["quantity"].astype(np.int32)
    frame["amount"] = frame["amount"].astype(np.float64)
    frame["returned"] = frame["returned"].astype(bool)
    item = catalogue.index_of(frame["product"])
    # The database returns rows in no particular order; ties (same time, same score) must not depend on it.
    keep = np.flatnonzero(item >= 0)
    order = keep[np.lexsort((item[keep], frame["order"][keep], frame["t"][keep], frame["customer"][keep]))]
    return pd.DataFrame({name: frame[name][order] for name in LINE_COLUMNS} | {"item": item[order]})


def _rows_frame(sql: str, params: list) -> dict[str, np.ndarray]:
    """A bounded SELECT (some customers' history) straight into typed arrays: per call, a cursor's
    fetchall beats COPY, whose rows arrive as one message each."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    # One C-level conversion of the tuples; ids and quantities are exact in float64 (< 2**53).
    values = np.array(rows, dtype=np.float64).reshape(len(rows), len(LINE_COLUMNS))
    return {name: values[:, i] for i, name in enumerate(LINE_COLUMNS)}


def customer_pks(external_ids: list[str]) -> dict[str, int]:
    return dict(Customer.objects.filter(external_id__in=external_ids).values_list("external_id", "pk"))
