"""Ingest: batches from a source, vectorised validation (quarantine with reasons), event ids in SQL, dedupe and
merge with the existing table, reconciliation to control totals, atomic outputs."""

from __future__ import annotations

import json
import math
import shutil
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import finops_ml.data.ingest as ingest_mod
import finops_ml.data.sources.files as files_mod
from finops_ml.data.events import ARROW_SCHEMA, EXPORT_SCHEMA, BillingEvent, event_id, net_cost_usd, parse_event
from finops_ml.data.ingest import ingest
from finops_ml.errors import FinopsError
from finops_ml.synthetic.generator import generate

pytestmark = pytest.mark.unit

OUTPUTS = ("events.parquet", "quarantine.jsonl", "ingest_summary.json")
SUMMARY_KEYS = {"ingest_id", "source", "read", "rows", "quarantined", "duplicates", "table_rows", "quarantine_reasons",
                "cost_by_invoice_month", "total_net_cost", "reconciliation", "reconciliation_diff", "seconds",
                "events", "quarantine"}
TIMESTAMPS = ("usage_start_time", "usage_end_time", "export_time")


def _ids(out: Path) -> list[str]:
    """The events table's ids, sorted (the table's row order is not part of the contract)."""
    return sorted(pq.read_table(out / "events.parquet", columns=["event_id"]).column("event_id").to_pylist())


def _rows_by_id(out: Path) -> dict[str, dict]:
    return {r["event_id"]: r for r in pq.read_table(out / "events.parquet").to_pylist()}


def _quarantine(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]


def _py_id(record: dict) -> str:
    """The event id the Python model gives a record (what ingest's SQL must reproduce). Null lists (a Parquet
    file without a labels or credits column gives them) are read as empty: they take no part in the id."""
    return event_id(BillingEvent.model_validate(_empty_lists(record)))


def _empty_lists(record: dict) -> dict:
    record = {k: ([] if v is None and k in ("labels", "system_labels", "credits") else v) for k, v in record.items()}
    if isinstance(record.get("project"), dict) and record["project"].get("labels", []) is None:
        record["project"] = dict(record["project"], labels=[])
    return record


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _row(record: dict) -> dict:
    """A raw JSON-shaped record as a row for a Parquet file in EXPORT_SCHEMA (timestamps as datetimes)."""
    return {k: (_ts(v) if k in TIMESTAMPS and isinstance(v, str) else v) for k, v in record.items()}


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _assert_balanced(summary: dict) -> None:
    assert summary["read"] == summary["rows"] + summary["quarantined"] + summary["duplicates"]
    assert sum(summary["quarantine_reasons"].values()) == summary["quarantined"]


@pytest.fixture(params=[None, 1], ids=["one-chunk", "line-by-line-chunks"])
def json_batch(request, monkeypatch):
    """Run a test with the whole file in one JSON chunk (a bad line sends the chunk to the pydantic fallback), and
    with one line per chunk (clean lines go through Arrow and the SQL validation)."""
    if request.param is not None:
        monkeypatch.setattr(files_mod, "JSON_BATCH_LINES", request.param)
    return request.param


@pytest.fixture
def mixed_jsonl(tmp_path, billing_record) -> tuple[Path, dict]:
    """A JSONL file of good records, bad records of several kinds, duplicates and a blank line."""
    good = [billing_record(usage_start_time=f"2025-09-{d:02d}T00:00:00Z",
                           usage_end_time=f"2025-09-{d + 1:02d}T00:00:00Z", cost=10.0 + d, credits=[{"amount": -1.0}])
            for d in range(1, 6)]
    good.append(billing_record(cost_type="tax", cost=3.25, credits=[], invoice={"month": "202510"}))
    missing = billing_record()
    del missing["sku"]
    lines = [json.dumps(r) for r in good]
    bad = {
        len(lines) + 1: ("{\"billing_account_id\": \"01A2B3\", \"cost\": ", "invalid JSON"),
        len(lines) + 2: (json.dumps(missing), "sku: "),
        len(lines) + 3: (json.dumps(billing_record(cost="twelve")), "cost: "),
        len(lines) + 4: (json.dumps(billing_record(currency="XYZ", usage_start_time="2025-09-20T00:00:00Z",
                                                   usage_end_time="2025-09-21T00:00:00Z")), "unknown currency 'XYZ'"),
        len(lines) + 5: (json.dumps([1, 2, 3]), "not a JSON object"),
    }
    lines += [text for text, _ in bad.values()]
    lines.append("")  # blank lines are skipped, not counted
    # Duplicates: the same line again, and a re-delivery with keys reordered and an extra field.
    lines.append(json.dumps(good[0]))
    lines.append(json.dumps(dict(reversed(list({**good[1], "redelivery": True}.items())))))
    lines.append(json.dumps(good[0]))
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    expected = {"good": good, "bad": bad, "non_blank": sum(1 for line in lines if line.strip()), "duplicates": 3}
    return path, expected


# --- a mixed file ---------------------------------------------------------------------------------------------------


def test_mixed_file_counts(mixed_jsonl, json_batch, tmp_path):
    path, exp = mixed_jsonl
    out = tmp_path / "out"
    summary = ingest(str(path), out)
    assert set(summary) == SUMMARY_KEYS
    assert summary["source"] == str(path)
    assert summary["rows"] == summary["table_rows"] == len(exp["good"]) == 6
    assert summary["quarantined"] == len(exp["bad"]) == 5
    assert summary["duplicates"] == exp["duplicates"]
    assert summary["read"] == exp["non_blank"] == 14
    _assert_balanced(summary)
    assert summary["quarantine_reasons"]["invalid JSON"] == 1
    assert summary["reconciliation"] is None and summary["reconciliation_diff"] is None
    assert summary["events"] == str(out / "events.parquet")
    assert summary["quarantine"] == str(out / "quarantine.jsonl")
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)  # no staging or partial files left behind
    assert json.loads((out / "ingest_summary.json").read_text()) == summary


def test_mixed_file_events_table(mixed_jsonl, json_batch, tmp_path):
    path, exp = mixed_jsonl
    out = tmp_path / "out"
    summary = ingest(str(path), out)
    table = pq.read_table(out / "events.parquet")
    assert table.schema.equals(ARROW_SCHEMA)
    assert table.num_rows == summary["rows"]
    expected = {_py_id(r): r for r in exp["good"]}
    assert len(expected) == len(exp["good"])
    assert _ids(out) == sorted(expected)  # each line item once, whatever the number of deliveries
    rows = _rows_by_id(out)
    for eid, record in expected.items():
        assert rows[eid]["cost"] == record["cost"]
        assert rows[eid]["invoice"] == record["invoice"] and rows[eid]["cost_type"] == record["cost_type"]
        assert rows[eid]["usage_start_time"] == _ts(record["usage_start_time"])
    net = sum(net_cost_usd(r) for r in exp["good"])
    assert sum(net_cost_usd(r) for r in rows.values()) == pytest.approx(net)
    assert summary["total_net_cost"] == pytest.approx(round(net, 2))
    assert summary["cost_by_invoice_month"] == {"202509": 60.0, "202510": 3.25}


def test_quarantine_holds_each_bad_record_with_reason(mixed_jsonl, json_batch, tmp_path):
    path, exp = mixed_jsonl
    out = tmp_path / "out"
    ingest(str(path), out)
    quarantined = _quarantine(out)
    assert all(set(q) == {"ingest_id", "source", "location", "reason", "record"} for q in quarantined)
    assert all(isinstance(q["location"], str) for q in quarantined)
    assert sorted(int(q["location"]) for q in quarantined) == list(exp["bad"])
    raw_lines = path.read_text().splitlines()
    for q in quarantined:
        line = int(q["location"])
        text, reason = exp["bad"][line]
        assert reason in q["reason"], q
        assert q["source"] == str(path)
        # The raw record is kept so that it can be fixed and replayed.
        if q["reason"].startswith("invalid JSON"):
            assert q["record"] == raw_lines[line - 1]
            continue
        original = json.loads(raw_lines[line - 1])
        if not isinstance(original, dict):
            assert q["record"] == original
            continue
        for key, value in original.items():  # as read (pydantic path) or as conformed to the export (SQL path)
            if key in TIMESTAMPS:
                assert _ts(q["record"][key]) == _ts(value)
            else:
                assert q["record"][key] == value, key
        for key in set(q["record"]) - set(original):
            assert q["record"][key] is None, key


def test_quarantined_record_can_be_fixed_and_replayed(mixed_jsonl, json_batch, tmp_path):
    path, _ = mixed_jsonl
    out = tmp_path / "out"
    first = ingest(str(path), out)
    [bad] = [q for q in _quarantine(out) if "unknown currency" in q["reason"]]
    fixed = _write_jsonl(tmp_path / "fixed.jsonl", [dict(bad["record"], currency="USD")])
    replay = ingest(str(fixed), out)
    assert (replay["rows"], replay["quarantined"], replay["duplicates"]) == (1, 0, 0)
    assert replay["table_rows"] == first["table_rows"] + 1


# --- idempotence and merging ------------------------------------------------------------------------------------------


def test_reingest_adds_nothing(mixed_jsonl, tmp_path):
    path, exp = mixed_jsonl
    out = tmp_path / "out"
    first = ingest(str(path), out)
    before = pq.read_table(out / "events.parquet").sort_by("event_id")
    second = ingest(str(path), out)
    assert second["rows"] == 0
    assert second["duplicates"] == first["rows"] + first["duplicates"] == len(exp["good"]) + exp["duplicates"]
    assert second["quarantined"] == first["quarantined"] and second["read"] == first["read"]
    _assert_balanced(second)
    assert second["table_rows"] == first["table_rows"]
    assert pq.read_table(out / "events.parquet").sort_by("event_id").equals(before)
    # The summary describes the whole resulting table, not only this run's (empty) additions.
    assert second["cost_by_invoice_month"] == first["cost_by_invoice_month"]
    assert second["total_net_cost"] == first["total_net_cost"]
    # Each ingest appends its own records (issue 12: re-ingesting used to overwrite the earlier quarantine).
    assert [q["ingest_id"] for q in _quarantine(out)] == ([first["ingest_id"]] * first["quarantined"]
                                                         + [second["ingest_id"]] * second["quarantined"])


def test_redelivered_copy_via_glob(mixed_jsonl, tmp_path):
    path, _ = mixed_jsonl
    first = ingest(str(path), tmp_path / "one")
    # A re-delivery of the whole file beside the original: every one of its good records is a duplicate.
    copy = tmp_path / "mixed_redelivered.jsonl"
    shutil.copy(path, copy)
    both = ingest(str(tmp_path / "mixed*.jsonl"), tmp_path / "both")
    assert "files" not in both
    assert both["source"] == str(tmp_path / "mixed*.jsonl")
    assert both["read"] == 2 * first["read"]
    assert both["rows"] == first["rows"]
    assert _ids(tmp_path / "both") == _ids(tmp_path / "one")
    assert both["duplicates"] == first["duplicates"] + first["rows"] + first["duplicates"]
    assert both["quarantined"] == 2 * first["quarantined"]
    _assert_balanced(both)
    assert both["total_net_cost"] == first["total_net_cost"]
    assert both["cost_by_invoice_month"] == first["cost_by_invoice_month"]
    sources = [q["source"] for q in _quarantine(tmp_path / "both")]
    assert sources.count(str(path)) == sources.count(str(copy)) == first["quarantined"]


def test_merge_with_existing_table(billing_record, tmp_path):
    days = [billing_record(usage_start_time=f"2025-09-{d:02d}T00:00:00Z", usage_end_time=f"2025-09-{d:02d}T12:00:00Z",
                           cost=float(d), credits=[]) for d in range(1, 6)]
    october = billing_record(invoice={"month": "202510"}, cost=7.0, credits=[])
    out = tmp_path / "out"
    first = ingest(str(_write_jsonl(tmp_path / "a.jsonl", days[:3])), out)
    assert (first["rows"], first["table_rows"]) == (3, 3)
    second = ingest(str(_write_jsonl(tmp_path / "b.jsonl", days[1:] + [october])), out)
    assert (second["read"], second["rows"], second["duplicates"], second["table_rows"]) == (5, 3, 2, 6)
    _assert_balanced(second)
    assert _ids(out) == sorted(_py_id(r) for r in days + [october])
    assert second["cost_by_invoice_month"] == {"202509": 15.0, "202510": 7.0}
    assert second["total_net_cost"] == 22.0


def test_late_correction_is_a_new_event(billing_record, tmp_path):
    original = billing_record()
    corrected = billing_record(export_time="2025-09-05T07:00:00Z", cost=13.0)
    path = _write_jsonl(tmp_path / "late.jsonl", [original, corrected])
    summary = ingest(str(path), tmp_path / "out")
    assert summary["rows"] == 2 and summary["duplicates"] == 0
    assert _ids(tmp_path / "out") == sorted([_py_id(original), _py_id(corrected)])
    # A correction that arrives in a later run is added to the existing table as well.
    out = tmp_path / "later"
    ingest(str(_write_jsonl(tmp_path / "orig.jsonl", [original])), out)
    later = ingest(str(_write_jsonl(tmp_path / "corr.jsonl", [corrected])), out)
    assert (later["rows"], later["duplicates"], later["table_rows"]) == (1, 0, 2)


# --- event ids: SQL == Python ---------------------------------------------------------------------------------------


def test_event_ids_match_python_on_generated_data(small_generated, tmp_path):
    lines = (small_generated / "events.jsonl").read_text().splitlines()
    summary = ingest(str(small_generated / "events.jsonl"), tmp_path / "out")
    assert summary["rows"] == len(lines) and summary["quarantined"] == summary["duplicates"] == 0
    expected = {}
    for line in lines:
        record = json.loads(line)
        expected[_py_id(record)] = record["cost"]
    assert len(expected) == len(lines)
    table = pq.read_table(tmp_path / "out" / "events.parquet", columns=["event_id", "cost"])
    assert dict(zip(table.column("event_id").to_pylist(), table.column("cost").to_pylist())) == expected


@pytest.fixture
def id_edge_cases(billing_record) -> list[dict]:
    """Records whose id parts are null, empty or unusual; each on its own day, so that all ids differ."""
    adjustment = {"id": "adj-42", "description": "Goodwill credit", "mode": "MANUAL_ADJUSTMENTS",
                  "type": "GENERAL_ADJUSTMENT"}
    variants = [
        dict(project=None),
        dict(project={"id": None, "number": "700000000001", "name": "no id"}),
        dict(project={"id": "", "name": "empty id"}),
        dict(resource=None),
        dict(resource={"name": "vm-empty-global", "global_name": ""}),
        dict(resource={"name": "vm-null-global", "global_name": None}),
        dict(resource={"name": "", "global_name": ""}),
        dict(resource={"name": "vm-ünïcode|pipe", "global_name": None}),
        dict(cost_type="adjustment", usage=None, credits=[], adjustment_info=adjustment),
        dict(cost_type="adjustment", usage=None, credits=[], adjustment_info=dict(adjustment, id=None)),
        dict(location=None),
        dict(location={"location": None, "country": "FR", "region": None, "zone": None}),
        dict(project=None, resource=None, location=None, cost_type="tax", usage=None, credits=[]),
        dict(export_time="2025-09-30T07:00:00.123456Z"),
        dict(export_time="2025-09-30T09:00:00+02:00"),
    ]
    records = []
    for day, overrides in enumerate(variants, start=1):
        start = f"2025-09-{day:02d}T00:00:00Z"
        records.append(billing_record(**{"usage_start_time": start, "usage_end_time": start.replace("T00", "T06"),
                                         **overrides}))
    return records


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_event_ids_match_python_on_edge_cases(id_edge_cases, fmt, tmp_path):
    if fmt == "jsonl":
        path = _write_jsonl(tmp_path / "edge.jsonl", id_edge_cases)
    else:
        path = tmp_path / "edge.parquet"
        pq.write_table(pa.Table.from_pylist([_row(r) for r in id_edge_cases], schema=EXPORT_SCHEMA), path)
    summary = ingest(str(path), tmp_path / "out")
    assert (summary["rows"], summary["quarantined"], summary["duplicates"]) == (len(id_edge_cases), 0, 0)
    expected = [_py_id(r) for r in id_edge_cases]
    assert len(set(expected)) == len(expected)
    assert _ids(tmp_path / "out") == sorted(expected)
    # Per row, too: the id SQL gave a stored row is the id Python gives the same row.
    for eid, row in _rows_by_id(tmp_path / "out").items():
        assert _py_id(row) == eid


def test_event_id_parts_that_coincide_give_the_same_id(billing_record, tmp_path):
    """A null project and a project without id, or an empty global_name and none, name the same line item."""
    pairs = [(dict(project=None), dict(project={"id": None, "name": "x"})),
             (dict(resource={"name": "vm", "global_name": ""}), dict(resource={"name": "vm", "global_name": None})),
             (dict(location=None), dict(location={"location": None, "country": "FR"}))]
    for i, (a, b) in enumerate(pairs):
        ra, rb = billing_record(**a), billing_record(**b)
        assert _py_id(ra) == _py_id(rb)
        summary = ingest(str(_write_jsonl(tmp_path / f"pair{i}.jsonl", [ra, rb])), tmp_path / f"out{i}")
        assert (summary["rows"], summary["duplicates"]) == (1, 1)
        assert _ids(tmp_path / f"out{i}") == [_py_id(ra)]


# --- every malformed kind is quarantined, nothing lost or double counted -------------------------------------------


def _good_records(billing_record) -> list[dict]:
    good = [billing_record(usage_start_time=f"2025-09-{d:02d}T00:00:00Z", usage_end_time=f"2025-09-{d:02d}T08:00:00Z",
                           cost=1.5 * d) for d in range(1, 5)]
    # Negative usage is fine on a line that is not regular usage.
    good.append(billing_record(cost_type="adjustment", cost=-2.0, credits=[],
                               usage={"amount": -3.0, "unit": "seconds", "amount_in_pricing_units": None,
                                      "pricing_unit": None}))
    good.append(billing_record(invoice={"month": "202510"}, cost=4.0, credits=[{"amount": 0.0}]))  # a zero credit
    return good


def _malformed(billing_record) -> dict[str, tuple[dict | None, str]]:
    """Bad records expressible in the export's types: kind -> (record, what the reason must mention)."""
    no_cost = billing_record()
    del no_cost["cost"]
    no_service = billing_record()
    del no_service["service"]
    usage = dict(billing_record()["usage"], amount=-5.0)
    return {
        "no cost": (no_cost, "cost"),
        "no service": (no_service, "service"),
        "negative usage": (billing_record(usage=usage), "negative usage.amount"),
        "unknown currency": (billing_record(currency="XYZ"), "unknown currency 'XYZ'"),
        "positive credit": (billing_record(credits=[{"name": "oops", "amount": 1.5}]), "credits"),
        "end before start": (billing_record(usage_end_time="2025-08-31T00:00:00Z"),
                             "usage_end_time is before usage_start_time"),
        "invoice month with dash": (billing_record(invoice={"month": "2025-09"}), "invoice.month"),
        "invoice month 13": (billing_record(invoice={"month": "202513"}), "invoice.month"),
        "zero conversion rate": (billing_record(currency_conversion_rate=0.0), "currency_conversion_rate"),
    }


def _check_no_loss(summary: dict, out: Path, good: list[dict], n_bad: int) -> None:
    assert summary["rows"] == len(good) and summary["quarantined"] == n_bad
    _assert_balanced(summary)
    net = sum(net_cost_usd(r) for r in good)
    assert sum(net_cost_usd(r) for r in _rows_by_id(out).values()) == pytest.approx(net)
    assert summary["total_net_cost"] == pytest.approx(round(net, 2))
    assert _ids(out) == sorted(_py_id(r) for r in good)


def test_malformed_jsonl_records_are_quarantined(billing_record, json_batch, tmp_path):
    good = _good_records(billing_record)
    kinds = {name: (json.dumps(record), reason) for name, (record, reason) in _malformed(billing_record).items()}
    kinds["bad JSON"] = ('{"billing_account_id": "01A2B3", "cost": 1.0,', "invalid JSON")
    kinds["cost not a number"] = (json.dumps(billing_record(cost="abc")), "cost")
    kinds["not an object"] = ('"just a string"', "not a JSON object")
    lines = [json.dumps(r) for r in good[:3]] + [text for text, _ in kinds.values()] + \
        [json.dumps(r) for r in good[3:]] + [json.dumps(good[0])]  # and one duplicate
    path = _write_jsonl(tmp_path / "malformed.jsonl", lines)
    out = tmp_path / "out"
    summary = ingest(str(path), out)
    assert summary["read"] == len(lines) and summary["duplicates"] == 1
    _check_no_loss(summary, out, good, len(kinds))
    by_line = {int(q["location"]): q for q in _quarantine(out)}
    assert sorted(by_line) == list(range(4, 4 + len(kinds)))
    for line, (name, (text, reason)) in enumerate(kinds.items(), start=4):
        q = by_line[line]
        assert reason in q["reason"], (name, q["reason"])
        assert q["source"] == str(path)
        if name == "bad JSON":
            assert q["record"] == text


def test_malformed_parquet_rows_are_quarantined(billing_record, tmp_path):
    good = _good_records(billing_record)
    kinds = _malformed(billing_record)
    kinds["cost not finite"] = (billing_record(cost=math.nan), "cost")
    typed = [_row(r) for r in good[:3]] + [_row(r) for r, _ in kinds.values()] + [_row(r) for r in good[3:]]
    pq.write_table(pa.Table.from_pylist(typed, schema=EXPORT_SCHEMA), tmp_path / "a_typed.parquet")
    # A string column where a number is expected: Arrow cannot cast "abc", so the batch goes row by row.
    string_cost = EXPORT_SCHEMA.set(EXPORT_SCHEMA.get_field_index("cost"), pa.field("cost", pa.string()))
    extra_good = billing_record(usage_start_time="2025-09-20T00:00:00Z", usage_end_time="2025-09-21T00:00:00Z",
                                cost=12.25)
    loose = [dict(_row(extra_good), cost="12.25"), dict(_row(billing_record()), cost="abc"),
             dict(_row(billing_record(currency="XYZ")), cost="1.0")]
    pq.write_table(pa.Table.from_pylist(loose, schema=string_cost), tmp_path / "b_string_cost.parquet")
    out = tmp_path / "out"
    summary = ingest(str(tmp_path / "*.parquet"), out)
    assert summary["read"] == len(typed) + len(loose) and summary["duplicates"] == 0
    _check_no_loss(summary, out, good + [extra_good], len(kinds) + 2)
    quarantined = {(q["source"], q["location"]): q for q in _quarantine(out)}
    typed_path, loose_path = str(tmp_path / "a_typed.parquet"), str(tmp_path / "b_string_cost.parquet")
    assert set(quarantined) == {(typed_path, str(n)) for n in range(4, 4 + len(kinds))} | \
        {(loose_path, "2"), (loose_path, "3")}
    for row_number, (name, (record, reason)) in enumerate(kinds.items(), start=4):
        q = quarantined[(typed_path, str(row_number))]
        assert reason in q["reason"], (name, q["reason"])
        assert q["record"]["billing_account_id"] == record["billing_account_id"]
    assert quarantined[(loose_path, "2")]["reason"].startswith("cost:")
    assert quarantined[(loose_path, "2")]["record"]["cost"] == "abc"
    assert "unknown currency 'XYZ'" in quarantined[(loose_path, "3")]["reason"]
    assert _rows_by_id(out)[_py_id(extra_good)]["cost"] == 12.25


@pytest.mark.parametrize("overrides", [
    dict(credits=None),
    dict(usage_start_time="2025-09-01T00:00:00", usage_end_time="2025-09-02T00:00:00"),
], ids=["null-credits", "timestamps-without-zone"])
def test_record_verdict_does_not_depend_on_its_chunk(billing_record, overrides, tmp_path):
    record = billing_record(**overrides)
    clean = ingest(str(_write_jsonl(tmp_path / "clean.jsonl", [record])), tmp_path / "clean")
    dirty = ingest(str(_write_jsonl(tmp_path / "dirty.jsonl", [record, "{not json"])), tmp_path / "dirty")
    assert clean["rows"] == dirty["rows"]


def test_parquet_with_bad_rows_is_quarantined(billing_record, tmp_path):
    good = parse_event(billing_record())[0]
    bad = dict(good, currency="XYZ", event_id=None)
    bad_time = dict(good, usage_end_time=good["usage_start_time"].replace(year=2024))
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist([good, bad, bad_time, good], schema=ARROW_SCHEMA), path)
    summary = ingest(str(path), tmp_path / "out")
    assert (summary["rows"], summary["quarantined"], summary["duplicates"]) == (1, 2, 1)
    assert [q["location"] for q in _quarantine(tmp_path / "out")] == ["2", "3"]


# --- Parquet sources ------------------------------------------------------------------------------------------------


def test_parquet_source_gives_same_events_as_jsonl(small_generated, small_generator_config, small_seed, monkeypatch,
                                                   tmp_path):
    pq_dir = tmp_path / "gen_parquet"
    generate(small_generator_config, small_seed, pq_dir, fmt="parquet")
    monkeypatch.setattr(files_mod, "PARQUET_BATCH_ROWS", 4000)  # several batches
    from_pq = ingest(str(pq_dir / "events.parquet"), tmp_path / "from_pq", pq_dir / "control_totals.csv")
    from_js = ingest(str(small_generated / "events.jsonl"), tmp_path / "from_js",
                     small_generated / "control_totals.csv")
    assert from_pq["quarantined"] == 0 and from_pq["duplicates"] == 0
    assert from_pq["rows"] == from_js["rows"] == from_pq["read"] > 1000
    assert from_pq["reconciliation_diff"] == 0.0
    assert from_pq["cost_by_invoice_month"] == from_js["cost_by_invoice_month"]
    assert _ids(tmp_path / "from_pq") == _ids(tmp_path / "from_js")


def test_events_table_can_be_reingested(mixed_jsonl, tmp_path):
    """Ingest's own Parquet output (with its event_id column) is a valid source and gives the same ids."""
    path, _ = mixed_jsonl
    ingest(str(path), tmp_path / "a")
    shutil.copy(tmp_path / "a" / "events.parquet", tmp_path / "events_copy.parquet")
    summary = ingest(str(tmp_path / "events_copy.parquet"), tmp_path / "b")
    assert summary["quarantined"] == 0 and summary["duplicates"] == 0
    assert _ids(tmp_path / "b") == _ids(tmp_path / "a")


def test_parquet_with_partial_structs_is_conformed(billing_record, tmp_path):
    """Nested structs lacking fields, fields in another order, missing columns, other widths: all conformed."""
    labels = pa.list_(pa.struct([("key", pa.string()), ("value", pa.string())]))
    schema = pa.schema([
        ("cost", pa.int64()),  # columns in another order, an integer cost
        ("billing_account_id", pa.large_string()),
        ("service", pa.struct([("description", pa.string()), ("id", pa.string())])),
        ("sku", pa.struct([("id", pa.string()), ("description", pa.string())])),
        ("usage_start_time", pa.timestamp("ms", tz="UTC")),
        ("usage_end_time", pa.timestamp("ms", tz="UTC")),
        ("project", pa.struct([("id", pa.string()), ("name", pa.string()), ("labels", labels)])),  # no number etc.
        ("location", pa.struct([("location", pa.string())])),
        ("export_time", pa.timestamp("s", tz="UTC")),
        ("currency", pa.string()),
        ("currency_conversion_rate", pa.float32()),
        ("usage", pa.struct([("amount", pa.float64()), ("unit", pa.string())])),
        ("credits", pa.large_list(pa.struct([("amount", pa.float64()), ("name", pa.string())]))),
        ("invoice", pa.struct([("month", pa.string())])),
        ("cost_type", pa.string()),
        ("note", pa.string()),  # not an export column: ignored
    ])  # no resource, labels, system_labels, adjustment_info, cost_at_list, ... columns at all
    rows = [
        dict(cost=12, billing_account_id="01A2B3-C4D5E6-F7A8B9",
             service={"description": "Compute Engine", "id": "6F81-5844-456A"},
             sku={"id": "CP-N2", "description": "N2 core"}, usage_start_time=_ts("2025-09-01T00:00:00Z"),
             usage_end_time=_ts("2025-09-01T01:00:00Z"),
             project={"id": "acme-prd", "name": "prod", "labels": [{"key": "env", "value": "prod"}]},
             location={"location": "europe-west9"}, export_time=_ts("2025-09-02T07:00:00Z"), currency="USD",
             currency_conversion_rate=1.0, usage={"amount": 3600.0, "unit": "seconds"},
             credits=[{"amount": -2.0, "name": "SUD"}], invoice={"month": "202509"}, cost_type="regular", note="x"),
        dict(cost=5, billing_account_id="01A2B3-C4D5E6-F7A8B9",
             service={"description": "Cloud Storage", "id": "95FF-2EF5-5EA1"},
             sku={"id": "GCS-STD", "description": "Standard storage"}, usage_start_time=_ts("2025-09-02T00:00:00Z"),
             usage_end_time=_ts("2025-09-03T00:00:00Z"), project=None, location=None,
             export_time=_ts("2025-09-03T07:00:00Z"), currency="USD", currency_conversion_rate=1.0, usage=None,
             credits=None, invoice={"month": "202509"}, cost_type="regular", note=None),
    ]
    path = tmp_path / "partial.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    out = tmp_path / "out"
    summary = ingest(str(path), out)
    assert (summary["rows"], summary["quarantined"], summary["duplicates"]) == (2, 0, 0)
    assert summary["cost_by_invoice_month"] == {"202509": 15.0}
    table = pq.read_table(out / "events.parquet")
    assert table.schema.equals(ARROW_SCHEMA)
    stored = _rows_by_id(out)
    records = [{k: v for k, v in r.items() if k != "note"} for r in rows]
    first, second = (stored[_py_id(r)] for r in records)
    assert first["cost"] == 12.0 and first["billing_account_id"] == "01A2B3-C4D5E6-F7A8B9"
    assert first["service"] == {"id": "6F81-5844-456A", "description": "Compute Engine"}
    assert first["project"] == {"id": "acme-prd", "number": None, "name": "prod",
                                "labels": [{"key": "env", "value": "prod"}], "ancestry_numbers": None}
    assert first["location"] == {"location": "europe-west9", "country": None, "region": None, "zone": None}
    assert first["usage"] == {"amount": 3600.0, "unit": "seconds", "amount_in_pricing_units": None,
                              "pricing_unit": None}
    assert first["credits"] == [{"name": "SUD", "amount": -2.0, "full_name": None, "id": None, "type": None}]
    assert first["resource"] is None and first["labels"] is None and first["adjustment_info"] is None
    assert first["usage_start_time"] == _ts("2025-09-01T00:00:00Z")
    assert first["export_time"] == _ts("2025-09-02T07:00:00Z")
    assert first["currency_conversion_rate"] == 1.0
    assert second["project"] is None and second["location"] is None and second["credits"] is None
    assert second["cost"] == 5.0 and second["service"]["description"] == "Cloud Storage"


# --- currency -------------------------------------------------------------------------------------------------------


def test_currency_conversion_to_usd(billing_record, tmp_path):
    eur = billing_record(currency="EUR", currency_conversion_rate=0.9, cost=9.0, credits=[],
                         usage_start_time="2025-09-03T00:00:00Z", usage_end_time="2025-09-04T00:00:00Z")
    eur_credit = billing_record(currency="EUR", currency_conversion_rate=0.9, cost=4.5, credits=[{"amount": -0.9}],
                                usage_start_time="2025-09-05T00:00:00Z", usage_end_time="2025-09-06T00:00:00Z")
    usd = billing_record()  # 12.5 - 2.5 = 10.0 USD
    path = _write_jsonl(tmp_path / "eur.jsonl", [eur, eur_credit, usd])
    control = tmp_path / "ct.csv"
    control.write_text("invoice_month,net_cost\n202509,24.0\n")
    summary = ingest(str(path), tmp_path / "out", control)
    assert summary["rows"] == 3
    # 9.0 EUR / 0.9 = 10.0 USD; (4.5 - 0.9) EUR / 0.9 = 4.0 USD
    assert summary["cost_by_invoice_month"] == {"202509": 24.0}
    assert summary["total_net_cost"] == 24.0
    assert summary["reconciliation_diff"] == 0.0
    stored = _rows_by_id(tmp_path / "out")[_py_id(eur)]
    assert (stored["cost"], stored["currency"], stored["currency_conversion_rate"]) == (9.0, "EUR", 0.9)


# --- errors -------------------------------------------------------------------------------------------------------


def test_missing_source(tmp_path):
    missing = tmp_path / "no-such-export.jsonl"
    with pytest.raises(FinopsError) as exc:
        ingest(str(missing), tmp_path / "out")
    assert str(missing) in str(exc.value) and "does not exist" in str(exc.value)
    assert not (tmp_path / "out" / "events.parquet").exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_glob_matching_nothing(tmp_path):
    with pytest.raises(FinopsError, match="does not exist"):
        ingest(str(tmp_path / "*.jsonl"), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "export.txt"
    path.write_text("a,b\n")
    with pytest.raises(FinopsError, match="neither JSONL .* nor CSV"):
        ingest(str(path), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(FinopsError, match="cannot be read"):
        ingest(str(path), tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())


def test_parquet_corrupted_mid_file_is_one_sentence(small_generated, tmp_path):
    table = pa.concat_tables(b.table for b in files_mod.read_files(str(small_generated / "events.jsonl")))
    whole = tmp_path / "whole.parquet"
    pq.write_table(table, whole, row_group_size=max(table.num_rows // 4, 1))
    data = bytearray(whole.read_bytes())
    at = len(data) // 2  # the footer is intact: the file opens, its middle row groups do not decode
    data[at: at + 4096] = bytes(range(256)) * 16
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(bytes(data))
    with pytest.raises(FinopsError, match=r"Parquet file .*broken.parquet is corrupt after row [\d,]+ of "):
        ingest(str(broken), tmp_path / "out")
    assert not (tmp_path / "out" / "events.parquet").exists()


def test_quarantine_is_strict_json_without_nan_or_infinity(billing_record, tmp_path):
    records = [billing_record(cost=math.nan), billing_record(cost=math.inf),
               billing_record(cost_at_list=-math.inf, currency="XYZ")]
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist([_row(r) for r in records], schema=EXPORT_SCHEMA), path)
    lines = tmp_path / "nan.jsonl"
    lines.write_text('{"cost": NaN, "billing_account_id": "x"}\n')
    out = tmp_path / "out"
    assert ingest(str(path), out)["quarantined"] == 3 and ingest(str(lines), out)["quarantined"] == 1

    def refuse(token):
        raise ValueError(f"{token} is not strict JSON")

    quarantined = [json.loads(line, parse_constant=refuse) for line in (out / "quarantine.jsonl").read_text()
                   .splitlines()]
    assert [q["record"].get("cost") for q in quarantined[:2]] == ["NaN", "Infinity"]
    assert quarantined[2]["record"]["cost_at_list"] == "-Infinity"


def test_missing_control_totals(mixed_jsonl, tmp_path):
    path, _ = mixed_jsonl
    with pytest.raises(FinopsError, match="Control totals file .* does not exist"):
        ingest(str(path), tmp_path / "out", tmp_path / "nope.csv")
    assert not (tmp_path / "out" / "events.parquet").exists()


def test_control_totals_without_columns(mixed_jsonl, tmp_path):
    path, _ = mixed_jsonl
    bad = tmp_path / "ct.csv"
    bad.write_text("month,total\n202509,1\n")
    with pytest.raises(FinopsError, match="needs the columns invoice_month and net_cost"):
        ingest(str(path), tmp_path / "out", bad)
    assert not (tmp_path / "out" / "events.parquet").exists()


# --- reconciliation -----------------------------------------------------------------------------------------------


def test_reconciliation_reports_missing_row(small_generated, tmp_path):
    lines = (small_generated / "events.jsonl").read_text().splitlines(keepends=True)
    # Drop one regular line item that carries more than a cent of net cost.
    for i, line in enumerate(lines):
        r = json.loads(line)
        net = r["cost"] + sum(c["amount"] for c in r["credits"])
        if r["cost_type"] == "regular" and net > 1.0 and r["invoice"]["month"] != "202508":
            break
    dropped_month = r["invoice"]["month"]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(lines[:i] + lines[i + 1:]))
    summary = ingest(str(path), tmp_path / "out", small_generated / "control_totals.csv")
    assert summary["rows"] == len(lines) - 1
    diff = summary["reconciliation"]["diff_by_invoice_month"]
    assert diff[dropped_month] == pytest.approx(-net, abs=0.011)
    assert all(v == 0.0 for m, v in diff.items() if m != dropped_month)
    assert summary["reconciliation_diff"] == pytest.approx(net, abs=0.011)
    assert summary["reconciliation_diff"] > 0
    # Adding the missing line later completes the table, and the reconciliation is of the whole table.
    fixed = ingest(str(_write_jsonl(tmp_path / "late.jsonl", [lines[i].rstrip("\n")])), tmp_path / "out",
                   small_generated / "control_totals.csv")
    assert (fixed["rows"], fixed["table_rows"]) == (1, len(lines))
    assert fixed["reconciliation_diff"] == 0.0


def test_reconciliation_reports_months_missing_from_either_side(billing_record, tmp_path):
    path = _write_jsonl(tmp_path / "e.jsonl", [billing_record()])  # 10.00 net in 202509
    control = tmp_path / "ct.csv"
    control.write_text("invoice_month,net_cost\n202509,10.00\n202510,5.5\n")
    summary = ingest(str(path), tmp_path / "out", control)
    assert summary["reconciliation"]["diff_by_invoice_month"] == {"202509": 0.0, "202510": -5.5}
    assert summary["reconciliation_diff"] == 5.5
    assert summary["reconciliation"]["control_totals"] == str(control)
    control.write_text("invoice_month,net_cost\n202508,1.0\n")
    summary = ingest(str(path), tmp_path / "out", control)
    assert summary["reconciliation"]["diff_by_invoice_month"] == {"202508": -1.0, "202509": 10.0}
    assert summary["reconciliation_diff"] == 11.0


# --- crash safety -------------------------------------------------------------------------------------------------


def _crashing_after(n: int, real, exc=RuntimeError("killed mid-ingest")):
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n:
            raise exc
        return real(*args, **kwargs)

    wrapped.calls = calls
    return wrapped


def test_crash_in_batch_processing_leaves_no_outputs(small_generated, monkeypatch, tmp_path):
    out = tmp_path / "out"
    monkeypatch.setattr(files_mod, "JSON_BLOCK_BYTES", 64 << 10)  # a clean file: blocks of whole lines
    crashing = _crashing_after(5, ingest_mod.conform)
    monkeypatch.setattr(ingest_mod, "conform", crashing)
    with pytest.raises(RuntimeError, match="killed mid-ingest"):
        ingest(str(small_generated / "events.jsonl"), out, small_generated / "control_totals.csv")
    assert crashing.calls["n"] == 6  # five batches went through before the crash
    assert out.is_dir()
    assert list(out.iterdir()) == []  # no events.parquet, quarantine or summary, and no staging or partial files


def test_crash_in_writer_leaves_no_outputs(mixed_jsonl, monkeypatch, tmp_path):
    path, _ = mixed_jsonl
    out = tmp_path / "out"
    monkeypatch.setattr(files_mod, "JSON_BATCH_LINES", 2)
    write_table = _crashing_after(1, pq.ParquetWriter.write_table, OSError("No space left on device"))
    monkeypatch.setattr(pq.ParquetWriter, "write_table", write_table)
    with pytest.raises(OSError, match="No space left"):
        ingest(str(path), out)
    assert write_table.calls["n"] == 2  # one batch was staged before the crash
    assert list(out.iterdir()) == []


def test_crash_keeps_previous_run_intact(mixed_jsonl, billing_record, monkeypatch, tmp_path):
    path, _ = mixed_jsonl
    out = tmp_path / "out"
    ingest(str(path), out)
    before = {name: (out / name).read_bytes() for name in OUTPUTS}
    new = _write_jsonl(tmp_path / "new.jsonl", [billing_record(cost=float(c), export_time=f"2025-09-{c:02d}T07:00:00Z")
                                                for c in range(3, 9)])
    monkeypatch.setattr(files_mod, "JSON_BLOCK_BYTES", 1024)  # a clean file: about one line per block
    monkeypatch.setattr(ingest_mod, "conform", _crashing_after(2, ingest_mod.conform))
    with pytest.raises(RuntimeError):
        ingest(str(new), out)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    assert {name: (out / name).read_bytes() for name in OUTPUTS} == before
    # And the intact table is still merged into by the next, successful run.
    monkeypatch.undo()
    after = ingest(str(new), out)
    assert (after["rows"], after["table_rows"]) == (6, 12)
