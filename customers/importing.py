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
from decimal import Decimal
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
from django.db import connection, transaction
from django.utils import timezone

from .bulk import bulk_insert, bulk_insert_keyed, delete_where_in, id_map
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
        # Blank lines are kept (and dropped below) so that a row's index still gives its line number.
        reader = pd.read_csv(
            stream,
            dtype=str,
            na_filter=False,  # every field is text; a missing one is ''
            chunksize=chunksize,
            skipinitialspace=False,
            skip_blank_lines=False,
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
                chunk[col] = _strip(chunk[col])
            maybe_blank = chunk[required[0]] == ""
            if maybe_blank.any():
                blank = maybe_blank & (chunk[required + optional] == "").all(axis=1)
                chunk = chunk.loc[~blank]
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


# Element-wise str methods called from C: several times faster than the .str accessor on object columns.
_str_strip = np.frompyfunc(str.strip, 1, 1)
_str_len = np.frompyfunc(len, 1, 1)
_str_endswith = np.frompyfunc(str.endswith, 2, 1)
_str_startswith = np.frompyfunc(str.startswith, 2, 1)
_str_find = np.frompyfunc(str.find, 2, 1)
_str_rfind = np.frompyfunc(str.rfind, 2, 1)


def _scalar(value) -> np.ndarray:
    """value as one object for a ufunc argument (a tuple would otherwise broadcast as an array)."""
    out = np.empty((), dtype=object)
    out[()] = value
    return out


def _strip(values: pd.Series) -> pd.Series:
    return pd.Series(_str_strip(values.to_numpy(dtype=object)), index=values.index, dtype=object)


def _starts_with(values: pd.Series, prefixes: tuple[str, ...]) -> pd.Series:
    return pd.Series(
        _str_startswith(values.to_numpy(dtype=object), _scalar(prefixes)).astype(bool), index=values.index
    )


def _has_offset(values: np.ndarray) -> np.ndarray:
    """'…Z', '…+01:00' or '…-05:00' (a date's own dashes come before position 10)."""
    return (
        _str_endswith(values, _scalar(("Z", "z"))).astype(bool)
        | (_str_find(values, "+").astype(np.int64) >= 0)
        | (_str_rfind(values, "-").astype(np.int64) > 9)
    )


def _longer_than(values: pd.Series, limit: int) -> pd.Series:
    return pd.Series(_str_len(values.to_numpy(dtype=object)).astype(np.int64) > limit, index=values.index)


def _not_matching(values: pd.Series, pattern: str) -> pd.Series:
    """Non-empty values that do not match pattern (empty means "not given" and is checked elsewhere)."""
    given = values != ""
    if not given.any():
        return given
    matched = values[given].str.match(pattern).astype(bool)
    return (~matched).reindex(values.index, fill_value=False)


def _parse_datetimes(values: pd.Series) -> pd.Series:
    """ISO 8601 to UTC; naive values are UTC. NaT where unparseable.

    pandas applies the offset of an earlier value to a later naive one when both kinds are parsed
    together, so values with an explicit offset are parsed on their own.
    """
    aware = pd.Series(_has_offset(values.to_numpy(dtype=object)), index=values.index)
    if not aware.any() or aware.all():
        return pd.to_datetime(values, format="ISO8601", errors="coerce", utc=True)
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    out[aware] = pd.to_datetime(values[aware], format="ISO8601", errors="coerce", utc=True)
    out[~aware] = pd.to_datetime(values[~aware], format="ISO8601", errors="coerce", utc=True)
    return out


def _parse_quantities(values: pd.Series) -> pd.Series:
    """Numbers (NaN where not a number); whole numbers, the usual case, by a fast integer cast."""
    try:
        return pd.Series(values.to_numpy(dtype=object).astype(np.int64), index=values.index)
    except (ValueError, TypeError, OverflowError):
        return pd.to_numeric(values, errors="coerce")


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

    placed = _parse_datetimes(chunk["ordered_at"])
    bad_date = placed.isna()
    _reject(summary, name, chunk, bad_date, "ordered_at", lambda v: f"{v!r} is not an ISO 8601 date-time")
    bad |= bad_date

    quantity = _parse_quantities(chunk["quantity"])
    bad_qty = quantity.isna() | (quantity != quantity.round()) | (quantity == 0)
    _reject(summary, name, chunk, bad_qty, "quantity", lambda v: f"{v!r} is not a non-zero whole number")
    bad |= bad_qty

    price = pd.to_numeric(chunk["unit_price"], errors="coerce")
    bad_price = price.isna() | ~np.isfinite(price.fillna(0))
    _reject(summary, name, chunk, bad_price, "unit_price", lambda v: f"{v!r} is not a number")
    bad |= bad_price

    bad_email = _not_matching(chunk["email"], EMAIL_RE)
    _reject(summary, name, chunk, bad_email, "email", lambda v: f"{v!r} is not an email address")
    bad |= bad_email

    for col, limit in (
        ("order_id", 64),
        ("customer_id", 64),
        ("sku", 64),
        ("product_name", 255),
        ("category", 100),
    ):
        too_long = _longer_than(chunk[col], limit)
        _reject(summary, name, chunk, too_long, col, f"longer than {limit} characters")
        bad |= too_long

    price = price.round(2)
    guest = ~bad & (chunk["customer_id"] == "")
    summary.skipped["guest checkout (no customer_id)"] += int(guest.sum())
    adjustment = ~bad & ~guest & (price < 0)
    summary.skipped["negative price (adjustment)"] += int(adjustment.sum())
    keep = ~(bad | guest | adjustment)
    good = chunk.loc[keep].copy()
    good["placed_at"] = placed[keep]
    good["quantity"] = quantity[keep].astype(np.int64)
    good["unit_price"] = price[keep]
    good["line"] = good.index + 2
    return good


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


def _write_orders(
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
        bad_email = _not_matching(chunk["email"], EMAIL_RE)
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
            wrong = _not_matching(chunk[col], URL_RE)
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

    # Only lines sharing order, product and quantity can be exact duplicates: compare all columns there.
    candidate = lines.duplicated(subset=["order_id", "sku", "quantity"], keep=False).to_numpy()
    duplicate = np.zeros(len(lines), dtype=bool)
    if candidate.any():
        duplicate[candidate] = (
            lines.loc[candidate].duplicated(subset=ORDER_COLUMNS + ORDER_OPTIONAL).to_numpy()
        )
    summary.skipped["exact duplicate line"] += int(duplicate.sum())
    lines = lines.loc[~duplicate]

    is_return = _starts_with(lines["order_id"], ("C", "c")) | (
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

        order_ids, touched = _write_orders(lines, customer_ids, product_ids, summary, now)
        if touched:
            customer_stats_refresh(customer_ids=sorted(touched) if len(touched) < 50_000 else None)
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
