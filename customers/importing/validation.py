"""Validating rows, chunk by chunk: every problem becomes a RowError with file, line and column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .reading import (
    CUSTOMER_COLUMNS,
    CUSTOMER_OPTIONAL,
    EMAIL_RE,
    PRODUCT_COLUMNS,
    PRODUCT_OPTIONAL,
    TIMEZONES,
    URL_RE,
    ImportSummary,
    RowError,
    longer_than,
    not_matching,
    parse_bool,
    parse_datetimes,
    parse_quantities,
    read_chunks,
    reject,
)


def validate_order_chunk(chunk: pd.DataFrame, name: str, summary: ImportSummary) -> pd.DataFrame:
    summary.counts["rows_read"] += len(chunk)
    bad = pd.Series(False, index=chunk.index)

    for col in ("order_id", "sku"):
        empty = chunk[col] == ""
        reject(summary, name, chunk, empty, col, "is empty")
        bad |= empty

    placed = parse_datetimes(chunk["ordered_at"])
    bad_date = placed.isna()
    reject(summary, name, chunk, bad_date, "ordered_at", lambda v: f"{v!r} is not an ISO 8601 date-time")
    bad |= bad_date
    # An order from the future (a typo'd year) would be every customer's "latest order": reports' "now"
    # for CLV, a post-purchase email planned years ahead. A day of slack for naive local times.
    future = ~bad_date & (placed > pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=1))
    reject(summary, name, chunk, future, "ordered_at", lambda v: f"{v!r} is in the future")
    bad |= future

    quantity = parse_quantities(chunk["quantity"])
    bad_qty = quantity.isna() | (quantity != quantity.round()) | (quantity == 0)
    reject(summary, name, chunk, bad_qty, "quantity", lambda v: f"{v!r} is not a non-zero whole number")
    bad |= bad_qty

    price = pd.to_numeric(chunk["unit_price"], errors="coerce")
    bad_price = price.isna() | ~np.isfinite(price.fillna(0))
    reject(summary, name, chunk, bad_price, "unit_price", lambda v: f"{v!r} is not a number")
    bad |= bad_price

    bad_email = not_matching(chunk["email"], EMAIL_RE)
    reject(summary, name, chunk, bad_email, "email", lambda v: f"{v!r} is not an email address")
    bad |= bad_email

    for col, limit in (
        ("order_id", 64),
        ("customer_id", 64),
        ("sku", 64),
        ("product_name", 255),
        ("category", 100),
    ):
        too_long = longer_than(chunk[col], limit)
        reject(summary, name, chunk, too_long, col, f"longer than {limit} characters")
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


def check_order_consistency(lines: pd.DataFrame, name: str, summary: ImportSummary) -> pd.DataFrame:
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


def validate_customers_file(path: Path, summary: ImportSummary, chunksize: int, on_bytes) -> pd.DataFrame:
    name, frames = path.name, []
    for chunk in read_chunks(path, CUSTOMER_COLUMNS, CUSTOMER_OPTIONAL, chunksize, on_bytes):
        summary.counts["customer_rows_read"] += len(chunk)
        bad = chunk["customer_id"] == ""
        reject(summary, name, chunk, bad, "customer_id", "is empty")
        bad_email = not_matching(chunk["email"], EMAIL_RE)
        reject(summary, name, chunk, bad_email, "email", lambda v: f"{v!r} is not an email address")
        consent = parse_bool(chunk["marketing_consent"])
        bad_consent = (chunk["marketing_consent"] != "") & consent.isna()
        reject(summary, name, chunk, bad_consent, "marketing_consent", lambda v: f"{v!r} is not yes/no")
        bad_tz = (chunk["timezone"] != "") & ~chunk["timezone"].isin(TIMEZONES)
        reject(summary, name, chunk, bad_tz, "timezone", lambda v: f"{v!r} is not an IANA time zone")
        bad = bad | bad_email | bad_consent | bad_tz
        good = chunk.loc[~bad].copy()
        good["marketing_consent"] = consent[~bad]
        frames.append(good)
    frame = pd.concat(frames) if frames else pd.DataFrame(columns=CUSTOMER_COLUMNS + CUSTOMER_OPTIONAL)
    duplicated = frame["customer_id"].duplicated(keep="last")
    summary.skipped["customer listed twice (last row kept)"] += int(duplicated.sum())
    return frame.loc[~duplicated]


def validate_products_file(path: Path, summary: ImportSummary, chunksize: int, on_bytes) -> pd.DataFrame:
    name, frames = path.name, []
    for chunk in read_chunks(path, PRODUCT_COLUMNS, PRODUCT_OPTIONAL, chunksize, on_bytes):
        summary.counts["product_rows_read"] += len(chunk)
        bad = chunk["sku"] == ""
        reject(summary, name, chunk, bad, "sku", "is empty")
        price = pd.to_numeric(chunk["price"].replace("", np.nan), errors="coerce")
        bad_price = ((chunk["price"] != "") & price.isna()) | (price < 0)
        reject(summary, name, chunk, bad_price, "price", lambda v: f"{v!r} is not a price ≥ 0")
        flags = {}
        for col in ("active", "repurchasable"):
            flags[col] = parse_bool(chunk[col])
            wrong = (chunk[col] != "") & flags[col].isna()
            reject(summary, name, chunk, wrong, col, lambda v: f"{v!r} is not yes/no")
            bad |= wrong
        for col in ("product_url", "image_url"):
            wrong = not_matching(chunk[col], URL_RE)
            reject(summary, name, chunk, wrong, col, lambda v: f"{v!r} is not an http(s) URL")
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
