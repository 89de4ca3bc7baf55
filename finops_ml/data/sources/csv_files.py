"""CSV files of billing events: FOCUS 1.0-1.2 files, or Cloud Billing export rows flattened to dotted columns.

The kind is decided from the header:

  FOCUS            BilledCost and ChargePeriodStart present (matched case-insensitively); every row is mapped onto
                   the export row (the mapping is `FOCUS_MAPPING` below). FOCUS has no export time: a row's
                   export_time is its ChargePeriodEnd, so re-reading the same file gives the same event ids.
  flattened export cost and usage_start_time present; `service.description`, `invoice.month`, ... rebuild the
                   nesting, and list columns (labels, system_labels, credits, project.labels) hold JSON arrays
                   as text. A struct may also come whole, as a JSON object in the column of its own name.

Anything else raises FinopsError. The file is streamed with Arrow's CSV reader, every column read as text, in
batches of `batch_rows` rows, so a file of any size is read in bounded memory. Parsing is vectorised (Arrow and
pandas over whole columns; JSON text such as Tags is parsed once per distinct value).

A row that cannot be mapped (an unparseable date or number, Tags that are not a JSON object, an unknown
ChargeCategory, a record with the wrong number of fields) is never dropped: it is yielded in `rejected` with a
one-sentence reason and the raw row. Rows that map but are semantically invalid (an unknown currency, a missing
ServiceName) are left to ingest's validation. Locations are record numbers: 1 is the first record after the header
(the same as line number - 1 unless a quoted value spans lines); blank lines are not records.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from finops_ml.data.events import EXPORT_SCHEMA
from finops_ml.data.sources import Rejected, SourceBatch
from finops_ml.errors import FinopsError

NULL_TOKENS = pa.array(["", "NULL", "null", "Null"])
BLOCK_BYTES = 4 << 20  # Arrow reads about this much text per block; blocks are regrouped into `batch_rows` rows

# FOCUS column -> export field, as implemented (documentation; the code below is the authority).
FOCUS_MAPPING = {
    "BillingAccountId": "billing_account_id",
    "ProviderName + ServiceName": "service.id (slug 'provider/service-name')",
    "ServiceName": "service.description",
    "SkuId (else SkuPriceId, else 'focus-<chargecategory>')": "sku.id",
    "ChargeDescription (else SkuId, else ChargeCategory)": "sku.description",
    "ChargePeriodStart": "usage_start_time (UTC; a time without offset is read as UTC, as FOCUS requires)",
    "ChargePeriodEnd": "usage_end_time and export_time (FOCUS has no export time)",
    "SubAccountId / SubAccountName": "project.id / project.name",
    "Tags (JSON object)": "labels [{key, value}] (non-string values as JSON text)",
    "RegionId (else RegionName)": "location.location and location.region",
    "AvailabilityZone": "location.zone",
    "ResourceId / ResourceName (else ResourceId)": "resource.global_name / resource.name",
    "BilledCost": "cost (credits stay [])",
    "BillingCurrency": "currency (currency_conversion_rate 1.0)",
    "ConsumedQuantity / ConsumedUnit": "usage.amount / usage.unit",
    "PricingQuantity / PricingUnit": "usage.amount_in_pricing_units / usage.pricing_unit",
    "BillingPeriodStart": "invoice.month (YYYYMM of the UTC start)",
    "ChargeCategory": "cost_type: Usage, Purchase -> regular; Tax -> tax; Credit, Adjustment -> adjustment",
    "ChargeCategory Credit/Adjustment + ChargeDescription": "adjustment_info {type, description}",
    "ListCost": "cost_at_list",
    "PublisherName (else ProviderName)": "seller_name",
    "(none)": "transaction_type (null)",
    "ServiceCategory, EffectiveCost, ChargeClass, ... (FOCUS_EXTRAS)": "system_labels 'focus/<Column>' (text)",
}

COST_TYPE_BY_CATEGORY = {"usage": "regular", "purchase": "regular", "tax": "tax", "credit": "adjustment",
                         "adjustment": "adjustment"}

# Older or newer names of a column, used when the FOCUS 1.0 name is absent: 0.5 / 1.0-preview wrote ChargeType,
# UsageQuantity, UsageUnit, AmortizedCost and Region; 1.3 adds ServiceProviderName beside (deprecated) ProviderName.
FOCUS_ALIASES = {
    "ChargeCategory": ("ChargeType",),
    "ConsumedQuantity": ("UsageQuantity",),
    "ConsumedUnit": ("UsageUnit",),
    "EffectiveCost": ("AmortizedCost",),
    "RegionId": ("Region",),
    "ProviderName": ("ServiceProviderName",),
    "PublisherName": ("ServiceProviderName",),
}

# FOCUS columns with no export field, kept as system_labels 'focus/<Column>' when present and not null.
FOCUS_EXTRAS = (
    "EffectiveCost", "ContractedCost", "ServiceCategory", "ServiceSubcategory", "ChargeClass", "ChargeFrequency",
    "PricingCategory", "ResourceType", "SkuPriceId", "SkuMeter", "CommitmentDiscountId", "CommitmentDiscountType",
    "CommitmentDiscountStatus", "CommitmentDiscountCategory", "CapacityReservationId", "CapacityReservationStatus",
    "InvoiceId", "InvoiceIssuerName", "BillingAccountName", "BillingAccountType", "SubAccountType",
    "PricingCurrency", "PricingCurrencyEffectiveCost", "HostProviderName",
)

FOCUS_REQUIRED = ("BilledCost", "ChargePeriodStart")
EXPORT_REQUIRED = ("cost", "usage_start_time")


def read_csv_events(path: Path, batch_rows: int = 100_000) -> Iterator[SourceBatch]:
    """Batches of export rows from one CSV file (FOCUS or flattened export; see the module doc)."""
    path = Path(path)
    header = _header(path)
    if is_focus(header):
        mapper: Callable[[pa.Table], tuple[pa.Table, _Rows]] = _FocusMapper(header)
    elif all(name in header for name in EXPORT_REQUIRED):
        mapper = _ExportMapper(header)
    else:
        shown = ", ".join(header[:6]) + (", ..." if len(header) > 6 else "")
        raise FinopsError(
            f"CSV file {path} is neither a FOCUS file (needs the columns BilledCost and ChargePeriodStart) nor a "
            f"flattened billing export (needs cost, usage_start_time and dotted columns such as service.description); "
            f"its header is: {shown}.")

    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise FinopsError(f"CSV file {path} has the column {repeated[0]} more than once; each column must be unique.")
    yield from _mapped(mapper, _chunks(path, header, batch_rows), str(path))


def is_focus(columns: list[str]) -> bool:
    """Whether these column names are a FOCUS file's (BilledCost and ChargePeriodStart, in any case)."""
    lower = {name.lower() for name in columns}
    return all(name.lower() in lower for name in FOCUS_REQUIRED)


def read_focus_tables(tables: Iterator[pa.Table], columns: list[str], source: str) -> Iterator[SourceBatch]:
    """FOCUS rows from typed tables (a Parquet file's batches), mapped exactly as a FOCUS CSV's rows are: every
    column is first written as the text a CSV would hold."""

    def chunks() -> Iterator[Chunk]:
        first = 1
        for table in tables:
            text = pa.Table.from_arrays([_as_text(table.column(name)) for name in columns], names=columns)
            yield text, np.arange(first, first + table.num_rows), []
            first += table.num_rows

    yield from _mapped(_FocusMapper(columns), chunks(), source)


def _as_text(column: pa.ChunkedArray) -> pa.Array:
    """A typed column as CSV text: ISO 8601 times, numbers as written, maps and lists (Tags) as JSON."""
    arr = column.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_timestamp(arr.type):
        utc = pc.cast(arr, pa.timestamp("us", tz="UTC")) if arr.type.tz else pc.assume_timezone(
            pc.cast(arr, pa.timestamp("us")), "UTC")
        return pc.strftime(utc, format="%Y-%m-%dT%H:%M:%SZ")
    if pa.types.is_nested(arr.type):
        values = [dict(v) if pa.types.is_map(arr.type) and v is not None else v for v in arr.to_pylist()]
        return pa.array([None if v is None else json.dumps(v, default=str) for v in values], pa.string())
    return pc.cast(arr, pa.string())


def _mapped(mapper: Callable[[pa.Table], tuple[pa.Table, _Rows]], chunks: Iterator[Chunk],
            source: str) -> Iterator[SourceBatch]:
    """Text chunks mapped onto export rows; the rows the mapper cannot map are rejected with their reason."""
    for chunk, numbers, malformed in chunks:
        table, rows = mapper(chunk)
        rejected = [Rejected(source, str(n), reason, text) for n, reason, text in malformed]
        if rows.bad.any():
            idx = np.flatnonzero(rows.bad)
            raw = chunk.take(pa.array(idx)).to_pylist()
            rejected += [Rejected(source, str(numbers[i]), rows.reasons[i], record) for i, record in zip(idx, raw)]
            keep = np.flatnonzero(~rows.bad)
            table = table.take(pa.array(keep, type=pa.int64()))
            numbers = numbers[keep]
        contiguous = len(numbers) == 0 or numbers[-1] - numbers[0] == len(numbers) - 1
        first = int(numbers[0]) if len(numbers) else 1
        yield SourceBatch(table, rejected, source, first,
                          locations=None if contiguous else [int(n) for n in numbers])


# ---------------------------------------------------------------------------------------------------------------
# Reading

Chunk = tuple[pa.Table, np.ndarray, list[tuple[int, str, str]]]  # text columns, row numbers, malformed records


def _header(path: Path) -> list[str]:
    try:
        with pa.input_stream(str(path), compression="detect") as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
            header = next(csv.reader(text), None)
    except (OSError, pa.ArrowInvalid, csv.Error) as exc:
        raise FinopsError(f"CSV file {path} cannot be read ({exc}).") from None
    if not header or not any(h.strip() for h in header):
        raise FinopsError(f"CSV file {path} is empty; a FOCUS or flattened export CSV starts with a header line.")
    return [h.strip() for h in header]


def _chunks(path: Path, header: list[str], batch_rows: int) -> Iterator[Chunk]:
    """Tables of `batch_rows` records, every column as text, with their record numbers (1 = the first record after
    the header; blank lines are not records).

    Arrow parses the file (fast, multi-threaded). If it meets a record with the wrong number of fields, the rest of
    the file is read with Python's csv module instead, which knows each record's number exactly, and the malformed
    records come back with a reason: Arrow could only skip them without saying where they were."""
    malformed: list[int | None] = []

    def on_invalid(row) -> str:
        malformed.append(row.number)
        return "skip"

    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES, column_names=header, skip_rows=1),
            parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(column_types={name: pa.string() for name in header},
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
    except (pa.ArrowInvalid, OSError) as exc:
        raise FinopsError(f"CSV file {path} cannot be read ({exc}); is it a complete UTF-8 CSV file?") from None
    first = 1
    for chunk in _regroup(reader, batch_rows, path):
        # a malformed record is reported (to on_invalid) while its block is parsed, before any of the block's rows
        # reach a chunk: a chunk yielded while `malformed` is empty has every record of its part of the file
        if malformed:
            break
        yield chunk, np.arange(first, first + chunk.num_rows), []
        first += chunk.num_rows
    if malformed:
        yield from _python_chunks(path, header, batch_rows, skip=first - 1)


def _python_chunks(path: Path, header: list[str], batch_rows: int, skip: int) -> Iterator[Chunk]:
    """The slow, exact reader: records after the first `skip`, malformed ones reported with their number."""
    csv.field_size_limit(1 << 30)
    width = len(header)
    with pa.input_stream(str(path), compression="detect") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline="")
        records = csv.reader(text)
        next(records, None)
        columns: list[list[str]] = [[] for _ in header]
        numbers: list[int] = []
        bad: list[tuple[int, str, str]] = []
        n = 0
        try:
            for fields in records:
                if not fields or fields == [""]:
                    continue  # a blank line, as Arrow skips it
                n += 1
                if n <= skip:
                    continue
                if len(fields) != width:
                    out = io.StringIO()
                    csv.writer(out, lineterminator="").writerow(fields)
                    bad.append((n, f"row: it has {len(fields)} fields where the header has {width}.", out.getvalue()))
                else:
                    for column, value in zip(columns, fields):
                        column.append(value)
                    numbers.append(n)
                if len(numbers) >= batch_rows:
                    yield _text_table(header, columns), np.array(numbers, dtype=np.int64), bad
                    columns, numbers, bad = [[] for _ in header], [], []
        except (csv.Error, UnicodeDecodeError) as exc:
            raise FinopsError(f"CSV file {path} cannot be parsed after row {n} ({exc}); "
                              "is it a complete UTF-8 CSV file?") from None
        if numbers or bad:
            yield _text_table(header, columns), np.array(numbers, dtype=np.int64), bad


def _text_table(header: list[str], columns: list[list[str]]) -> pa.Table:
    return pa.Table.from_arrays([pa.array(c, pa.string()) for c in columns], names=header)


def _regroup(reader: pacsv.CSVStreamingReader, rows: int, path: Path) -> Iterator[pa.Table]:
    """The reader's record batches regrouped into tables of `rows` rows (the last one shorter)."""
    buffered: list[pa.RecordBatch] = []
    count = 0
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except pa.ArrowInvalid as exc:
            raise FinopsError(f"CSV file {path} cannot be parsed ({exc}); is it a complete UTF-8 CSV file?") from None
        buffered.append(batch)
        count += batch.num_rows
        while count >= rows:
            table = pa.Table.from_batches(buffered)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            buffered, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(buffered)


# ---------------------------------------------------------------------------------------------------------------
# Vectorised parsing helpers; each records the rows it cannot parse with a reason


class _Rows:
    """Per-chunk bookkeeping: which rows are bad, and the first reason for each."""

    def __init__(self, n: int):
        self.n = n
        self.bad = np.zeros(n, dtype=bool)
        self.reasons: list[str | None] = [None] * n

    def reject(self, mask: np.ndarray, reason: Callable[[int], str]) -> None:
        for i in np.flatnonzero(mask & ~self.bad):
            self.reasons[i] = reason(i)
        self.bad |= mask


def _text(table: pa.Table, name: str | None) -> pa.Array | None:
    """A column as text, with surrounding blanks trimmed and the null tokens ('', NULL) as nulls; None if absent."""
    if name is None or name not in table.column_names:
        return None
    arr = pc.utf8_trim_whitespace(table.column(name).combine_chunks())
    return pc.if_else(pc.is_in(arr, NULL_TOKENS), pa.scalar(None, pa.string()), arr)


def _coalesce(*arrays: pa.Array | None) -> pa.Array | None:
    present = [a for a in arrays if a is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else pc.coalesce(*present)


def _or_nulls(arr: pa.Array | None, n: int, type_: pa.DataType = pa.string()) -> pa.Array:
    return arr if arr is not None else pa.nulls(n, type_)


def _number(arr: pa.Array | None, column: str, rows: _Rows) -> pa.Array:
    """Text -> float64; a value that is not a finite number rejects its row."""
    if arr is None:
        return pa.nulls(rows.n, pa.float64())
    try:
        values = pc.cast(arr, pa.float64())
        ok = pc.fill_null(pc.is_finite(values), True)
        if pc.all(ok).as_py():
            return values
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    text = arr.to_pandas()
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=float)
    bad = text.notna().to_numpy() & ~np.isfinite(values)
    rows.reject(bad, lambda i: f"{column}: '{text.iloc[i]}' is not a number.")
    return pa.array(np.where(bad, np.nan, values), mask=text.isna().to_numpy() | bad, type=pa.float64())


def _timestamp(arr: pa.Array | None, column: str, rows: _Rows, required: bool = False) -> pa.Array:
    """ISO 8601 text -> timestamp[us, UTC]; a value without offset is UTC. Unparseable values reject the row."""
    if arr is None:
        if required:
            rows.reject(np.ones(rows.n, bool), lambda i: f"{column}: the column is missing.")
        return pa.nulls(rows.n, EXPORT_SCHEMA.field("usage_start_time").type)
    ts_type = EXPORT_SCHEMA.field("usage_start_time").type
    missing = pc.is_null(arr).to_numpy(zero_copy_only=False)
    if required:
        rows.reject(missing, lambda i: f"{column}: the value is empty.")
    # fast paths: every value without offset (read as UTC), or every value with one
    for fast in (pa.timestamp("us"), ts_type):
        try:
            return pc.cast(pc.cast(arr, fast), ts_type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    # mixed or unusual forms: BigQuery writes '2024-01-01 00:00:00 UTC'; pandas reads the ISO 8601 forms
    text = pc.replace_substring_regex(arr, pattern=r"\s*(UTC|GMT)$", replacement="Z").to_pandas()
    parsed = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    bad = ~missing & parsed.isna().to_numpy()
    raw = arr.to_pylist() if bad.any() else None
    rows.reject(bad, lambda i: f"{column}: '{raw[i]}' is not an ISO 8601 date and time.")
    return pc.cast(pa.array(parsed, from_pandas=True), ts_type, safe=False)


def _json_column(arr: pa.Array | None, column: str, rows: _Rows, parse: Callable[[Any], Any],
                 type_: pa.DataType, empty: Any = None) -> pa.Array:
    """JSON text -> `type_`, parsing each distinct value once; `parse` turns the decoded JSON into the value (or
    raises ValueError with the reason). Nulls become `empty`."""
    n = rows.n
    if arr is None:
        return pa.array([empty] * n, type=type_) if empty is not None else pa.nulls(n, type_)
    encoded = arr.dictionary_encode()
    uniques = encoded.dictionary.to_pylist()
    values, errors = [], []
    for text in uniques:
        try:
            values.append(parse(json.loads(text)))
            errors.append(None)
        except (ValueError, TypeError, AttributeError) as exc:  # json.JSONDecodeError is a ValueError
            values.append(None)
            msg = f"invalid JSON ({exc.msg})" if isinstance(exc, json.JSONDecodeError) else str(exc)
            errors.append(f"{column}: {msg}.")
    values.append(empty)  # position len(uniques): null input
    indices = pc.fill_null(encoded.indices, len(uniques)).cast(pa.int64())
    idx = indices.to_numpy()
    failed = np.array([e is not None for e in errors] + [False], dtype=bool)
    rows.reject(failed[idx], lambda i: errors[idx[i]])
    return pa.array(values, type=type_).take(indices)


def _tags(value: Any) -> list[dict]:
    if not isinstance(value, dict):
        raise ValueError("not a JSON object of tag names and values")
    return [{"key": str(k), "value": v if v is None or isinstance(v, str) else json.dumps(v)}
            for k, v in value.items()]


def _labels(value: Any) -> list[dict]:
    if isinstance(value, dict):  # {"key": "value"} is accepted too
        return _tags(value)
    if not isinstance(value, list) or not all(isinstance(v, dict) and "key" in v for v in value):
        raise ValueError("not a JSON array of {key, value} objects")
    return [{"key": str(v["key"]), "value": None if v.get("value") is None else str(v["value"])} for v in value]


def _credits(value: Any) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ValueError("not a JSON array of credit objects")
    out = []
    for c in value:
        amount = c.get("amount")
        if isinstance(amount, str):
            amount = float(amount)
        if amount is not None and not isinstance(amount, (int, float)):
            raise ValueError("a credit amount is not a number")
        out.append({k: (str(c[k]) if c.get(k) is not None else None) for k in ("name", "full_name", "id", "type")}
                   | {"amount": amount})
    return out


def _struct(children: dict[str, pa.Array], type_: pa.StructType, n: int) -> pa.StructArray:
    """A struct of `type_` from the children given (missing ones null); null where every child is null/empty."""
    arrays, all_null = [], np.ones(n, dtype=bool)
    for f in type_:
        child = children.get(f.name)
        if child is None:
            arrays.append(pa.nulls(n, f.type))
            continue
        arrays.append(child)
        present = pc.is_valid(child)
        if pa.types.is_list(f.type):
            present = pc.and_(present, pc.greater(pc.fill_null(pc.list_value_length(child), 0), 0))
        all_null &= ~present.to_numpy(zero_copy_only=False)
    return pa.StructArray.from_arrays(arrays, fields=list(type_), mask=pa.array(all_null))


def _empty_lists(n: int, type_: pa.ListType) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], type_.value_type), type=type_)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _service_id(provider: str, name: str) -> str:
    """A stable service id from the names: 'aws/amazon-simple-queue-service' (the name alone without provider)."""
    return f"{_slug(provider)}/{_slug(name)}" if provider else _slug(name)


def _month(ts: pa.Array) -> pa.Array:
    return pc.strftime(ts, format="%Y%m")


# ---------------------------------------------------------------------------------------------------------------
# FOCUS


class _FocusMapper:
    def __init__(self, header: list[str]):
        lower = {h.lower(): h for h in header}
        self.columns: dict[str, str | None] = {}
        wanted = ["BilledCost", "BillingAccountId", "BillingCurrency", "BillingPeriodStart", "ChargeCategory",
                  "ChargeDescription", "ChargePeriodEnd", "ChargePeriodStart", "ConsumedQuantity", "ConsumedUnit",
                  "ListCost", "PricingQuantity", "PricingUnit", "ProviderName", "PublisherName", "RegionId",
                  "RegionName", "AvailabilityZone", "ResourceId", "ResourceName", "ServiceName", "SkuId",
                  "SkuPriceId", "SubAccountId", "SubAccountName", "Tags", *FOCUS_EXTRAS]
        for name in dict.fromkeys(wanted):
            found = lower.get(name.lower())
            for alias in FOCUS_ALIASES.get(name, ()):
                found = found or lower.get(alias.lower())
            self.columns[name] = found

    def __call__(self, chunk: pa.Table) -> tuple[pa.Table, _Rows]:
        n = chunk.num_rows
        rows = _Rows(n)
        col = {name: _text(chunk, actual) for name, actual in self.columns.items()}

        cost = _number(col["BilledCost"], "BilledCost", rows)
        if col["BilledCost"] is not None:
            rows.reject(pc.is_null(cost).to_numpy(zero_copy_only=False) & ~rows.bad,
                        lambda i: "BilledCost: the value is empty.")
        start = _timestamp(col["ChargePeriodStart"], "ChargePeriodStart", rows, required=True)
        end = _timestamp(col["ChargePeriodEnd"], "ChargePeriodEnd", rows, required=True)
        period = _timestamp(col["BillingPeriodStart"], "BillingPeriodStart", rows)
        list_cost = _number(col["ListCost"], "ListCost", rows)
        consumed = _number(col["ConsumedQuantity"], "ConsumedQuantity", rows)
        pricing_qty = _number(col["PricingQuantity"], "PricingQuantity", rows)

        category = col["ChargeCategory"]
        if category is None:
            rows.reject(np.ones(n, bool), lambda i: "ChargeCategory: the column is missing.")
            cost_type = pa.nulls(n, pa.string())
        else:
            lowered = pc.utf8_lower(category)
            keys = pa.array(list(COST_TYPE_BY_CATEGORY))
            cost_type = pc.take(pa.array(list(COST_TYPE_BY_CATEGORY.values())), pc.index_in(lowered, keys))
            unknown = pc.is_null(cost_type).to_numpy(zero_copy_only=False)
            cats = category.to_pylist() if unknown.any() else None
            rows.reject(unknown, lambda i: (
                f"ChargeCategory: '{cats[i]}' is not one of Usage, Purchase, Tax, Credit, Adjustment."
                if cats[i] is not None else "ChargeCategory: the value is empty."))

        labels_type = EXPORT_SCHEMA.field("labels").type
        labels = _json_column(col["Tags"], "Tags", rows, _tags, labels_type, empty=[])

        # service: id = 'provider/service-name' slug, description = ServiceName
        service_name = col["ServiceName"]
        provider = col["ProviderName"]
        if service_name is not None:
            pair = pc.binary_join_element_wise(pc.fill_null(_or_nulls(provider, n), ""), service_name, "\x1f")
            enc = pair.dictionary_encode()
            ids = pa.array([_service_id(*p.split("\x1f", 1)) for p in enc.dictionary.to_pylist()], pa.string())
            service_id = ids.take(enc.indices)
        else:
            service_id = None
        service = _struct({"id": service_id, "description": service_name},
                          EXPORT_SCHEMA.field("service").type, n)

        fallback = None
        if category is not None:
            fallback = pc.binary_join_element_wise(pa.scalar("focus-"), pc.utf8_lower(category), "")
        sku = _struct({"id": _coalesce(col["SkuId"], col["SkuPriceId"], fallback),
                       "description": _coalesce(col["ChargeDescription"], col["SkuId"], category)},
                      EXPORT_SCHEMA.field("sku").type, n)

        project_type = EXPORT_SCHEMA.field("project").type
        project = _struct({"id": col["SubAccountId"], "name": col["SubAccountName"],
                           "labels": _empty_lists(n, project_type.field("labels").type)}, project_type, n)

        region = _coalesce(col["RegionId"], col["RegionName"])
        location = _struct({"location": region, "region": region, "zone": col["AvailabilityZone"]},
                           EXPORT_SCHEMA.field("location").type, n)
        resource = _struct({"global_name": col["ResourceId"],
                            "name": _coalesce(col["ResourceName"], col["ResourceId"])},
                           EXPORT_SCHEMA.field("resource").type, n)
        usage = _struct({"amount": consumed if col["ConsumedQuantity"] is not None else None,
                         "unit": col["ConsumedUnit"],
                         "amount_in_pricing_units": pricing_qty if col["PricingQuantity"] is not None else None,
                         "pricing_unit": col["PricingUnit"]}, EXPORT_SCHEMA.field("usage").type, n)
        invoice = _struct({"month": _month(period) if col["BillingPeriodStart"] is not None else None},
                          EXPORT_SCHEMA.field("invoice").type, n)

        # A usage row with a negative quantity corrects earlier usage (FOCUS 1.0 files often carry no ChargeClass
        # 'Correction' for it): in the export's terms that is an adjustment, not regular usage.
        if category is not None and col["ConsumedQuantity"] is not None:
            correction = pc.fill_null(pc.and_(pc.equal(cost_type, "regular"), pc.less(consumed, 0.0)), False)
            cost_type = pc.if_else(correction, pa.scalar("adjustment"), cost_type)

        adjustment_type = EXPORT_SCHEMA.field("adjustment_info").type
        if category is not None:
            is_adj = pc.fill_null(pc.equal(cost_type, "adjustment"), False)
            none = pa.scalar(None, pa.string())
            adjustment = _struct({"type": pc.if_else(is_adj, category, none),
                                  "description": pc.if_else(is_adj, _or_nulls(col["ChargeDescription"], n), none)},
                                 adjustment_type, n)
        else:
            adjustment = pa.nulls(n, adjustment_type)

        currency = col["BillingCurrency"]
        columns = {
            "billing_account_id": _or_nulls(col["BillingAccountId"], n),
            "service": service,
            "sku": sku,
            "usage_start_time": start,
            "usage_end_time": end,
            "project": project,
            "labels": labels,
            "system_labels": self._extras(col, n),
            "location": location,
            "resource": resource,
            "export_time": end,
            "cost": cost,
            "currency": pc.utf8_upper(currency) if currency is not None else pa.nulls(n, pa.string()),
            "currency_conversion_rate": pa.array(np.ones(n), pa.float64()),
            "usage": usage,
            "credits": _empty_lists(n, EXPORT_SCHEMA.field("credits").type),
            "invoice": invoice,
            "cost_type": cost_type,
            "adjustment_info": adjustment,
            "cost_at_list": list_cost,
            "transaction_type": pa.nulls(n, pa.string()),
            "seller_name": _or_nulls(_coalesce(col["PublisherName"], provider), n),
        }
        return pa.Table.from_arrays([columns[f.name] for f in EXPORT_SCHEMA], schema=EXPORT_SCHEMA), rows

    def _extras(self, col: dict[str, pa.Array | None], n: int) -> pa.Array:
        """system_labels: one {key: 'focus/<Column>', value} per present, non-null extra column, in column order."""
        names = [name for name in FOCUS_EXTRAS if col.get(name) is not None]
        type_ = EXPORT_SCHEMA.field("system_labels").type
        if not names:
            return _empty_lists(n, type_)
        k = len(names)
        values = pa.concat_arrays([col[name] for name in names])  # column-major: value of (row i, col j) at j*n+i
        order = (np.arange(k)[None, :] * n + np.arange(n)[:, None]).ravel()  # row-major
        values = values.take(pa.array(order))
        keys = pa.array([f"focus/{name}" for name in names], pa.string()).take(pa.array(np.tile(np.arange(k), n)))
        valid = pc.is_valid(values)
        counts = valid.to_numpy(zero_copy_only=False).reshape(n, k).sum(axis=1)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        items = pa.StructArray.from_arrays([keys.filter(valid), values.filter(valid)],
                                           fields=list(type_.value_type))
        return pa.ListArray.from_arrays(pa.array(offsets), items, type=type_)


# ---------------------------------------------------------------------------------------------------------------
# Flattened export


class _ExportMapper:
    def __init__(self, header: list[str]):
        self.header = set(header)

    def __call__(self, chunk: pa.Table) -> tuple[pa.Table, _Rows]:
        n = chunk.num_rows
        rows = _Rows(n)
        fields, arrays = [], []
        for f in EXPORT_SCHEMA:
            if pa.types.is_struct(f.type):
                children = {}
                for child in f.type:
                    name = f"{f.name}.{child.name}"
                    if name in self.header:
                        children[child.name] = self._value(_text(chunk, name), name, child.type, rows)
                if children:
                    arr = _struct(children, f.type, n)
                elif f.name in self.header:  # the whole struct as a JSON object
                    arr = _json_column(_text(chunk, f.name), f.name, rows, _object_parser(f.type), f.type)
                else:
                    continue
            elif f.name in self.header:
                arr = self._value(_text(chunk, f.name), f.name, f.type, rows)
            else:
                continue
            fields.append(f)
            arrays.append(arr)
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields)), rows

    @staticmethod
    def _value(arr: pa.Array, name: str, type_: pa.DataType, rows: _Rows) -> pa.Array:
        if pa.types.is_string(type_):
            return arr
        if pa.types.is_floating(type_):
            return _number(arr, name, rows)
        if pa.types.is_timestamp(type_):
            return _timestamp(arr, name, rows)
        if pa.types.is_list(type_):
            parse = _credits if name == "credits" else _labels
            return _json_column(arr, name, rows, parse, type_, empty=[])
        raise AssertionError(f"no CSV conversion for {name}: {type_}")


def _object_parser(type_: pa.StructType) -> Callable[[Any], Any]:
    def parse(value: Any) -> dict:
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        out = {}
        for f in type_:
            v = value.get(f.name)
            if v is None:
                out[f.name] = None
            elif pa.types.is_list(f.type):
                out[f.name] = _labels(v)
            elif pa.types.is_floating(f.type):
                out[f.name] = float(v)
            else:
                out[f.name] = str(v)
        return out

    return parse
