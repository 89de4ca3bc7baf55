"""The billing event: one line item of the Cloud Billing export, with the export's names and nesting.

`BillingEvent` validates one record (JSON or Parquet row); `ARROW_SCHEMA` is the events table;
`event_id` is stable across re-deliveries of the same line item, which makes ingest idempotent.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# ISO 4217 codes a billing account can be invoiced in (a subset; unknown codes are quarantined).
CURRENCIES = frozenset(
    "USD EUR GBP JPY CHF CAD AUD NZD SEK NOK DKK PLN CZK HUF INR CNY HKD SGD KRW TWD BRL MXN ARS CLP COP PEN "
    "ZAR TRY ILS SAR AED IDR MYR THB PHP VND RUB UAH EGP NGN KES".split()
)
COST_TYPES = ("regular", "tax", "adjustment", "rounding_error")


def _utc(value: datetime) -> datetime:
    """Export timestamps are UTC: one without a zone is read as UTC (as Arrow's JSON and CSV readers do)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Label(_Part):
    key: str
    value: str | None = None


class Service(_Part):
    id: str = Field(min_length=1)
    description: str = Field(min_length=1)


class Sku(_Part):
    id: str = Field(min_length=1)
    description: str = Field(min_length=1)


class Project(_Part):
    id: str | None = None
    number: str | None = None
    name: str | None = None
    labels: list[Label] = []
    ancestry_numbers: str | None = None


class Location(_Part):
    location: str | None = None
    country: str | None = None
    region: str | None = None
    zone: str | None = None


class Resource(_Part):
    name: str | None = None
    global_name: str | None = None


class Usage(_Part):
    amount: float | None = None
    unit: str | None = None
    amount_in_pricing_units: float | None = None
    pricing_unit: str | None = None


class Credit(_Part):
    name: str | None = None
    amount: float = Field(le=0.0)
    full_name: str | None = None
    id: str | None = None
    type: str | None = None


class Invoice(_Part):
    month: str = Field(pattern=r"^\d{4}(0[1-9]|1[0-2])$")


class AdjustmentInfo(_Part):
    id: str | None = None
    description: str | None = None
    mode: str | None = None
    type: str | None = None


class BillingEvent(BaseModel):
    """One line item of the Cloud Billing export (standard or detailed usage cost)."""

    model_config = ConfigDict(extra="ignore", strict=False)

    billing_account_id: str = Field(min_length=1)
    service: Service
    sku: Sku
    usage_start_time: UtcDatetime
    usage_end_time: UtcDatetime
    project: Project | None = None
    labels: list[Label] = []
    system_labels: list[Label] = []
    location: Location | None = None
    resource: Resource | None = None
    export_time: UtcDatetime
    cost: float
    currency: str
    currency_conversion_rate: float = Field(gt=0.0)
    usage: Usage | None = None
    credits: list[Credit] = []
    invoice: Invoice
    cost_type: Literal["regular", "tax", "adjustment", "rounding_error"]
    adjustment_info: AdjustmentInfo | None = None
    cost_at_list: float | None = None
    transaction_type: str | None = None
    seller_name: str | None = None

    @field_validator("labels", "system_labels", "credits", mode="before")
    @classmethod
    def _null_list_is_empty(cls, value):
        return [] if value is None else value  # BigQuery returns NULL for an empty REPEATED field in some exports

    @model_validator(mode="after")
    def _consistent(self) -> "BillingEvent":
        if self.currency not in CURRENCIES:
            raise ValueError(f"unknown currency '{self.currency}'")
        if self.usage_end_time < self.usage_start_time:
            raise ValueError("usage_end_time is before usage_start_time")
        if self.cost_type == "regular" and self.usage and self.usage.amount is not None and self.usage.amount < 0:
            raise ValueError("negative usage.amount on a regular line item")
        return self


_LABELS = pa.list_(pa.struct([("key", pa.string()), ("value", pa.string())]))
_TS = pa.timestamp("us", tz="UTC")

ARROW_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("billing_account_id", pa.string()),
        ("service", pa.struct([("id", pa.string()), ("description", pa.string())])),
        ("sku", pa.struct([("id", pa.string()), ("description", pa.string())])),
        ("usage_start_time", _TS),
        ("usage_end_time", _TS),
        (
            "project",
            pa.struct(
                [
                    ("id", pa.string()),
                    ("number", pa.string()),
                    ("name", pa.string()),
                    ("labels", _LABELS),
                    ("ancestry_numbers", pa.string()),
                ]
            ),
        ),
        ("labels", _LABELS),
        ("system_labels", _LABELS),
        (
            "location",
            pa.struct([("location", pa.string()), ("country", pa.string()), ("region", pa.string()),
                       ("zone", pa.string())]),
        ),
        ("resource", pa.struct([("name", pa.string()), ("global_name", pa.string())])),
        ("export_time", _TS),
        ("cost", pa.float64()),
        ("currency", pa.string()),
        ("currency_conversion_rate", pa.float64()),
        (
            "usage",
            pa.struct(
                [
                    ("amount", pa.float64()),
                    ("unit", pa.string()),
                    ("amount_in_pricing_units", pa.float64()),
                    ("pricing_unit", pa.string()),
                ]
            ),
        ),
        (
            "credits",
            pa.list_(
                pa.struct(
                    [
                        ("name", pa.string()),
                        ("amount", pa.float64()),
                        ("full_name", pa.string()),
                        ("id", pa.string()),
                        ("type", pa.string()),
                    ]
                )
            ),
        ),
        ("invoice", pa.struct([("month", pa.string())])),
        ("cost_type", pa.string()),
        (
            "adjustment_info",
            pa.struct([("id", pa.string()), ("description", pa.string()), ("mode", pa.string()),
                       ("type", pa.string())]),
        ),
        ("cost_at_list", pa.float64()),
        ("transaction_type", pa.string()),
        ("seller_name", pa.string()),
    ]
)


# The export's own columns (what a source yields); the events table adds event_id in front.
EXPORT_SCHEMA = pa.schema([f for f in ARROW_SCHEMA if f.name != "event_id"])


def conform_array(array: pa.Array | pa.ChunkedArray, target: pa.DataType) -> pa.Array:
    """An array in an export type: struct fields matched by name (missing ones null, extra ones dropped), lists
    element-wise, scalars cast; raises an Arrow error when a value cannot be cast."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if array.type == target:
        return array
    if pa.types.is_null(array.type):
        return pa.nulls(len(array), target)
    if pa.types.is_struct(target) and pa.types.is_struct(array.type):
        names = {array.type.field(i).name for i in range(array.type.num_fields)}
        children = [conform_array(array.field(f.name), f.type) if f.name in names
                    else pa.nulls(len(array), f.type) for f in target]
        return pa.StructArray.from_arrays(children, fields=list(target), mask=array.is_null())
    if pa.types.is_list(target) and (pa.types.is_list(array.type) or pa.types.is_large_list(array.type)):
        values = conform_array(array.values, target.value_type)
        offsets = array.offsets.cast(pa.int32())
        return pa.ListArray.from_arrays(offsets, values, type=target, mask=array.is_null())
    return array.cast(target)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _ts_key(value: datetime) -> str:
    """Microseconds since the epoch: exact, and what DuckDB's epoch_us() and BigQuery's UNIX_MICROS() give."""
    return str((value - _EPOCH) // timedelta(microseconds=1))


def event_id(event: BillingEvent) -> str:
    """A stable id from the fields that identify a line item (never from floats, whose text form varies).

    A re-delivered line item gets the same id; a late correction (a later export_time) gets a new one.
    The MD5 of the parts joined by '|' (32 hex digits); `finops_ml.data.ingest.EVENT_ID_SQL` computes the same in SQL.
    """
    parts = [
        event.billing_account_id,
        event.service.id,
        event.sku.id,
        (event.project.id or "") if event.project else "",
        (event.resource.global_name or event.resource.name or "") if event.resource else "",
        (event.location.location or "") if event.location else "",
        _ts_key(event.usage_start_time),
        _ts_key(event.usage_end_time),
        event.cost_type,
        event.invoice.month,
        (event.adjustment_info.id or "") if event.adjustment_info else "",
        _ts_key(event.export_time),
    ]
    return hashlib.md5("|".join(parts).encode()).hexdigest()


def parse_event(record: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """Validate one raw record: (row for the events table, None) or (None, reason it was quarantined)."""
    if not isinstance(record, dict):
        return None, f"record is a {type(record).__name__}, not a JSON object"
    try:
        event = BillingEvent.model_validate(record)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "record"
        return None, f"{where}: {err['msg']}"
    row = event.model_dump()
    row["event_id"] = event_id(event)
    return row, None


def net_cost_usd(row: dict[str, Any]) -> float:
    """Net cost (cost + credits) in US dollars: the export's rate converts USD to the billing currency."""
    credits = sum(c["amount"] for c in row.get("credits") or [])
    return (row["cost"] + credits) / row["currency_conversion_rate"]
