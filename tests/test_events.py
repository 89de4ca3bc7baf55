"""The billing event schema: validation of good and bad records, the event id, net cost and the Arrow schema."""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa
import pytest
from pydantic import ValidationError

from finops_ml.data.events import ARROW_SCHEMA, BillingEvent, event_id, net_cost_usd, parse_event

pytestmark = pytest.mark.unit

# --- good records -------------------------------------------------------------------------------------------------


def test_good_record_validates_and_keeps_export_names(billing_record):
    event = BillingEvent.model_validate(billing_record())
    assert event.service.description == "Compute Engine"
    assert event.usage_start_time == datetime(2025, 9, 1, tzinfo=timezone.utc)
    assert event.credits[0].amount == -2.5
    assert event.invoice.month == "202509"


def test_parse_event_returns_row_with_event_id(billing_record):
    row, reason = parse_event(billing_record())
    assert reason is None
    assert row["event_id"] == event_id(BillingEvent.model_validate(billing_record()))
    assert len(row["event_id"]) == 32
    assert row["project"]["id"] == "acme-lyn-mes-prd"
    assert row["labels"][0] == {"key": "owner", "value": "c_dubois_at_acme-industrial_com"}


def test_minimal_record_with_only_required_fields(billing_record):
    full = billing_record()
    required = ["billing_account_id", "service", "sku", "usage_start_time", "usage_end_time", "export_time", "cost",
                "currency", "currency_conversion_rate", "invoice", "cost_type"]
    row, reason = parse_event({k: full[k] for k in required})
    assert reason is None
    assert row["project"] is None and row["labels"] == [] and row["credits"] == []


def test_unknown_fields_are_ignored(billing_record):
    row, reason = parse_event(billing_record(price={"effective_price": 1.0}, tags=[{"key": "x"}]))
    assert reason is None
    assert "price" not in row and "tags" not in row


def test_timestamps_with_offset_are_converted_to_utc(billing_record):
    event = BillingEvent.model_validate(
        billing_record(usage_start_time="2025-09-01T02:00:00+02:00", usage_end_time="2025-09-02T02:00:00+02:00"))
    assert event.usage_start_time == datetime(2025, 9, 1, 0, 0, tzinfo=timezone.utc)
    assert event.usage_start_time.utcoffset().total_seconds() == 0


@pytest.mark.parametrize("cost_type", ["regular", "tax", "adjustment", "rounding_error"])
def test_all_cost_types_accepted(billing_record, cost_type):
    _, reason = parse_event(billing_record(cost_type=cost_type))
    assert reason is None


def test_negative_usage_allowed_on_adjustment(billing_record):
    record = billing_record(cost_type="adjustment", cost=-30.0,
                            usage={"amount": -10.0, "unit": "seconds", "amount_in_pricing_units": None,
                                   "pricing_unit": None})
    _, reason = parse_event(record)
    assert reason is None


def test_negative_cost_allowed_on_regular_row(billing_record):
    # Costs can be negative (refunds); only usage and credits have sign rules.
    _, reason = parse_event(billing_record(cost=-1.25))
    assert reason is None


# --- bad records --------------------------------------------------------------------------------------------------


def _invalid(record) -> str:
    with pytest.raises(ValidationError):
        BillingEvent.model_validate(record)
    row, reason = parse_event(record)
    assert row is None
    assert isinstance(reason, str) and reason
    return reason


def test_unknown_currency(billing_record):
    reason = _invalid(billing_record(currency="XYZ"))
    assert "unknown currency 'XYZ'" in reason


def test_lowercase_currency_is_unknown(billing_record):
    assert "currency" in _invalid(billing_record(currency="usd"))


@pytest.mark.parametrize("field", ["billing_account_id", "service", "sku", "usage_start_time", "usage_end_time",
                                   "export_time", "cost", "currency", "invoice", "cost_type",
                                   "currency_conversion_rate"])
def test_missing_required_field(billing_record, field):
    record = billing_record()
    del record[field]
    reason = _invalid(record)
    assert reason.startswith(f"{field}:")
    assert "required" in reason.lower()


def test_missing_nested_required_field(billing_record):
    reason = _invalid(billing_record(sku={"id": "CP-COMPUTEENGINE-N2-CORE"}))
    assert reason.startswith("sku.description:")


def test_empty_billing_account(billing_record):
    assert _invalid(billing_record(billing_account_id="")).startswith("billing_account_id:")


@pytest.mark.parametrize(
    "field, value",
    [("cost", "twelve"), ("cost", {"amount": 1}), ("service", "Compute Engine"), ("usage_start_time", "yesterday"),
     ("credits", {"amount": -1.0}), ("labels", "owner=me"), ("currency_conversion_rate", None)],
)
def test_wrong_type(billing_record, field, value):
    reason = _invalid(billing_record(**{field: value}))
    assert reason.startswith(field)


def test_end_before_start(billing_record):
    reason = _invalid(billing_record(usage_start_time="2025-09-02T00:00:00Z", usage_end_time="2025-09-01T00:00:00Z"))
    assert "usage_end_time is before usage_start_time" in reason


def test_end_equal_to_start_is_fine(billing_record):
    _, reason = parse_event(billing_record(usage_end_time="2025-09-01T00:00:00Z"))
    assert reason is None


@pytest.mark.parametrize("field", ["usage_start_time", "usage_end_time", "export_time"])
def test_naive_timestamp_is_utc(billing_record, field):
    """Export timestamps are UTC; one written without a zone is read as UTC, as the Arrow readers do."""
    record = billing_record()
    zoned, _ = parse_event(record)
    record[field] = record[field].rstrip("Z")
    naive, reason = parse_event(record)
    assert reason is None and naive[field] == zoned[field] and naive[field].tzinfo == timezone.utc


def test_naive_datetime_object_is_utc(billing_record):
    row, reason = parse_event(billing_record(export_time=datetime(2025, 9, 2, 7)))
    assert reason is None and row["export_time"] == datetime(2025, 9, 2, 7, tzinfo=timezone.utc)


def test_null_lists_are_empty(billing_record):
    row, reason = parse_event(billing_record(credits=None, labels=None, system_labels=None))
    assert reason is None and row["credits"] == [] and row["labels"] == [] and row["system_labels"] == []


def test_credit_with_positive_amount(billing_record):
    record = billing_record(credits=[{"name": "Sustained usage discount", "amount": 2.5,
                                      "type": "SUSTAINED_USAGE_DISCOUNT"}])
    reason = _invalid(record)
    assert reason.startswith("credits.0.amount")


def test_credit_without_amount(billing_record):
    assert _invalid(billing_record(credits=[{"name": "Free tier"}])).startswith("credits.0.amount")


@pytest.mark.parametrize("month", ["202513", "202500", "2025-09", "20259", "2025091", "Sept", ""])
def test_bad_invoice_month(billing_record, month):
    reason = _invalid(billing_record(invoice={"month": month}))
    assert reason.startswith("invoice.month")


def test_negative_usage_on_regular_row(billing_record):
    record = billing_record(usage={"amount": -5.0, "unit": "seconds", "amount_in_pricing_units": -0.001,
                                   "pricing_unit": "hour"})
    reason = _invalid(record)
    assert "negative usage.amount on a regular line item" in reason


def test_unknown_cost_type(billing_record):
    assert _invalid(billing_record(cost_type="discount")).startswith("cost_type")


@pytest.mark.parametrize("rate", [0.0, -1.0])
def test_non_positive_conversion_rate(billing_record, rate):
    assert _invalid(billing_record(currency_conversion_rate=rate)).startswith("currency_conversion_rate")


@pytest.mark.parametrize("record", [["not", "an", "object"], "a string", 42, None])
def test_parse_event_rejects_non_objects(record):
    row, reason = parse_event(record)
    assert row is None
    assert "not a JSON object" in reason


# --- event id -----------------------------------------------------------------------------------------------------


def _id(record) -> str:
    row, reason = parse_event(record)
    assert reason is None, reason
    return row["event_id"]


def test_event_id_stable_across_redelivery(billing_record):
    first = billing_record()
    # The same line item delivered again: keys reordered, floats written differently, unknown extra fields.
    again = dict(reversed(list(billing_record(cost=12.500000, currency_conversion_rate=1, cost_at_list=14,
                                              ingest_note="redelivered").items())))
    assert _id(first) == _id(again)
    assert _id(first) == _id(billing_record())


def test_event_id_independent_of_timestamp_notation(billing_record):
    utc = billing_record()
    offset = billing_record(usage_start_time="2025-09-01T02:00:00+02:00", usage_end_time="2025-09-01T19:00:00-05:00",
                            export_time="2025-09-02T07:00:00.000000+00:00")
    assert _id(utc) == _id(offset)


def test_event_id_does_not_depend_on_amounts(billing_record):
    # A re-delivery can carry slightly different float text; the id is built from identifying fields only.
    assert _id(billing_record(cost=12.5)) == _id(billing_record(cost=12.500000001))


def test_event_id_differs_when_export_time_differs(billing_record):
    assert _id(billing_record()) != _id(billing_record(export_time="2025-09-03T07:00:00Z"))
    assert _id(billing_record()) != _id(billing_record(export_time="2025-09-02T07:00:00.000001Z"))


@pytest.mark.parametrize(
    "override",
    [
        {"sku": {"id": "CP-COMPUTEENGINE-N2-RAM", "description": "N2 Instance Ram running"}},
        {"service": {"id": "CCD8-9BF1-090E", "description": "Kubernetes Engine"}},
        {"usage_start_time": "2025-09-01T01:00:00Z"},
        {"usage_end_time": "2025-09-01T23:00:00Z"},
        {"resource": {"name": "lyon-mes-vm-02", "global_name": None}},
        {"project": {"id": "acme-lyn-historian-prd"}},
        {"location": {"location": "europe-west1"}},
        {"cost_type": "tax"},
        {"invoice": {"month": "202510"}},
        {"billing_account_id": "OTHER-ACCOUNT"},
        {"adjustment_info": {"id": "adj-001"}},
    ],
)
def test_event_id_differs_for_different_line_items(billing_record, override):
    assert _id(billing_record()) != _id(billing_record(**override))


def test_event_id_without_optional_parts(billing_record):
    a = _id(billing_record(project=None, resource=None, location=None))
    b = _id(billing_record(project=None, resource=None, location=None))
    assert a == b
    assert a != _id(billing_record())


# --- net cost and the Arrow schema ------------------------------------------------------------------------------


def test_net_cost_usd(billing_record):
    row, _ = parse_event(billing_record())
    assert net_cost_usd(row) == pytest.approx(10.0)
    row, _ = parse_event(billing_record(credits=[{"amount": -1.0}, {"amount": -0.5}]))
    assert net_cost_usd(row) == pytest.approx(11.0)
    row, _ = parse_event(billing_record(credits=[]))
    assert net_cost_usd(row) == pytest.approx(12.5)


def test_net_cost_usd_converts_billing_currency(billing_record):
    # The rate converts USD into the billing currency: 20 EUR net at 0.8 EUR/USD is 25 USD.
    row, _ = parse_event(billing_record(currency="EUR", currency_conversion_rate=0.8, cost=22.0,
                                        credits=[{"amount": -2.0}]))
    assert net_cost_usd(row) == pytest.approx(25.0)


def test_arrow_schema_matches_event_fields():
    assert ARROW_SCHEMA.names == ["event_id", *BillingEvent.model_fields]
    assert ARROW_SCHEMA.field("usage_start_time").type == pa.timestamp("us", tz="UTC")


def test_parsed_rows_fit_the_arrow_schema(billing_record):
    rows = [parse_event(billing_record())[0],
            parse_event(billing_record(project=None, resource=None, location=None, usage=None, credits=[]))[0]]
    table = pa.Table.from_pylist(rows, schema=ARROW_SCHEMA)
    back = table.to_pylist()
    assert back[0]["event_id"] == rows[0]["event_id"]
    assert back[0]["credits"][0]["amount"] == -2.5
    assert back[0]["usage_start_time"] == datetime(2025, 9, 1, tzinfo=timezone.utc)
    assert back[1]["project"] is None
    # A row read back from the events table parses to the same event id (ingest is re-runnable on its output).
    assert parse_event(back[0])[0]["event_id"] == rows[0]["event_id"]
