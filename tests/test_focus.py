"""The CSV reader: FOCUS 1.0-1.2 files and flattened Cloud Billing export CSVs (finops_ml.data.sources.csv_files).

The FOCUS sample under ../shared/data/focus-1.0-sample is FinOps Foundation data (FOCUS-Sample-Data,
FOCUS-1.0/focus_sample.csv, first 1,000 rows), licensed CC BY 4.0; see its SOURCE.md.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from finops_ml.config import GeneratorConfig
from finops_ml.data.events import EXPORT_SCHEMA, parse_event
from finops_ml.data.sources.csv_files import read_csv_events
from finops_ml.errors import FinopsError
from finops_ml.synthetic.generator import generate

pytestmark = pytest.mark.unit

# shared/ lies beside the repository (as in CI)
SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "focus-1.0-sample" / "focus_sample_1000.csv"
needs_sample = pytest.mark.skipif(not SAMPLE.exists(), reason="FOCUS sample data not present")


def _read(path: Path, **kw) -> tuple[pa.Table, list, list]:
    """All batches of a file: (rows in EXPORT_SCHEMA, rejected, locations of the rows)."""
    batches = list(read_csv_events(path, **kw))
    tables, rejected, locations = [], [], []
    for b in batches:
        assert b.source == str(path)
        names = b.table.column_names
        # every table casts cleanly to (a subset of) the export schema
        tables.append(b.table.cast(pa.schema([EXPORT_SCHEMA.field(n) for n in names])))
        rejected += b.rejected
        locations += [int(b.location(i)) for i in range(b.table.num_rows)]
    table = pa.concat_tables(tables, promote_options="default") if tables else EXPORT_SCHEMA.empty_table()
    return table, rejected, locations


def _write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    lines = [",".join(header)] + [",".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------------------------------------- sample


@pytest.fixture(scope="module")
def sample():
    raw = pd.read_csv(SAMPLE, dtype=str, keep_default_na=False)
    table, rejected, locations = _read(SAMPLE, batch_rows=256)
    return raw, table, rejected, locations


@needs_sample
def test_sample_every_row_accounted_and_billed_cost_reconciles(sample):
    raw, table, rejected, locations = sample
    assert len(raw) == 1000
    assert table.num_rows + len(rejected) == 1000
    # locations are data row numbers; rows and rejects together cover every row exactly once
    assert sorted(locations + [int(r.location) for r in rejected]) == list(range(1, 1001))

    file_total = sum(Decimal(v) for v in raw.BilledCost)  # computed independently of the reader
    read_total = Decimal(repr(pc.sum(table.column("cost")).as_py())) + sum(
        (Decimal(r.record["BilledCost"]) for r in rejected), Decimal(0))
    assert read_total.quantize(Decimal("0.01")) == file_total.quantize(Decimal("0.01"))
    assert abs(read_total - file_total) < Decimal("1e-9")

    # row by row: the cost of row n is the BilledCost on line n+1
    by_row = dict(zip(locations, table.column("cost").to_pylist()))
    for n in (1, 457, 1000):
        if n in by_row:
            assert by_row[n] == pytest.approx(float(raw.BilledCost[n - 1]), abs=1e-12)


@needs_sample
def test_sample_fields_mapped(sample):
    raw, table, rejected, locations = sample
    rows = table.to_pylist()
    first = dict(zip(locations, rows))[1]
    assert first["service"] == {"id": "aws/amazon-simple-queue-service", "description": "Amazon Simple Queue Service"}
    assert first["sku"]["id"] == "G95FST5FTYV3JSRX"
    assert first["location"]["location"] == first["location"]["region"] == "us-west-2"
    assert first["project"]["id"] == "51738928782" and first["project"]["name"] == "Atlas Nimbus"
    assert first["billing_account_id"] == "1234567890123"
    assert first["usage_start_time"] == datetime(2024, 9, 18, 22, tzinfo=timezone.utc)
    assert first["usage_end_time"] == first["export_time"] == datetime(2024, 9, 18, 23, tzinfo=timezone.utc)
    assert first["invoice"] == {"month": "202409"}
    assert first["usage"]["amount"] == 2.0 and first["usage"]["unit"] == "Requests"
    assert first["currency"] == "USD" and first["currency_conversion_rate"] == 1.0 and first["credits"] == []
    assert first["resource"]["global_name"].startswith("arn:ats:sqs:")

    # timestamps are UTC
    for name in ("usage_start_time", "usage_end_time", "export_time"):
        assert table.schema.field(name).type == pa.timestamp("us", tz="UTC")
        assert table.column(name).null_count == 0

    # every provider's services are mapped, with stable slug ids
    services = {r["service"]["description"]: r["service"]["id"] for r in rows}
    assert services["COMPUTE"] == "oracle/compute"
    assert services["Storage Accounts"] == "microsoft/storage-accounts"
    assert set(raw.ServiceName) == set(services)
    # regions: RegionId, or RegionName where RegionId is NULL (Oracle)
    regions = {r["location"]["location"] for r in rows if r["location"]}
    assert {"us-west-2", "us-sanjose-1"} <= regions
    assert any(r["location"]["zone"] == "fjrQ:US-SANJOSE-1-AD-1" for r in rows if r["location"])

    # Tags -> labels, NULL tags -> []
    tagged = [r for r, t in zip(rows, raw.Tags[[n - 1 for n in locations]]) if t != "NULL"]
    assert len(tagged) == (raw.Tags != "NULL").sum()
    assert all(r["labels"] for r in tagged)
    assert sum(1 for r in rows if r["labels"] == []) == (raw.Tags == "NULL").sum()
    keys = {lab["key"] for r in rows for lab in r["labels"]}
    assert {"application", "environment", "business_unit", "CostCenter"} <= keys

    # ChargeCategory -> cost_type; the credit is an adjustment with negative cost, and so are the 12 Azure usage
    # rows with a negative quantity (corrections of earlier usage)
    counts = pd.Series([r["cost_type"] for r in rows]).value_counts().to_dict()
    assert counts == {"regular": 985, "adjustment": 15}
    corrections = [r for r in rows if r["usage"]["amount"] is not None and r["usage"]["amount"] < 0]
    assert len(corrections) == 12 and all(r["cost_type"] == "adjustment" and r["cost"] <= 0 for r in corrections)
    credit = next(r for r in rows if r["adjustment_info"] and r["adjustment_info"]["type"] == "Credit")
    assert credit["cost"] < 0 and credit["cost_type"] == "adjustment"
    # EffectiveCost and ServiceCategory have no export field: kept in system_labels
    sys_keys = {lab["key"] for lab in first["system_labels"]}
    assert {"focus/EffectiveCost", "focus/ServiceCategory"} <= sys_keys
    assert first["cost_at_list"] == pytest.approx(8e-07)

    # every mapped row is a valid billing event (negative-quantity usage rows became adjustments)
    reasons = {parse_event(r)[1] for r in rows} - {None}
    assert reasons == set()


# --------------------------------------------------------------------------------------------------- FOCUS 1.2

FOCUS_12_HEADER = [
    "BilledCost", "BillingAccountId", "BillingAccountName", "BillingAccountType", "BillingCurrency",
    "BillingPeriodEnd", "BillingPeriodStart", "ChargeCategory", "ChargeClass", "ChargeDescription",
    "ChargeFrequency", "ChargePeriodEnd", "ChargePeriodStart", "ConsumedQuantity", "ConsumedUnit",
    "EffectiveCost", "InvoiceId", "InvoiceIssuerName", "ListCost", "PricingCurrency", "PricingQuantity",
    "PricingUnit", "ProviderName", "PublisherName", "RegionId", "RegionName", "AvailabilityZone", "ResourceId",
    "ResourceName", "ServiceCategory", "ServiceName", "ServiceSubcategory", "SkuId", "SkuPriceId", "SkuMeter",
    "SubAccountId", "SubAccountName", "SubAccountType", "Tags", "x_CustomColumn",
]
FOCUS_12_ROWS = [
    # usage in EUR, ISO 8601 with Z, tags with a number value
    ["12.5", "acct-1", "Main", "Billing Profile", "EUR", "2025-04-01T00:00:00Z", "2025-03-01T00:00:00Z", "Usage",
     "", "VM hours", "Usage-Based", "2025-03-02T00:00:00Z", "2025-03-01T00:00:00Z", "24", "Hours", "11.0",
     "INV-7", "Google Cloud EMEA", "15.0", "EUR", "24", "Hours", "Google Cloud", "Google Cloud",
     "europe-west1", "Belgium", "europe-west1-b", "//compute.googleapis.com/vm-1", "vm-1", "Compute",
     "Compute Engine", "Virtual Machines", "6F81-5844-456A", "6F81-5844-456A/p1", "vCPU", "proj-a", "Project A",
     "Project", '"{""env"": ""prod"", ""cost-center"": 42}"', "ignored"],
    # tax: no SKU, no resource, a time with an offset (converted to UTC)
    ["2.10", "acct-1", "Main", "", "EUR", "2025-04-01T00:00:00Z", "2025-03-01T00:00:00Z", "Tax", "",
     "VAT", "Recurring", "2025-04-01T00:00:00+01:00", "2025-03-01T00:00:00+01:00", "", "", "2.10", "INV-7",
     "Google Cloud EMEA", "2.10", "EUR", "", "", "Google Cloud", "Google Cloud", "", "", "", "", "",
     "Other", "Tax", "", "", "", "", "proj-a", "Project A", "", "", ""],
    # credit: negative cost
    ["-3.00", "acct-1", "Main", "", "EUR", "2025-04-01T00:00:00Z", "2025-03-01T00:00:00Z", "Credit", "",
     "Free tier", "One-Time", "2025-03-02T00:00:00Z", "2025-03-01T00:00:00Z", "", "", "-3.00", "INV-7",
     "Google Cloud EMEA", "-3.00", "EUR", "", "", "Google Cloud", "Google Cloud", "europe-west1", "Belgium", "",
     "", "", "Compute", "Compute Engine", "", "6F81-5844-456A", "", "", "proj-a", "Project A", "", "{}", ""],
    # purchase, lower-case currency and category
    ["100", "acct-1", "Main", "", "eur", "2025-04-01T00:00:00Z", "2025-03-01T00:00:00Z", "purchase", "",
     "Commitment 1y", "One-Time", "2025-04-01T00:00:00Z", "2025-03-01T00:00:00Z", "", "", "0", "INV-7",
     "Google Cloud EMEA", "100", "EUR", "1", "Commitment", "Google Cloud", "Google Cloud", "", "", "", "", "",
     "Compute", "Compute Engine", "", "CUD-1", "", "", "proj-a", "Project A", "", "", ""],
]


def test_focus_12_handwritten(tmp_path):
    path = _write(tmp_path / "focus12.csv", FOCUS_12_HEADER, FOCUS_12_ROWS)
    table, rejected, locations = _read(path)
    assert rejected == [] and locations == [1, 2, 3, 4]
    usage, tax, credit, purchase = table.to_pylist()

    assert usage["service"] == {"id": "google-cloud/compute-engine", "description": "Compute Engine"}
    assert usage["sku"] == {"id": "6F81-5844-456A", "description": "VM hours"}
    assert usage["labels"] == [{"key": "env", "value": "prod"}, {"key": "cost-center", "value": "42"}]
    assert usage["location"] == {"location": "europe-west1", "country": None, "region": "europe-west1",
                                 "zone": "europe-west1-b"}
    assert usage["resource"] == {"name": "vm-1", "global_name": "//compute.googleapis.com/vm-1"}
    assert usage["project"]["id"] == "proj-a"
    assert usage["usage"] == {"amount": 24.0, "unit": "Hours", "amount_in_pricing_units": 24.0,
                              "pricing_unit": "Hours"}
    assert (usage["cost"], usage["cost_at_list"], usage["currency"]) == (12.5, 15.0, "EUR")
    assert usage["invoice"] == {"month": "202503"} and usage["cost_type"] == "regular"
    assert usage["seller_name"] == "Google Cloud" and usage["transaction_type"] is None
    sys_labels = {lab["key"]: lab["value"] for lab in usage["system_labels"]}
    assert sys_labels["focus/InvoiceId"] == "INV-7" and sys_labels["focus/EffectiveCost"] == "11.0"
    assert sys_labels["focus/ServiceSubcategory"] == "Virtual Machines"
    assert not any("Custom" in k for k in sys_labels)  # unknown extra columns are ignored

    assert tax["cost_type"] == "tax" and tax["sku"] == {"id": "focus-tax", "description": "VAT"}
    assert tax["usage_start_time"] == datetime(2025, 2, 28, 23, tzinfo=timezone.utc)
    assert tax["resource"] is None and tax["location"] is None and tax["labels"] == []
    assert credit["cost_type"] == "adjustment" and credit["cost"] == -3.0 and credit["credits"] == []
    assert credit["adjustment_info"]["type"] == "Credit" and credit["labels"] == []
    assert purchase["cost_type"] == "regular" and purchase["currency"] == "EUR"
    assert purchase["adjustment_info"] is None

    for row in (usage, tax, credit, purchase):
        assert parse_event(row)[1] is None


def test_focus_malformed_rows_are_rejected_with_a_reason(tmp_path):
    header = ["BilledCost", "BillingAccountId", "BillingCurrency", "BillingPeriodStart", "ChargeCategory",
              "ChargePeriodStart", "ChargePeriodEnd", "ServiceName", "SkuId", "ChargeDescription", "Tags"]
    good = ["1.25", "a", "USD", "2024-09-01", "Usage", "2024-09-01 00:00:00", "2024-09-01 01:00:00", "S", "k", "d", ""]
    rows = [
        good,
        ["1.00", "a", "USD", "2024-09-01", "Usage", "yesterday", "2024-09-01 01:00:00", "S", "k", "d", ""],
        ["abc", "a", "USD", "2024-09-01", "Usage", "2024-09-01 00:00:00", "2024-09-01 01:00:00", "S", "k", "d", ""],
        good,
        ["NULL", "a", "USD", "2024-09-01", "Usage", "2024-09-01 00:00:00", "2024-09-01 01:00:00", "S", "k", "d", ""],
        ["2.00", "a", "USD", "2024-09-01", "Refund", "2024-09-01 00:00:00", "2024-09-01 01:00:00", "S", "k", "d", ""],
        ["3.00", "a", "USD", "2024-09-01", "Usage", "2024-09-01 00:00:00", "2024-09-01 01:00:00", "S", "k", "d",
         '"[1, 2]"'],
        ["4.00", "a", "USD", "2024-09-01", "Usage", "2024-09-01 00:00:00"],  # too few fields
        ["5.00", "a", "XYZ", "2024-09-01", "Usage", "2024-09-01 00:00:00", "2024-09-01 01:00:00", "S", "k", "d", ""],
    ]
    path = _write(tmp_path / "bad.csv", header, rows)
    table, rejected, locations = _read(path, batch_rows=3)
    assert table.num_rows + len(rejected) == len(rows)
    # the unknown currency maps: it is left to ingest's validation
    assert table.column("currency").to_pylist() == ["USD", "USD", "XYZ"]
    reasons = {r.location: r.reason for r in rejected}
    assert reasons["2"] == "ChargePeriodStart: 'yesterday' is not an ISO 8601 date and time."
    assert reasons["3"] == "BilledCost: 'abc' is not a number."
    assert reasons["5"] == "BilledCost: the value is empty."
    assert reasons["6"].startswith("ChargeCategory: 'Refund' is not one of")
    assert reasons["7"] == "Tags: not a JSON object of tag names and values."
    assert reasons["8"] == "row: it has 6 fields where the header has 11."
    assert next(r for r in rejected if r.location == "3").record["BilledCost"] == "abc"  # the raw row
    assert all(r.reason.endswith(".") for r in rejected)
    # rows after a rejected one keep their own row numbers, also after the malformed record
    assert locations == [1, 4, 9]
    rejected_cost = sum(Decimal(r.record["BilledCost"]) for r in rejected if "BilledCost" in r.record
                        and r.record["BilledCost"] not in ("abc", "NULL"))
    assert rejected_cost == Decimal("6.00")


def test_unknown_csv_header_is_an_error(tmp_path):
    path = _write(tmp_path / "other.csv", ["date", "amount", "account"], [["2024-01-01", "3", "x"]])
    with pytest.raises(FinopsError, match=r"other\.csv.*BilledCost and ChargePeriodStart.*cost, usage_start_time"):
        list(read_csv_events(path))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(FinopsError, match="empty"):
        list(read_csv_events(empty))


# ------------------------------------------------------------------------------------------- flattened export


def _flatten_to_csv(table: pa.Table, path: Path) -> None:
    """Export rows -> CSV with dotted column names; list columns as JSON arrays."""
    flat = table.flatten()
    columns = {}
    for name in flat.column_names:
        col = flat.column(name)
        if pa.types.is_list(col.type):
            col = pa.array([json.dumps(v) for v in col.to_pylist()], pa.string())
        columns[name] = col
    pacsv.write_csv(pa.table(columns), path)


def test_flattened_export_round_trip(tmp_path):
    generate(GeneratorConfig(plants=1, resources_per_project=2, months=6), 1, tmp_path / "gen", fmt="parquet")
    original = pq.read_table(tmp_path / "gen" / "events.parquet")
    # a few rows of every kind: with and without credits and labels, billing rows (tax, adjustment, rounding)
    has_credit = pc.greater(pc.list_value_length(original.column("credits")), 0)
    pick = pa.concat_tables([original.filter(has_credit).slice(0, 20),
                             original.filter(pc.invert(has_credit)).slice(0, 20),
                             original.filter(pc.not_equal(original.column("cost_type"), "regular"))])
    path = tmp_path / "export.csv"
    _flatten_to_csv(pick, path)
    assert "service.description" in path.read_text().splitlines()[0]

    table, rejected, locations = _read(path, batch_rows=16)
    assert rejected == [] and table.num_rows == pick.num_rows and locations == list(range(1, pick.num_rows + 1))
    back, want = table.to_pylist(), pick.to_pylist()

    def net(row):
        return row["cost"] + sum(c["amount"] for c in row["credits"])

    assert sum(net(r) for r in back) == pytest.approx(sum(net(r) for r in want), abs=1e-9)
    for b, w in zip(back, want):
        assert net(b) == pytest.approx(net(w), abs=1e-12)
        for name in ("labels", "system_labels", "credits", "service", "sku", "invoice", "cost_type",
                     "usage_start_time", "usage_end_time", "export_time", "billing_account_id", "usage"):
            assert b[name] == w[name], name
        if w["project"] and w["project"]["id"]:
            assert b["project"] == w["project"]
        assert parse_event(b)[1] is None


def test_focus_preview_names_bom_and_multiline_values(tmp_path):
    """1.0-preview column names (ChargeType, UsageQuantity, AmortizedCost), a UTF-8 BOM and a quoted value that spans
    lines: record numbers stay record numbers."""
    path = tmp_path / "preview.csv"
    path.write_text(
        "\ufeffBilledCost,BillingCurrency,ChargeType,ChargePeriodStart,ChargePeriodEnd,ChargeDescription,"
        "UsageQuantity,UsageUnit,AmortizedCost,ServiceName,Tags\n"
        '1.5,USD,Usage,2024-01-01T00:00:00Z,2024-01-02T00:00:00Z,"two\nlines",3,GB,1.4,S3,"{bad"\n'
        "2.5,USD,Usage,2024-01-01T00:00:00Z,2024-01-02T00:00:00Z,one line,4,GB,2.4,S3,\n",
        encoding="utf-8")
    table, rejected, locations = _read(path)
    assert [r.location for r in rejected] == ["1"] and rejected[0].reason.startswith("Tags: invalid JSON")
    assert locations == [2]
    row = table.to_pylist()[0]
    assert row["cost_type"] == "regular" and row["usage"]["amount"] == 4.0 and row["usage"]["unit"] == "GB"
    assert {"key": "focus/EffectiveCost", "value": "2.4"} in row["system_labels"]
    assert row["invoice"] is None  # no BillingPeriodStart: left to ingest, which rejects the row


def test_sample_ingests_every_row_and_reconciles_billed_cost(tmp_path):
    """The issue's bar: ingested + quarantined = 1,000 and BilledCost reconciled to the cent through ingest."""
    from finops_ml.data.ingest import ingest

    raw = pd.read_csv(SAMPLE)
    summary = ingest(str(SAMPLE), tmp_path / "out")
    assert summary["read"] == 1000
    assert summary["rows"] + summary["quarantined"] + summary["duplicates"] == 1000
    assert summary["quarantined"] == 0 and summary["duplicates"] == 0
    billed = sum(Decimal(str(v)) for v in raw.BilledCost)
    assert round(summary["total_net_cost"], 2) == float(round(billed, 2))


# --------------------------------------------------------------------------------------------------------- Parquet


@needs_sample
@pytest.mark.parametrize("tags", ["json-text", "map"])
def test_focus_columns_in_a_parquet_file_are_read_as_focus(sample, tags, tmp_path):
    """A FOCUS export in Parquet (typed columns: timestamps, doubles, Tags as text or as a map) gives the rows the
    same file gives as CSV, none quarantined."""
    from finops_ml.data.sources import read_events

    _, from_csv, rejected_csv, _ = sample
    typed = pacsv.read_csv(SAMPLE)  # Arrow infers timestamps and numbers, as a Parquet export holds them
    assert pa.types.is_timestamp(typed.schema.field("ChargePeriodStart").type)
    if tags == "map":
        tags_text = typed.column("Tags").to_pylist()
        as_map = [None if t in (None, "NULL") else list(json.loads(t).items()) for t in tags_text]
        typed = typed.set_column(typed.schema.get_field_index("Tags"), "Tags",
                                 pa.array(as_map, pa.map_(pa.string(), pa.string())))
    path = tmp_path / "focus.parquet"
    pq.write_table(typed, path, row_group_size=300)

    batches = list(read_events(str(path)))
    rejected = [r for b in batches for r in b.rejected]
    table = pa.concat_tables(b.table for b in batches)
    assert len(rejected) == len(rejected_csv) and table.num_rows == from_csv.num_rows
    for name in from_csv.column_names:
        if name != "system_labels":  # FOCUS extras as text: 0.5 in the file, 0.50000000000 in the CSV
            assert table.column(name).equals(from_csv.column(name)), name
