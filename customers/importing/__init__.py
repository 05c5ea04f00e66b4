"""Import a shop's export: orders (one row per order line), customers and products CSV files.

Every file is validated in full before anything is written, and written in one transaction: a file
with an invalid row changes nothing unless the caller asks to skip invalid rows. Re-importing the same
file changes nothing; a later file with an overlapping order replaces that order's lines.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from django.db import transaction
from django.utils import timezone

from ..bulk import analyze
from ..models import Customer, ImportRun, Order, OrderLine, Product
from ..privacy import suppressed_addresses_apply
from ..signals import orders_imported
from .reading import (
    ORDER_COLUMNS,
    ORDER_OPTIONAL,
    ImportFailed,
    ImportSummary,
    Progress,
    RowError,  # noqa: F401 - the package's API
    read_chunks,
    starts_with,
)
from .validation import (
    check_order_consistency,
    validate_customers_file,
    validate_order_chunk,
    validate_products_file,
)
from .writing import (
    customer_stats_refresh,
    customers_from_orders,
    product_stats_refresh,
    products_from_orders,
    upsert_customers,
    upsert_products,
    write_complements,
    write_orders,
)

log = logging.getLogger(__name__)


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
        validate_customers_file(Path(customers_path), summary, chunksize, on_bytes)
        if customers_path
        else None
    )
    product_rows = (
        validate_products_file(Path(products_path), summary, chunksize, on_bytes) if products_path else None
    )

    frames = []
    for chunk in read_chunks(path, ORDER_COLUMNS, ORDER_OPTIONAL, chunksize, on_bytes):
        frames.append(validate_order_chunk(chunk, path.name, summary))
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

    is_return = starts_with(lines["order_id"], ("C", "c")) | (
        lines.groupby("order_id", sort=False)["quantity"].transform("max") < 0
    )
    stray_negative = ~is_return & (lines["quantity"] < 0)
    summary.skipped["negative quantity inside a purchase order"] += int(stray_negative.sum())
    lines = lines.loc[~stray_negative].copy()
    lines["status"] = np.where(is_return[~stray_negative], Order.Status.RETURNED, Order.Status.PLACED)
    lines["quantity"] = lines["quantity"].abs()
    lines = check_order_consistency(lines, path.name, summary)

    if summary.error_count and not skip_invalid:
        raise ImportFailed(summary.errors, summary.error_count)

    with transaction.atomic():
        customers = customers_from_orders(lines)
        if customer_rows is not None:
            customers = pd.concat([customers, customer_rows]).drop_duplicates("customer_id", keep="last")
        customer_ids = upsert_customers(
            customers.astype(object).where(customers.notna(), ""), summary, source, now
        )

        products = products_from_orders(lines)
        if product_rows is not None:
            given = product_rows.set_index("sku")
            from_orders = products.set_index("sku")
            products = given.combine_first(from_orders).reset_index()
            products[["name", "category", "currency"]] = products[["name", "category", "currency"]].fillna("")
            for col in ("product_url", "image_url", "complements"):
                products[col] = products[col].fillna("")
        product_ids = upsert_products(products, summary, now, fill_only=product_rows is None)
        if product_rows is not None:
            write_complements(
                products.loc[products["sku"].isin(product_rows["sku"])],
                product_ids,
                Path(products_path).name,
                summary,
            )
            if summary.error_count and not skip_invalid:
                raise ImportFailed(summary.errors, summary.error_count)

        order_ids, touched = write_orders(lines, customer_ids, product_ids, summary, now)
        if touched:
            customer_stats_refresh(customer_ids=sorted(touched) if len(touched) < 50_000 else None)
            # A replaced order may have dropped lines of products the file no longer names: then all.
            replaced = summary.counts["orders_updated"] > 0
            product_stats_refresh(product_ids=None if replaced else sorted(set(product_ids.values())))
        suppressed_addresses_apply(customer_ids=customer_ids.values())  # erased addresses stay unmailed
        summary.order_ids = order_ids
        if order_ids:
            transaction.on_commit(lambda: _announce(order_ids))
    if summary.counts["order_lines_written"] > 50_000:
        analyze(Customer, Order, OrderLine, Product)  # after the commit, so the new rows are sampled
    return summary


def _announce(order_ids: list[int]) -> None:
    """Tell the other apps (post-purchase planning, attribution) about committed orders. Their failure
    is logged, never the import's: its rows are written (and with tasks run in-process, as in the demo,
    a receiver's error would otherwise report a written import as failed)."""
    for receiver, result in orders_imported.send_robust(sender=Order, order_ids=order_ids):
        if isinstance(result, Exception):
            log.error("after importing orders, %s failed", receiver, exc_info=result)


def customers_import(
    *,
    path: str | Path,
    skip_invalid: bool = False,
    chunksize: int = 100_000,
    on_bytes: Progress | None = None,
) -> ImportSummary:
    """Import a customers file on its own (customer_id, email, names, country, timezone, consent)."""
    path, summary = Path(path), ImportSummary()
    rows = validate_customers_file(path, summary, chunksize, on_bytes)
    if summary.error_count and not skip_invalid:
        raise ImportFailed(summary.errors, summary.error_count)
    with transaction.atomic():
        customer_ids = upsert_customers(
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
    rows = validate_products_file(path, summary, chunksize, on_bytes)
    if summary.error_count and not skip_invalid:
        raise ImportFailed(summary.errors, summary.error_count)
    with transaction.atomic():
        ids = upsert_products(rows, summary, pd.Timestamp(timezone.now()), fill_only=False)
        write_complements(rows, ids, path.name, summary)
        if summary.error_count and not skip_invalid:
            raise ImportFailed(summary.errors, summary.error_count)
    return summary
