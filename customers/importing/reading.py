"""Reading import files: columns, errors, chunked CSV with progress, vectorised value parsing."""

from __future__ import annotations

import bisect
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


def _in_file_order(error: RowError) -> tuple[str, int, str]:
    return error.file, error.line, error.column


class ImportFailed(Exception):
    """The file was refused; nothing from it was written."""

    def __init__(self, errors: list[RowError], total: int | None = None):
        self.errors = sorted(errors, key=_in_file_order)  # found column by column: shown line by line
        self.total = total if total is not None else len(errors)
        shown = "\n".join(f"  {e}" for e in self.errors[:20])
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
            bisect.insort(self.errors, error, key=_in_file_order)  # found column by column: kept by line

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
            out.append(f"errors (their rows skipped): {self.error_count}")
            out += [f"  {e}" for e in self.errors[:20]]
        return out


Progress = Callable[[int], None]


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


def read_chunks(
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
                if not isinstance(chunk.index, pd.RangeIndex):
                    # pandas takes a first data line with one field more than the header as having an
                    # index column (any later line like it is a ParserError, below): refuse it alike.
                    raise ImportFailed([RowError(name, 2, "", _extra_field(len(chunk.columns)))])
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
        raise ImportFailed([RowError(name, _line_from_parser_error(exc), "", _parser_reason(exc))]) from None
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, OSError) as exc:
        raise ImportFailed([RowError(name, 0, "", f"cannot be read: {exc}")]) from None
    finally:
        stream.close()


def _extra_field(fields: int, saw: int | None = None) -> str:
    return (
        f"malformed CSV: expected {fields} fields, saw {saw or fields + 1} (a comma inside a value that is "
        'not quoted, such as a decimal comma: write 18.00 or "18,00")'
    )


def _parser_reason(exc: Exception) -> str:
    """The parser's complaint in the words of the rest of the errors."""
    fields = re.search(r"Expected (\d+) fields in line \d+, saw (\d+)", str(exc))
    if fields:
        return _extra_field(int(fields.group(1)), int(fields.group(2)))
    return f"malformed CSV: {str(exc).strip()}"


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


def starts_with(values: pd.Series, prefixes: tuple[str, ...]) -> pd.Series:
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


def longer_than(values: pd.Series, limit: int) -> pd.Series:
    return pd.Series(_str_len(values.to_numpy(dtype=object)).astype(np.int64) > limit, index=values.index)


def not_matching(values: pd.Series, pattern: str) -> pd.Series:
    """Non-empty values that do not match pattern (empty means "not given" and is checked elsewhere)."""
    given = values != ""
    if not given.any():
        return given
    matched = values[given].str.match(pattern).astype(bool)
    return (~matched).reindex(values.index, fill_value=False)


def parse_datetimes(values: pd.Series) -> pd.Series:
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


def parse_quantities(values: pd.Series) -> pd.Series:
    """Numbers (NaN where not a number); whole numbers, the usual case, by a fast integer cast."""
    try:
        return pd.Series(values.to_numpy(dtype=object).astype(np.int64), index=values.index)
    except (ValueError, TypeError, OverflowError):
        return pd.to_numeric(values, errors="coerce")


def _line_from_parser_error(exc: Exception) -> int:
    match = re.search(r"line (\d+)", str(exc))
    return int(match.group(1)) if match else 0


def reject(
    summary: ImportSummary, name: str, chunk: pd.DataFrame, mask: pd.Series, column: str, reason
) -> None:
    """Record an error for every row in mask; reason is a string or a function of the bad value."""
    if not mask.any():
        return
    bad = chunk.loc[mask]
    for index, value in zip(bad.index, bad[column] if column in bad else [""] * len(bad), strict=True):
        text = reason(value) if callable(reason) else reason
        summary.add_error(RowError(name, int(index) + 2, column, text))


def parse_bool(values: pd.Series) -> pd.Series:
    lowered = values.str.lower()
    return pd.Series(
        np.where(lowered.isin(TRUE_WORDS), True, np.where(lowered.isin(FALSE_WORDS), False, None)),
        index=values.index,
        dtype=object,
    )
