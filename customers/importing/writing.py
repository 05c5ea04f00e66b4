"""Writing validated rows in bulk: upserts, orders replaced only when their content changed."""

from __future__ import annotations

import re
from decimal import Decimal

import numpy as np
import pandas as pd
from django.db import connection

from ..bulk import bulk_insert, bulk_insert_keyed, delete_where_in, id_map
from ..models import Customer, Order, OrderLine, Product
from .reading import ImportSummary, RowError


def upsert_customers(frame: pd.DataFrame, summary: ImportSummary, source: str, now) -> dict[str, int]:
    """frame: one row per customer_id with optional columns ('' = not given). Returns {external_id: pk}."""
    existing = id_map(Customer, "external_id", frame["customer_id"])
    new = frame.loc[~frame["customer_id"].isin(existing.keys())]
    if not new.empty:
        consent = new["marketing_consent"].map(lambda v: v is True or v is np.True_)
        rows = pd.DataFrame(
            {
                "external_id": new["customer_id"],
                "email": new["email"].str.lower(),
                "first_name": new["first_name"],
                "last_name": new["last_name"],
                "country": new["country"],
                "timezone": new["timezone"].where(new["timezone"] != "", "UTC")
                if "timezone" in new
                else "UTC",
                "marketing_consent": consent,
                "consent_at": pd.Series(now, index=new.index).where(consent),
                "consent_source": np.where(consent, source, ""),
                "suppressed_reason": "",
                "orders_count": 0,
                "total_spent": 0,
                "created_at": now,
                "updated_at": now,
            }
        )
        existing.update(bulk_insert_keyed(Customer, rows, "external_id"))
    summary.counts["customers_created"] += len(new)

    old = frame.loc[frame["customer_id"].isin(_keys_before(existing, new))]
    if not old.empty:
        summary.counts["customers_updated"] += _update_existing_customers(old, source, now)
    return existing


def _keys_before(existing: dict[str, int], new: pd.DataFrame) -> set[str]:
    return set(existing) - set(new["customer_id"])


def _stored(model, key: str, keys, columns: list[str]) -> pd.DataFrame:
    """The stored columns of the rows whose key is in keys, indexed by key, read in batches."""
    keys, parts = list(keys), []
    for begin in range(0, len(keys), 10_000):
        rows = model.objects.filter(**{f"{key}__in": keys[begin : begin + 10_000]}).values_list(key, *columns)
        parts.append(pd.DataFrame.from_records(list(rows), columns=[key, *columns]))
    return pd.concat(parts).set_index(key) if parts else pd.DataFrame(columns=columns)


def _flags(values: pd.Series) -> pd.Series:
    """True/False where the file said so, None where it did not."""
    return values.map(lambda v: bool(v) if isinstance(v, bool | np.bool_) else None).astype(object)


CUSTOMER_TEXT_FIELDS = ["email", "first_name", "last_name", "country", "timezone"]


def _update_existing_customers(frame: pd.DataFrame, source: str, now) -> int:
    """A field given in the file replaces the stored one; a blank field leaves it alone. Vectorised."""
    consent_fields = ["marketing_consent", "consent_at", "consent_source"]
    stored = _stored(
        Customer, "external_id", frame["customer_id"], ["pk", *CUSTOMER_TEXT_FIELDS, *consent_fields]
    )
    if stored.empty:
        return 0
    given = frame.set_index("customer_id").reindex(stored.index)
    merged, dirty = stored.copy(), pd.Series(False, index=stored.index)
    for name in CUSTOMER_TEXT_FIELDS:
        value = given[name].fillna("").astype(str) if name in given else pd.Series("", index=stored.index)
        value = value.str.lower() if name == "email" else value
        take = (value != "") & (value != stored[name])
        merged[name] = stored[name].where(~take, value)
        dirty |= take
    consent = _flags(given["marketing_consent"]) if "marketing_consent" in given else None
    if consent is not None:
        flip = consent.notna() & (consent != stored["marketing_consent"])
        merged["marketing_consent"] = stored["marketing_consent"].astype(object).where(~flip, consent)
        merged["consent_at"] = stored["consent_at"].astype(object).where(~flip, now.to_pydatetime())
        merged["consent_source"] = stored["consent_source"].where(~flip, source)
        dirty |= flip
    changed = [
        Customer(
            pk=row.pk,
            **{name: getattr(row, name) for name in CUSTOMER_TEXT_FIELDS},
            marketing_consent=bool(row.marketing_consent),
            consent_at=row.consent_at if not pd.isna(row.consent_at) else None,
            consent_source=row.consent_source,
            updated_at=now.to_pydatetime(),
        )
        for row in merged.loc[dirty].itertuples()
    ]
    Customer.objects.bulk_update(
        changed, [*CUSTOMER_TEXT_FIELDS, *consent_fields, "updated_at"], batch_size=2000
    )
    return len(changed)


def upsert_products(frame: pd.DataFrame, summary: ImportSummary, now, fill_only: bool) -> dict[str, int]:
    """frame: one row per sku. fill_only: orders describe products loosely, so they only fill blanks."""
    existing = id_map(Product, "sku", frame["sku"])
    new = frame.loc[~frame["sku"].isin(existing.keys())]
    if not new.empty:
        rows = pd.DataFrame(
            {
                "sku": new["sku"],
                "name": new["name"],
                "category": new["category"],
                "price": new["price"],
                "currency": new["currency"],
                "active": new["active"].map(lambda v: True if v is None or pd.isna(v) else bool(v)),
                "product_url": new["product_url"],
                "image_url": new["image_url"],
                "repurchasable": new["repurchasable"].map(
                    lambda v: False if v is None or pd.isna(v) else bool(v)
                ),
                "created_at": now,
                "updated_at": now,
            }
        )
        existing.update(bulk_insert_keyed(Product, rows, "sku"))
    summary.counts["products_created"] += len(new)

    summary.counts["products_updated"] += _update_existing_products(
        frame.loc[~frame["sku"].isin(new["sku"])], now, fill_only
    )
    return existing


PRODUCT_TEXT_FIELDS = ["name", "category", "currency", "product_url", "image_url"]


def _update_existing_products(frame: pd.DataFrame, now, fill_only: bool) -> int:
    flag_fields = ["active", "repurchasable"]
    stored = _stored(Product, "sku", frame["sku"], ["pk", *PRODUCT_TEXT_FIELDS, "price", *flag_fields])
    if stored.empty:
        return 0
    given = frame.set_index("sku").reindex(stored.index)
    merged, dirty = stored.copy(), pd.Series(False, index=stored.index)
    for name in PRODUCT_TEXT_FIELDS:
        value = given[name].fillna("").astype(str)
        take = (value != "") & (value != stored[name])
        if fill_only:
            take &= stored[name] == ""
        merged[name] = stored[name].where(~take, value)
        dirty |= take
    price = pd.to_numeric(given["price"], errors="coerce").round(2)
    stored_price = pd.to_numeric(stored["price"].astype(object), errors="coerce")
    take = price.notna() & (stored_price.isna() | ((stored_price != price) & (not fill_only)))
    merged["price"] = merged["price"].astype(object).where(~take, price.map(lambda v: Decimal(f"{v:.2f}")))
    dirty |= take
    if not fill_only:
        for name in flag_fields:
            value = _flags(given[name])
            take = value.notna() & (value != stored[name])
            merged[name] = merged[name].astype(object).where(~take, value)
            dirty |= take
    changed = [
        Product(
            pk=row.pk,
            **{name: getattr(row, name) for name in PRODUCT_TEXT_FIELDS},
            price=row.price if not pd.isna(row.price) else None,
            active=bool(row.active),
            repurchasable=bool(row.repurchasable),
            updated_at=now.to_pydatetime(),
        )
        for row in merged.loc[dirty].itertuples()
    ]
    Product.objects.bulk_update(
        changed, [*PRODUCT_TEXT_FIELDS, "price", *flag_fields, "updated_at"], batch_size=2000
    )
    return len(changed)


def _order_hashes(lines: pd.DataFrame) -> pd.Series:
    """A content hash per order (customer, status, time, and every line in order), vectorised."""
    per_line = pd.util.hash_pandas_object(
        lines[["customer_id", "status", "placed_at", "sku", "quantity", "unit_price"]], index=False
    ).to_numpy(dtype=np.uint64)
    weights = lines["line_no"].to_numpy(dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    with np.errstate(over="ignore"):
        mixed = pd.Series(per_line * weights, index=lines.index)
    sums = mixed.groupby(lines["order_id"].to_numpy(), sort=False).sum()
    counts = lines.groupby("order_id", sort=False).size()
    return (
        sums.map(lambda v: format(int(v) & 0xFFFFFFFFFFFFFFFF, "016x"))
        + "-"
        + counts.astype(str).reindex(sums.index)
    )


def write_orders(
    lines: pd.DataFrame,
    customer_ids: dict[str, int],
    product_ids: dict[str, int],
    summary: ImportSummary,
    now,
) -> tuple[list[int], set[int]]:
    if lines.empty:
        return [], set()
    lines = lines.copy()
    lines["line_no"] = lines.groupby("order_id", sort=False).cumcount() + 1
    lines["amount"] = lines["quantity"] * lines["unit_price"]
    grouped = lines.groupby("order_id", sort=False)
    orders = pd.DataFrame(
        {
            "customer_id": grouped["customer_id"].first(),
            "placed_at": grouped["placed_at"].min(),
            "total": grouped["amount"].sum().round(2),
            "currency": grouped["currency"].first(),
            "status": grouped["status"].first(),
            "content_hash": _order_hashes(lines),
        }
    )
    known, owners = {}, {}
    for start in range(0, len(orders), 10_000):
        part = list(orders.index[start : start + 10_000])
        for ext, pk, h, owner in Order.objects.filter(external_id__in=part).values_list(
            "external_id", "pk", "content_hash", "customer_id"
        ):
            known[ext], owners[ext] = (pk, h), owner
    is_known = orders.index.isin(list(known.keys()))
    unchanged = np.array(
        [known[e][1] == h if e in known else False for e, h in orders["content_hash"].items()]
    )
    changed = is_known & ~unchanged
    summary.counts["orders_unchanged"] += int(unchanged.sum())

    changed_ids = [known[e][0] for e in orders.index[changed]]
    # An order that moved to another customer changes its former owner's lifetime figures too.
    previous_owners = {owners[e] for e in orders.index[changed]}
    if changed_ids:
        delete_where_in(OrderLine, "order_id", changed_ids)
        replaced = orders.loc[changed]
        for ext, row in replaced.iterrows():
            Order.objects.filter(pk=known[ext][0]).update(
                customer_id=customer_ids[row["customer_id"]],
                placed_at=row["placed_at"].to_pydatetime(),
                total=row["total"],
                currency=row["currency"],
                status=row["status"],
                content_hash=row["content_hash"],
            )
    summary.counts["orders_updated"] += int(changed.sum())

    new = orders.loc[~is_known]
    new_pks = bulk_insert_keyed(
        Order,
        pd.DataFrame(
            {
                "external_id": new.index,
                "customer_id": new["customer_id"].map(customer_ids).to_numpy(),
                "placed_at": new["placed_at"].to_numpy(),
                "total": new["total"].to_numpy(),
                "currency": new["currency"].to_numpy(),
                "channel": Order.Channel.IMPORT,
                "status": new["status"].to_numpy(),
                "content_hash": new["content_hash"].to_numpy(),
                "created_at": now,
            }
        ).astype({"placed_at": "datetime64[ns, UTC]"}),
        "external_id",
    )
    summary.counts["orders_created"] += len(new)
    summary.counts["returns_recorded"] += int(
        (orders.loc[~unchanged, "status"] == Order.Status.RETURNED).sum()
    )

    written = orders.index[~unchanged]
    order_pks = {**{e: known[e][0] for e in orders.index[changed]}, **new_pks}
    to_insert = lines.loc[lines["order_id"].isin(written)]
    bulk_insert(
        OrderLine,
        pd.DataFrame(
            {
                "order_id": to_insert["order_id"].map(order_pks).to_numpy(),
                "line_no": to_insert["line_no"].to_numpy(),
                "product_id": to_insert["sku"].map(product_ids).to_numpy(),
                "quantity": to_insert["quantity"].to_numpy(),
                "unit_price": to_insert["unit_price"].map("{:.2f}".format).to_numpy(),
            }
        ),
    )
    summary.counts["order_lines_written"] += len(to_insert)
    # Lifetime figures change for the owners of written orders, and for an order's former owner.
    owners_now = set(orders.loc[~unchanged, "customer_id"].map(customer_ids).astype(int))
    return list(order_pks.values()), owners_now | previous_owners


def customer_stats_refresh(*, customer_ids: list[int] | None = None) -> None:
    """Recompute each customer's lifetime figures from their placed orders, in SQL."""
    _stats_refresh(
        table=Customer._meta.db_table,
        zero="orders_count = 0, total_spent = 0, first_order_at = NULL, last_order_at = NULL",
        sets="orders_count = s.n, total_spent = s.total, first_order_at = s.first_at, last_order_at = s.last_at",
        aggregate=(
            f"SELECT customer_id AS key, COUNT(*) AS n, SUM(total) AS total, MIN(placed_at) AS first_at, "
            f"MAX(placed_at) AS last_at FROM {Order._meta.db_table} WHERE status = 'placed' {{where}} "
            f"GROUP BY customer_id"
        ),
        key="customer_id",
        ids=customer_ids,
    )


def product_stats_refresh(*, product_ids: list[int] | None = None) -> None:
    """Recompute each product's units sold and revenue from placed orders' lines, in SQL."""
    _stats_refresh(
        table=Product._meta.db_table,
        zero="units_sold = 0, revenue = 0",
        sets="units_sold = s.units, revenue = s.revenue",
        aggregate=(
            f"SELECT l.product_id AS key, SUM(l.quantity) AS units, SUM(l.quantity * l.unit_price) AS revenue "
            f"FROM {OrderLine._meta.db_table} l JOIN {Order._meta.db_table} o ON o.id = l.order_id "
            f"WHERE o.status = 'placed' {{where}} GROUP BY l.product_id"
        ),
        key="l.product_id",
        ids=product_ids,
    )


def _stats_refresh(
    *, table: str, zero: str, sets: str, aggregate: str, key: str, ids: list[int] | None
) -> None:
    """Zero the rows, then set them from one GROUP BY: the whole table, or the given ids in slices."""
    with connection.cursor() as cursor:
        if ids is None:
            cursor.execute(f"UPDATE {table} SET {zero}")
            cursor.execute(
                f"UPDATE {table} AS t SET {sets} FROM ({aggregate.format(where='')}) AS s WHERE t.id = s.key"
            )
            return
        ids = list(ids)
        for start in range(0, len(ids), 5000):
            part = ids[start : start + 5000]
            marks = ", ".join(["%s"] * len(part))
            cursor.execute(f"UPDATE {table} SET {zero} WHERE id IN ({marks})", part)
            where = f"AND {key} IN ({marks})"
            cursor.execute(
                f"UPDATE {table} AS t SET {sets} FROM ({aggregate.format(where=where)}) AS s WHERE t.id = s.key",
                part,
            )


def write_complements(
    products: pd.DataFrame, product_ids: dict[str, int], name: str, summary: ImportSummary
) -> None:
    through = Product.complements.through
    listed = products.loc[products["complements"] != ""]
    wanted = {sku.strip() for text in listed["complements"] for sku in re.split(r"[|;]", text)}
    # A complement may be a product already in the catalogue rather than one in this file.
    product_ids = {**id_map(Product, "sku", sorted(wanted - set(product_ids) - {""})), **product_ids}
    pairs = []
    for row in listed.itertuples():
        for sku in re.split(r"[|;]", row.complements):
            sku = sku.strip()
            if not sku:
                continue
            if sku not in product_ids:
                summary.add_error(RowError(name, int(row.line), "complements", f"unknown sku {sku!r}"))
                continue
            pairs.append((product_ids[row.sku], product_ids[sku]))
    if not pairs:
        return
    sources = sorted({a for a, _ in pairs})
    through.objects.filter(from_product_id__in=sources).delete()
    through.objects.bulk_create(
        [through(from_product_id=a, to_product_id=b) for a, b in set(pairs)], ignore_conflicts=True
    )
    summary.counts["complement_links"] += len(set(pairs))


def customers_from_orders(lines: pd.DataFrame) -> pd.DataFrame:
    cols = ["email", "first_name", "last_name", "country"]
    given = lines[cols]
    last = given.where(given != "").groupby(lines["customer_id"], sort=False).last()
    out = last.where(last.notna(), "").reset_index()
    out["timezone"] = ""
    out["marketing_consent"] = None
    return out


def products_from_orders(lines: pd.DataFrame) -> pd.DataFrame:
    placed = lines["status"] == Order.Status.PLACED
    named = lines[["sku", "product_name", "category", "currency"]]
    named = named.where(named != "")
    last = named.groupby(lines["sku"], sort=False).last().drop(columns="sku")
    price = lines.loc[placed & (lines["unit_price"] > 0)].groupby("sku", sort=False)["unit_price"].last()
    out = pd.DataFrame(
        {
            "sku": last.index,
            "name": last["product_name"].fillna("").to_numpy(),
            "category": last["category"].fillna("").to_numpy(),
            "price": price.reindex(last.index).to_numpy(),
            "currency": last["currency"].fillna("").to_numpy(),
            "active": None,
            "product_url": "",
            "image_url": "",
            "repurchasable": None,
            "complements": "",
        }
    )
    return out
