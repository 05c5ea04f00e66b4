"""Set-based writes for large imports: PostgreSQL COPY, plain executemany elsewhere.

The ORM's bulk_create builds one Python object per row and one INSERT per batch; at millions of order
lines that dominates an import. These helpers take a DataFrame whose columns are database columns
(copy_rows: tuples of values, for the smaller writes of a campaign chunk).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Iterator

import numpy as np
import pandas as pd
from django.db import connection, models, transaction


def _is_postgres() -> bool:
    return connection.vendor == "postgresql"


def _text_columns(model: type[models.Model], columns: Iterable[str]) -> list[str]:
    by_column = {f.column: f for f in model._meta.concrete_fields}
    return [c for c in columns if isinstance(by_column[c], models.CharField | models.TextField)]


def _prepare(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    for name in out.columns:
        col = out[name]
        if pd.api.types.is_datetime64_any_dtype(col):
            col = col.dt.tz_convert("UTC") if col.dt.tz is not None else col
            if _is_postgres():
                out[name] = col.dt.strftime("%Y-%m-%d %H:%M:%S.%f+00:00")  # ISO with its offset
            else:
                # SQLite compares datetimes as text: write them as the ORM does (str() of naive UTC,
                # without ".000000" on a whole second), or a lookup can miss an equal value.
                out[name] = [None if pd.isna(v) else str(v.tz_localize(None).to_pydatetime()) for v in col]
        elif pd.api.types.is_bool_dtype(col):
            out[name] = col.map({True: "t", False: "f"}) if _is_postgres() else col.astype(int)
    return out


def bulk_insert(model: type[models.Model], frame: pd.DataFrame, *, ignore_conflicts: bool = False) -> int:
    """Insert every row of frame into model's table; returns the number of rows inserted.

    With ignore_conflicts a row that would break a unique constraint is left out, as with
    bulk_create(ignore_conflicts=True): on PostgreSQL the rows are copied into a temporary table first,
    then moved by one INSERT … ON CONFLICT DO NOTHING (COPY itself cannot skip a row)."""
    if frame.empty:
        return 0
    table = connection.ops.quote_name(model._meta.db_table)
    cols = ", ".join(connection.ops.quote_name(c) for c in frame.columns)
    # The temporary table lives in a transaction: a failed copy leaves nothing behind.
    with (
        transaction.atomic() if ignore_conflicts else contextlib.nullcontext(),
        connection.cursor() as cursor,
    ):
        if _is_postgres():
            target = table
            if ignore_conflicts:
                target = connection.ops.quote_name(f"incoming_{model._meta.db_table}")
                cursor.execute(f"CREATE TEMPORARY TABLE {target} AS SELECT {cols} FROM {table} WITH NO DATA")
            options = "FORMAT csv"
            text = _text_columns(model, frame.columns)
            if text:
                # An unquoted empty field is NULL in COPY csv; blank text columns must stay ''.
                options += ", FORCE_NOT_NULL (" + ", ".join(connection.ops.quote_name(c) for c in text) + ")"
            with cursor.cursor.copy(f"COPY {target} ({cols}) FROM STDIN WITH ({options})") as copy:
                # Small slices: the server parses and indexes one while the next is being formatted.
                for part in _slices(frame, 25_000):
                    buffer = io.StringIO()
                    _prepare(part).to_csv(buffer, header=False, index=False)
                    copy.write(buffer.getvalue())
            if ignore_conflicts:
                cursor.execute(
                    f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {target} ON CONFLICT DO NOTHING"
                )
                inserted = cursor.rowcount
                cursor.execute(f"DROP TABLE {target}")
                return inserted
        else:
            frame = _prepare(frame)
            marks = ", ".join(["%s"] * len(frame.columns))
            rows = frame.astype(object).where(frame.notna(), None).itertuples(index=False, name=None)
            verb = "INSERT OR IGNORE" if ignore_conflicts else "INSERT"
            cursor.executemany(f"{verb} INTO {table} ({cols}) VALUES ({marks})", list(rows))
            if ignore_conflicts:
                return cursor.rowcount
    return len(frame)


def copy_rows(model: type[models.Model], columns: list[str], rows: list[tuple]) -> None:
    """Insert rows (tuples of Python values, in the order of columns) into model's table: COPY on
    PostgreSQL, each row formatted by psycopg in C (a fifth of the CPU of building a DataFrame and
    writing it as CSV, for the few thousand rows a campaign chunk writes); executemany elsewhere."""
    if not rows:
        return
    table = connection.ops.quote_name(model._meta.db_table)
    cols = ", ".join(connection.ops.quote_name(c) for c in columns)
    with connection.cursor() as cursor:
        if _is_postgres():
            # Django wraps the driver's errors for execute(), not for a COPY: the same IntegrityError here.
            with (
                connection.wrap_database_errors,
                cursor.cursor.copy(f"COPY {table} ({cols}) FROM STDIN") as copy,
            ):
                for row in rows:
                    copy.write_row(row)
        else:
            marks = ", ".join(["%s"] * len(columns))
            cursor.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", rows)


def with_defaults(model: type[models.Model], frame: pd.DataFrame, **fields) -> pd.DataFrame:
    """frame plus a column for every other field of model (not the primary key, not a db_default), each
    holding what the ORM would insert for `model(**fields)`: the given values, defaults, auto_now
    timestamps. For scalar columns (numbers, text, booleans, timestamps), what bulk_insert writes."""
    prototype = model(**fields)
    out = frame.copy()
    for field in model._meta.concrete_fields:
        if field.primary_key or field.column in out.columns or field.has_db_default():
            continue  # the database fills a db_default
        if field.has_default() and callable(field.default) and not {field.name, field.attname} & set(fields):
            # One value for every row would be wrong for a token or any other value meant to differ.
            raise ValueError(
                f"{model.__name__}.{field.name}: give its column per row (its default is computed)"
            )
        out[field.column] = field.get_db_prep_save(field.pre_save(prototype, add=True), connection)
    return out


def bulk_insert_keyed(model: type[models.Model], frame: pd.DataFrame, key: str) -> dict[str, int]:
    """Insert the rows of frame and return {natural key: primary key} for them.

    On PostgreSQL the primary keys are taken from the table's sequence first and inserted with the
    rows, which saves reading every inserted row back by its natural key.
    """
    if frame.empty:
        return {}
    pk = model._meta.pk.column
    if _is_postgres():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence(%s, %s)) FROM generate_series(1, %s)",
                [model._meta.db_table, pk, len(frame)],
            )
            ids = np.fromiter((row[0] for row in cursor.fetchall()), dtype=np.int64, count=len(frame))
        bulk_insert(model, frame.assign(**{pk: ids}))
        return dict(zip(frame[key].tolist(), ids.tolist(), strict=True))
    bulk_insert(model, frame)
    return id_map(model, key, frame[key])


def _slices(frame: pd.DataFrame, size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, len(frame), size):
        yield frame.iloc[start : start + size]


def id_map(model: type[models.Model], field: str, keys: Iterable[str], batch: int = 10_000) -> dict[str, int]:
    """{natural key: primary key} for the given keys that exist, read in batches."""
    keys = list(keys)
    found: dict[str, int] = {}
    for start in range(0, len(keys), batch):
        part = keys[start : start + batch]
        found.update(model.objects.filter(**{f"{field}__in": part}).values_list(field, "pk"))
    return found


def delete_where_in(model: type[models.Model], field: str, values: Iterable[int], batch: int = 10_000) -> int:
    values = list(values)
    deleted = 0
    for start in range(0, len(values), batch):
        deleted += model.objects.filter(**{f"{field}__in": values[start : start + batch]})._raw_delete(
            model.objects.db
        )
    return deleted


def as_int_array(values: Iterable[int]) -> np.ndarray:
    return np.fromiter(values, dtype=np.int64)


def analyze(*models_: type[models.Model]) -> None:
    """Refresh PostgreSQL's planner statistics after a bulk load (autovacuum may take minutes to notice,
    and until it does a million-row table can look empty and get hash-joined)."""
    if _is_postgres():
        with connection.cursor() as cursor:
            for model in models_:
                cursor.execute(f"ANALYZE {connection.ops.quote_name(model._meta.db_table)}")
