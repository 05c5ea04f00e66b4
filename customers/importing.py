"""Import a shop's export: orders (one row per order line), customers and products CSV files.

Every file is validated in full before anything is written, and written in one transaction: a file
with an invalid row changes nothing unless the caller asks to skip invalid rows. Re-importing the same
file changes nothing; a later file with an overlapping order replaces that order's lines.
"""

from __future__ import annotations

import gzip
import re
import zoneinfo
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
from django.db import connection, transaction
from django.utils import timezone

from .bulk import bulk_insert, delete_where_in, id_map
from .models import Customer, ImportRun, Order, OrderLine, Product
from .privacy import suppressed_addresses_apply
from .signals import orders_imported

ORDER_COLUMNS = [
    "order_id",
    "customer_id",
    "ordered_at",
    "sku",
    "product_name",
    "category",
    "quantity",
    "unit_price",
]
ORDER_OPTIONAL = ["currency", "email", "first_name", "last_name", "country"]
CUSTOMER_COLUMNS = ["customer_id"]
CUSTOMER_OPTIONAL = ["email", "first_name", "last_name", "country", "timezone", "marketing_consent"]
PRODUCT_COLUMNS = ["sku"]
PRODUCT_OPTIONAL = [
    "name",
    "category",
    "price",
    "currency",
    "active",
    "product_url",
    "image_url",
    "repurchasable",
    "complements",
]
MAX_REPORTED_ERRORS = 1000
EMAIL_RE = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
URL_RE = r"^https?://\S+$"
TRUE_WORDS = {"yes", "y", "true", "t", "1"}
FALSE_WORDS = {"no", "n", "false", "f", "0"}
TIMEZONES = zoneinfo.available_timezones()


@dataclass(frozen=True)
class RowError:
    file: str
    line: int
    column: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}, line {self.line}" if self.line else self.file
        return f"{where}, column {self.column}: {self.reason}" if self.column else f"{where}: {self.reason}"


class ImportFailed(Exception):
    """The file was refused; nothing from it was written."""

    def __init__(self, errors: list[RowError], total: int | None = None):
        self.errors = errors
        self.total = total if total is not None else len(errors)
        shown = "\n".join(f"  {e}" for e in errors[:20])
        more = f"\n  … and {self.total - 20} more" if self.total > 20 else ""
        super().__init__(f"{self.total} invalid row(s), nothing was written:\n{shown}{more}")


@dataclass
class ImportSummary:
    counts: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    errors: list[RowError] = field(default_factory=list)
    error_count: int = 0
    order_ids: list[int] = field(default_factory=list)

    def add_error(self, error: RowError) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(error)

    def as_dict(self) -> dict:
        return {
            "counts": dict(self.counts),
            "skipped": dict(self.skipped),
            "invalid": self.error_count,
        }

    def lines(self) -> list[str]:
        out = [f"{key.replace('_', ' ')}: {value}" for key, value in sorted(self.counts.items())]
        out += [f"skipped ({reason}): {value}" for reason, value in sorted(self.skipped.items())]
        if self.error_count:
            out.append(f"invalid rows skipped: {self.error_count}")
            out += [f"  {e}" for e in self.errors[:20]]
        return out


Progress = Callable[[int], None]


# ---------------------------------------------------------------------------------------------- reading


def _open_text(path: Path, on_bytes: Progress | None) -> IO[str]:
    raw = open(path, "rb")  # noqa: SIM115 - closed by the TextIOWrapper's owner
    if on_bytes is not None:
        raw = _CountingReader(raw, on_bytes)  # type: ignore[assignment]
    stream = gzip.GzipFile(fileobj=raw) if path.name.endswith(".gz") else raw
    import io

    return io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")  # type: ignore[arg-type]


class _CountingReader:
    """Reports bytes read from the file on disk (compressed bytes for .gz), for the progress bar."""

    def __init__(self, raw, on_bytes: Progress):
        self._raw, self._on_bytes = raw, on_bytes

    def read(self, size=-1):
        data = self._raw.read(size)
        self._on_bytes(len(data))
        return data

    def readinto(self, buffer):
        n = self._raw.readinto(buffer)
        self._on_bytes(n or 0)
        return n

    def __getattr__(self, name):
        return getattr(self._raw, name)


def _read_chunks(
    path: Path, required: list[str], optional: list[str], chunksize: int, on_bytes: Progress | None
):
    name = path.name
    if not path.exists():
        raise ImportFailed([RowError(name, 0, "", "file not found")])
    stream = _open_text(path, on_bytes)
    try:
        reader = pd.read_csv(
            stream, dtype=str, keep_default_na=False, chunksize=chunksize, skipinitialspace=False
        )
        first = True
        for chunk in reader:
            if first:
                chunk.columns = [c.strip().lower() for c in chunk.columns]
                missing = [c for c in required if c not in chunk.columns]
                if missing:
                    raise ImportFailed(
                        [RowError(name, 1, c, "required column is missing from the header") for c in missing]
                    )
                columns = chunk.columns
                first = False
            chunk.columns = columns
            for col in optional:
                if col not in chunk.columns:
                    chunk[col] = ""
            for col in required + optional:
                chunk[col] = chunk[col].str.strip()
            yield chunk
        if first:
            raise ImportFailed([RowError(name, 1, "", "the file is empty (a header line is required)")])
    except pd.errors.EmptyDataError:
        raise ImportFailed([RowError(name, 1, "", "the file is empty (a header line is required)")]) from None
    except pd.errors.ParserError as exc:
        raise ImportFailed(
            [RowError(name, _line_from_parser_error(exc), "", f"malformed CSV: {exc}")]
        ) from None
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, OSError) as exc:
        raise ImportFailed([RowError(name, 0, "", f"cannot be read: {exc}")]) from None
    finally:
        stream.close()


def _line_from_parser_error(exc: Exception) -> int:
    match = re.search(r"line (\d+)", str(exc))
    return int(match.group(1)) if match else 0


def _reject(
    summary: ImportSummary, name: str, chunk: pd.DataFrame, mask: pd.Series, column: str, reason
) -> None:
    """Record an error for every row in mask; reason is a string or a function of the bad value."""
    if not mask.any():
        return
    bad = chunk.loc[mask]
    for index, value in zip(bad.index, bad[column] if column in bad else [""] * len(bad), strict=True):
        text = reason(value) if callable(reason) else reason
        summary.add_error(RowError(name, int(index) + 2, column, text))


def _parse_bool(values: pd.Series) -> pd.Series:
    lowered = values.str.lower()
    return pd.Series(
        np.where(lowered.isin(TRUE_WORDS), True, np.where(lowered.isin(FALSE_WORDS), False, None)),
        index=values.index,
        dtype=object,
    )


# ------------------------------------------------------------------------------------------ validation


def _validate_order_chunk(chunk: pd.DataFrame, name: str, summary: ImportSummary) -> pd.DataFrame:
    summary.counts["rows_read"] += len(chunk)
    bad = pd.Series(False, index=chunk.index)

    for col in ("order_id", "sku"):
        empty = chunk[col] == ""
        _reject(summary, name, chunk, empty, col, "is empty")
        bad |= empty

    placed = pd.to_datetime(chunk["ordered_at"], format="ISO8601", errors="coerce", utc=True)
    bad_date = placed.isna()
    _reject(summary, name, chunk, bad_date, "ordered_at", lambda v: f"{v!r} is not an ISO 8601 date-time")
    bad |= bad_date

    quantity = pd.to_numeric(chunk["quantity"], errors="coerce")
    bad_qty = quantity.isna() | (quantity != quantity.round()) | (quantity == 0)
    _reject(summary, name, chunk, bad_qty, "quantity", lambda v: f"{v!r} is not a non-zero whole number")
    bad |= bad_qty

    price = pd.to_numeric(chunk["unit_price"], errors="coerce")
    bad_price = price.isna() | ~np.isfinite(price.fillna(0))
    _reject(summary, name, chunk, bad_price, "unit_price", lambda v: f"{v!r} is not a number")
    bad |= bad_price

    bad_email = (chunk["email"] != "") & ~chunk["email"].str.match(EMAIL_RE)
    _reject(summary, name, chunk, bad_email, "email", lambda v: f"{v!r} is not an email address")
    bad |= bad_email

    for col, limit in (
        ("order_id", 64),
        ("customer_id", 64),
        ("sku", 64),
        ("product_name", 255),
        ("category", 100),
    ):
        too_long = chunk[col].str.len() > limit
        _reject(summary, name, chunk, too_long, col, f"longer than {limit} characters")
        bad |= too_long

    good = chunk.loc[~bad].copy()
    good["placed_at"] = placed[~bad]
    good["quantity"] = quantity[~bad].astype(np.int64)
    good["unit_price"] = price[~bad].round(2)
    good["line"] = good.index + 2

    guest = good["customer_id"] == ""
    summary.skipped["guest checkout (no customer_id)"] += int(guest.sum())
    adjustment = good["unit_price"] < 0
    summary.skipped["negative price (adjustment)"] += int((adjustment & ~guest).sum())
    return good.loc[~guest & ~adjustment]


def _check_order_consistency(lines: pd.DataFrame, name: str, summary: ImportSummary) -> pd.DataFrame:
    """An order belongs to one customer: lines naming another are invalid."""
    owner = lines.groupby("order_id", sort=False)["customer_id"].transform("first")
    conflict = lines["customer_id"] != owner
    for row in lines.loc[conflict].itertuples():
        summary.add_error(
            RowError(
                name,
                int(row.line),
                "customer_id",
                f"order {row.order_id} already belongs to customer {owner[row.Index]}",
            )
        )
    return lines.loc[~conflict]


# ------------------------------------------------------------------------------------------- writing


def _upsert_customers(frame: pd.DataFrame, summary: ImportSummary, source: str, now) -> dict[str, int]:
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
        bulk_insert(Customer, rows)
        existing.update(id_map(Customer, "external_id", new["customer_id"]))
    summary.counts["customers_created"] += len(new)

    old = frame.loc[frame["customer_id"].isin(_keys_before(existing, new))]
    if not old.empty:
        summary.counts["customers_updated"] += _update_existing_customers(old, source, now)
    return existing


def _keys_before(existing: dict[str, int], new: pd.DataFrame) -> set[str]:
    return set(existing) - set(new["customer_id"])


def _update_existing_customers(frame: pd.DataFrame, source: str, now) -> int:
    given = frame.set_index("customer_id")
    changed = []
    fields = ["email", "first_name", "last_name", "country", "timezone"]
    for customer in Customer.objects.filter(external_id__in=list(given.index)).iterator(chunk_size=5000):
        row = given.loc[customer.external_id]
        dirty = False
        for name in fields:
            value = row.get(name, "")
            value = value.lower() if name == "email" else value
            if value and getattr(customer, name) != value:
                setattr(customer, name, value)
                dirty = True
        consent = row.get("marketing_consent")
        if isinstance(consent, bool | np.bool_) and bool(consent) != customer.marketing_consent:
            customer.marketing_consent = bool(consent)
            customer.consent_at, customer.consent_source = now, source
            dirty = True
        if dirty:
            customer.updated_at = now
            changed.append(customer)
    Customer.objects.bulk_update(
        changed, [*fields, "marketing_consent", "consent_at", "consent_source", "updated_at"], batch_size=2000
    )
    return len(changed)


def _upsert_products(frame: pd.DataFrame, summary: ImportSummary, now, fill_only: bool) -> dict[str, int]:
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
        bulk_insert(Product, rows)
        existing.update(id_map(Product, "sku", new["sku"]))
    summary.counts["products_created"] += len(new)

    given = frame.loc[~frame["sku"].isin(new["sku"])].set_index("sku")
    changed = []
    text_fields = ["name", "category", "currency", "product_url", "image_url"]
    for product in Product.objects.filter(sku__in=list(given.index)).iterator(chunk_size=5000):
        row = given.loc[product.sku]
        dirty = False
        for name in text_fields:
            value = row[name]
            if value and getattr(product, name) != value and not (fill_only and getattr(product, name)):
                setattr(product, name, value)
                dirty = True
        price = row["price"]
        if not pd.isna(price) and (
            product.price is None or (not fill_only and float(product.price) != price)
        ):
            product.price = round(float(price), 2)
            dirty = True
        for name in ("active", "repurchasable"):
            value = row[name]
            if (
                not fill_only
                and value is not None
                and not pd.isna(value)
                and getattr(product, name) != bool(value)
            ):
                setattr(product, name, bool(value))
                dirty = True
        if dirty:
            product.updated_at = now
            changed.append(product)
    Product.objects.bulk_update(
        changed, [*text_fields, "price", "active", "repurchasable", "updated_at"], batch_size=2000
    )
    summary.counts["products_updated"] += len(changed)
    return existing


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


def _write_orders(
    lines: pd.DataFrame,
    customer_ids: dict[str, int],
    product_ids: dict[str, int],
    summary: ImportSummary,
    now,
) -> list[int]:
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
    known = {}
    for start in range(0, len(orders), 10_000):
        part = list(orders.index[start : start + 10_000])
        known.update(
            (ext, (pk, h))
            for ext, pk, h in Order.objects.filter(external_id__in=part).values_list(
                "external_id", "pk", "content_hash"
            )
        )
    is_known = orders.index.isin(list(known.keys()))
    unchanged = np.array(
        [known[e][1] == h if e in known else False for e, h in orders["content_hash"].items()]
    )
    changed = is_known & ~unchanged
    summary.counts["orders_unchanged"] += int(unchanged.sum())

    changed_ids = [known[e][0] for e in orders.index[changed]]
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
    bulk_insert(
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
    )
    summary.counts["orders_created"] += len(new)
    summary.counts["returns_recorded"] += int(
        (orders.loc[~unchanged, "status"] == Order.Status.RETURNED).sum()
    )

    written = orders.index[~unchanged]
    order_pks = id_map(Order, "external_id", written)
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
    return list(order_pks.values())


def customer_stats_refresh(*, customer_ids: list[int] | None = None) -> None:
    """Recompute each customer's lifetime figures from their placed orders, in SQL."""
    table, orders = Customer._meta.db_table, Order._meta.db_table
    sets = (
        "orders_count = COALESCE(s.n, 0), total_spent = COALESCE(s.total, 0), "
        "first_order_at = s.first_at, last_order_at = s.last_at"
    )
    aggregate = (
        f"SELECT customer_id, COUNT(*) AS n, SUM(total) AS total, MIN(placed_at) AS first_at, "
        f"MAX(placed_at) AS last_at FROM {orders} WHERE status = 'placed' {{where}} GROUP BY customer_id"
    )
    with connection.cursor() as cursor:
        if customer_ids is None:
            cursor.execute(
                f"UPDATE {table} SET orders_count = 0, total_spent = 0, first_order_at = NULL, last_order_at = NULL"
            )
            cursor.execute(
                f"UPDATE {table} AS c SET {sets} FROM ({aggregate.format(where='')}) AS s WHERE c.id = s.customer_id"
            )
            return
        for start in range(0, len(customer_ids), 5000):
            part = customer_ids[start : start + 5000]
            marks = ", ".join(["%s"] * len(part))
            cursor.execute(
                f"UPDATE {table} SET orders_count = 0, total_spent = 0, first_order_at = NULL, last_order_at = NULL "
                f"WHERE id IN ({marks})",
                part,
            )
            cursor.execute(
                f"UPDATE {table} AS c SET {sets} FROM ({aggregate.format(where=f'AND customer_id IN ({marks})')}) AS s "
                f"WHERE c.id = s.customer_id",
                part,
            )


# --------------------------------------------------------------------------------------- entry points


def _validate_customers_file(path: Path, summary: ImportSummary, chunksize: int, on_bytes) -> pd.DataFrame:
    name, frames = path.name, []
    for chunk in _read_chunks(path, CUSTOMER_COLUMNS, CUSTOMER_OPTIONAL, chunksize, on_bytes):
        summary.counts["customer_rows_read"] += len(chunk)
        bad = chunk["customer_id"] == ""
        _reject(summary, name, chunk, bad, "customer_id", "is empty")
        bad_email = (chunk["email"] != "") & ~chunk["email"].str.match(EMAIL_RE)
        _reject(summary, name, chunk, bad_email, "email", lambda v: f"{v!r} is not an email address")
        consent = _parse_bool(chunk["marketing_consent"])
        bad_consent = (chunk["marketing_consent"] != "") & consent.isna()
        _reject(summary, name, chunk, bad_consent, "marketing_consent", lambda v: f"{v!r} is not yes/no")
        bad_tz = (chunk["timezone"] != "") & ~chunk["timezone"].isin(TIMEZONES)
        _reject(summary, name, chunk, bad_tz, "timezone", lambda v: f"{v!r} is not an IANA time zone")
        bad = bad | bad_email | bad_consent | bad_tz
        good = chunk.loc[~bad].copy()
        good["marketing_consent"] = consent[~bad]
        frames.append(good)
    frame = pd.concat(frames) if frames else pd.DataFrame(columns=CUSTOMER_COLUMNS + CUSTOMER_OPTIONAL)
    duplicated = frame["customer_id"].duplicated(keep="last")
    summary.skipped["customer listed twice (last row kept)"] += int(duplicated.sum())
    return frame.loc[~duplicated]


def _validate_products_file(path: Path, summary: ImportSummary, chunksize: int, on_bytes) -> pd.DataFrame:
    name, frames = path.name, []
    for chunk in _read_chunks(path, PRODUCT_COLUMNS, PRODUCT_OPTIONAL, chunksize, on_bytes):
        summary.counts["product_rows_read"] += len(chunk)
        bad = chunk["sku"] == ""
        _reject(summary, name, chunk, bad, "sku", "is empty")
        price = pd.to_numeric(chunk["price"].replace("", np.nan), errors="coerce")
        bad_price = ((chunk["price"] != "") & price.isna()) | (price < 0)
        _reject(summary, name, chunk, bad_price, "price", lambda v: f"{v!r} is not a price ≥ 0")
        flags = {}
        for col in ("active", "repurchasable"):
            flags[col] = _parse_bool(chunk[col])
            wrong = (chunk[col] != "") & flags[col].isna()
            _reject(summary, name, chunk, wrong, col, lambda v: f"{v!r} is not yes/no")
            bad |= wrong
        for col in ("product_url", "image_url"):
            wrong = (chunk[col] != "") & ~chunk[col].str.match(URL_RE)
            _reject(summary, name, chunk, wrong, col, lambda v: f"{v!r} is not an http(s) URL")
            bad |= wrong
        bad = bad | bad_price
        good = chunk.loc[~bad].copy()
        good["price"] = price[~bad]
        good["active"], good["repurchasable"] = flags["active"][~bad], flags["repurchasable"][~bad]
        good["line"] = good.index + 2
        frames.append(good)
    frame = (
        pd.concat(frames) if frames else pd.DataFrame(columns=PRODUCT_COLUMNS + PRODUCT_OPTIONAL + ["line"])
    )
    return frame.drop_duplicates("sku", keep="last")


def _write_complements(
    products: pd.DataFrame, product_ids: dict[str, int], name: str, summary: ImportSummary
) -> None:
    through = Product.complements.through
    pairs = []
    for row in products.loc[products["complements"] != ""].itertuples():
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


def orders_import(
    *,
    path: str | Path,
    customers_path: str | Path | None = None,
    products_path: str | Path | None = None,
    skip_invalid: bool = False,
    chunksize: int = 100_000,
    on_bytes: Progress | None = None,
    import_run: ImportRun | None = None,
) -> ImportSummary:
    """Validate then write an orders file (and optional customers / products files) in one transaction.

    Raises ImportFailed, having written nothing, if any row is invalid and skip_invalid is False.
    """
    path = Path(path)
    summary = ImportSummary()
    now = pd.Timestamp(timezone.now())
    source = f"import {path.name}"[:100]

    customer_rows = (
        _validate_customers_file(Path(customers_path), summary, chunksize, on_bytes)
        if customers_path
        else None
    )
    product_rows = (
        _validate_products_file(Path(products_path), summary, chunksize, on_bytes) if products_path else None
    )

    frames = []
    for chunk in _read_chunks(path, ORDER_COLUMNS, ORDER_OPTIONAL, chunksize, on_bytes):
        frames.append(_validate_order_chunk(chunk, path.name, summary))
        if import_run is not None:
            ImportRun.objects.filter(pk=import_run.pk).update(rows_read=summary.counts["rows_read"])
    lines = pd.concat(frames, ignore_index=True)

    duplicate = lines.duplicated(subset=ORDER_COLUMNS + ORDER_OPTIONAL, keep="first")
    summary.skipped["exact duplicate line"] += int(duplicate.sum())
    lines = lines.loc[~duplicate]

    is_return = lines["order_id"].str.upper().str.startswith("C") | (
        lines.groupby("order_id", sort=False)["quantity"].transform("max") < 0
    )
    stray_negative = ~is_return & (lines["quantity"] < 0)
    summary.skipped["negative quantity inside a purchase order"] += int(stray_negative.sum())
    lines = lines.loc[~stray_negative].copy()
    lines["status"] = np.where(is_return[~stray_negative], Order.Status.RETURNED, Order.Status.PLACED)
    lines["quantity"] = lines["quantity"].abs()
    lines = _check_order_consistency(lines, path.name, summary)

    if summary.error_count and not skip_invalid:
        raise ImportFailed(summary.errors, summary.error_count)

    with transaction.atomic():
        customers = _customers_from_orders(lines)
        if customer_rows is not None:
            customers = pd.concat([customers, customer_rows]).drop_duplicates("customer_id", keep="last")
        customer_ids = _upsert_customers(
            customers.astype(object).where(customers.notna(), ""), summary, source, now
        )

        products = _products_from_orders(lines)
        if product_rows is not None:
            given = product_rows.set_index("sku")
            from_orders = products.set_index("sku")
            products = given.combine_first(from_orders).reset_index()
            products[["name", "category", "currency"]] = products[["name", "category", "currency"]].fillna("")
            for col in ("product_url", "image_url", "complements"):
                products[col] = products[col].fillna("")
        product_ids = _upsert_products(products, summary, now, fill_only=product_rows is None)
        if product_rows is not None:
            _write_complements(
                products.loc[products["sku"].isin(product_rows["sku"])],
                product_ids,
                Path(products_path).name,
                summary,
            )
            if summary.error_count and not skip_invalid:
                raise ImportFailed(summary.errors, summary.error_count)

        order_ids = _write_orders(lines, customer_ids, product_ids, summary, now)
        touched = sorted({customer_ids[c] for c in lines["customer_id"].unique()})
        customer_stats_refresh(customer_ids=touched if len(touched) < 50_000 else None)
        suppressed_addresses_apply(customer_ids=customer_ids.values())  # erased addresses stay unmailed
        summary.order_ids = order_ids
        if order_ids:
            transaction.on_commit(lambda: orders_imported.send(sender=Order, order_ids=order_ids))
    return summary


def _customers_from_orders(lines: pd.DataFrame) -> pd.DataFrame:
    cols = ["email", "first_name", "last_name", "country"]
    given = lines[cols]
    last = given.where(given != "").groupby(lines["customer_id"], sort=False).last()
    out = last.where(last.notna(), "").reset_index()
    out["timezone"] = ""
    out["marketing_consent"] = None
    return out


def _products_from_orders(lines: pd.DataFrame) -> pd.DataFrame:
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


def customers_import(
    *,
    path: str | Path,
    skip_invalid: bool = False,
    chunksize: int = 100_000,
    on_bytes: Progress | None = None,
) -> ImportSummary:
    """Import a customers file on its own (customer_id, email, names, country, timezone, consent)."""
    path, summary = Path(path), ImportSummary()
    rows = _validate_customers_file(path, summary, chunksize, on_bytes)
    if summary.error_count and not skip_invalid:
        raise ImportFailed(summary.errors, summary.error_count)
    with transaction.atomic():
        customer_ids = _upsert_customers(
            rows.astype(object).where(rows.notna(), ""),
            summary,
            f"import {path.name}"[:100],
            pd.Timestamp(timezone.now()),
        )
        suppressed_addresses_apply(customer_ids=customer_ids.values())
    return summary


def products_import(
    *,
    path: str | Path,
    skip_invalid: bool = False,
    chunksize: int = 100_000,
    on_bytes: Progress | None = None,
) -> ImportSummary:
    """Import a products file on its own (sku, name, category, price, flags, URLs, complements)."""
    path, summary = Path(path), ImportSummary()
    rows = _validate_products_file(path, summary, chunksize, on_bytes)
    if summary.error_count and not skip_invalid:
        raise ImportFailed(summary.errors, summary.error_count)
    with transaction.atomic():
        ids = _upsert_products(rows, summary, pd.Timestamp(timezone.now()), fill_only=False)
        _write_complements(rows, ids, path.name, summary)
        if summary.error_count and not skip_invalid:
            raise ImportFailed(summary.errors, summary.error_count)
    return summary
