"""Ingest: quarantine with reasons, dedupe by event id, reconcile to control totals, atomic outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import finops_ml.ingest as ingest_mod
from finops_ml.errors import FinopsError
from finops_ml.events import ARROW_SCHEMA, net_cost_usd, parse_event
from finops_ml.generator import generate
from finops_ml.ingest import ingest

OUTPUTS = ("events.parquet", "quarantine.jsonl", "ingest_summary.json")


def _ids(out: Path) -> list[str]:
    return pq.read_table(out / "events.parquet", columns=["event_id"]).column("event_id").to_pylist()


def _quarantine(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]


@pytest.fixture
def mixed_jsonl(tmp_path, billing_record) -> tuple[Path, dict]:
    """A JSONL file of good records, bad records of several kinds, duplicates and a blank line."""
    good = [billing_record(usage_start_time=f"2025-09-{d:02d}T00:00:00Z", usage_end_time=f"2025-09-{d + 1:02d}T00:00:00Z",
                           cost=10.0 + d, credits=[{"amount": -1.0}]) for d in range(1, 6)]
    good.append(billing_record(cost_type="tax", cost=3.25, credits=[], invoice={"month": "202510"}))
    missing = billing_record()
    del missing["sku"]
    lines = [json.dumps(r) for r in good]
    bad = {
        len(lines) + 1: ("{\"billing_account_id\": \"01A2B3\", \"cost\": ", "invalid JSON"),
        len(lines) + 2: (json.dumps(missing), "sku: Field required"),
        len(lines) + 3: (json.dumps(billing_record(cost="twelve")), "cost:"),
        len(lines) + 4: (json.dumps(billing_record(currency="XYZ")), "unknown currency 'XYZ'"),
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


def test_mixed_file_counts(mixed_jsonl, tmp_path):
    path, exp = mixed_jsonl
    out = tmp_path / "out"
    summary = ingest(str(path), out)
    assert summary["rows"] == len(exp["good"]) == 6
    assert summary["quarantined"] == len(exp["bad"]) == 5
    assert summary["duplicates"] == exp["duplicates"]
    assert summary["read"] == exp["non_blank"]
    assert summary["rows"] + summary["quarantined"] + summary["duplicates"] == summary["read"]
    assert sum(summary["quarantine_reasons"].values()) == summary["quarantined"]
    assert summary["quarantine_reasons"]["invalid JSON"] == 1
    assert summary["reconciliation"] is None and summary["reconciliation_diff"] is None
    for name in OUTPUTS:
        assert (out / name).exists()
    assert json.loads((out / "ingest_summary.json").read_text()) == summary


def test_mixed_file_events_table(mixed_jsonl, tmp_path):
    path, exp = mixed_jsonl
    out = tmp_path / "out"
    summary = ingest(str(path), out)
    table = pq.read_table(out / "events.parquet")
    assert table.schema.equals(ARROW_SCHEMA)
    assert table.num_rows == summary["rows"]
    expected_ids = [parse_event(r)[0]["event_id"] for r in exp["good"]]
    assert _ids(out) == expected_ids  # the first delivery of each line item, in file order
    assert len(set(expected_ids)) == len(expected_ids)
    rows = table.to_pylist()
    assert [r["cost"] for r in rows] == [r["cost"] for r in exp["good"]]
    net = sum(net_cost_usd(r) for r in exp["good"])
    assert summary["total_net_cost"] == pytest.approx(round(net, 2))
    assert summary["cost_by_invoice_month"] == {"202509": 60.0, "202510": 3.25}


def test_quarantine_holds_each_bad_record_with_reason(mixed_jsonl, tmp_path):
    path, exp = mixed_jsonl
    out = tmp_path / "out"
    ingest(str(path), out)
    quarantined = _quarantine(out)
    assert [q["line"] for q in quarantined] == list(exp["bad"])
    raw_lines = path.read_text().splitlines()
    for q in quarantined:
        text, reason = exp["bad"][q["line"]]
        assert reason in q["reason"], q
        assert q["source"] == str(path)
        # The raw record is kept so that it can be fixed and replayed.
        if q["reason"].startswith("invalid JSON"):
            assert q["record"] == raw_lines[q["line"] - 1]
        else:
            assert q["record"] == json.loads(raw_lines[q["line"] - 1])


def test_reingest_adds_nothing(mixed_jsonl, tmp_path):
    path, exp = mixed_jsonl
    out = tmp_path / "out"
    first = ingest(str(path), out)
    ids = _ids(out)
    second = ingest(str(path), out)
    assert _ids(out) == ids
    assert {k: second[k] for k in ("rows", "quarantined", "duplicates", "read")} == \
        {k: first[k] for k in ("rows", "quarantined", "duplicates", "read")}
    # A re-delivery of the whole file beside the original: every one of its good records is a duplicate.
    shutil.copy(path, tmp_path / "mixed_redelivered.jsonl")
    both = ingest(str(tmp_path / "mixed*.jsonl"), tmp_path / "both")
    assert len(both["files"]) == 2
    assert both["rows"] == first["rows"]
    assert _ids(tmp_path / "both") == ids
    assert both["duplicates"] == first["duplicates"] + first["rows"] + first["duplicates"]
    assert both["quarantined"] == 2 * first["quarantined"]
    assert both["total_net_cost"] == first["total_net_cost"]


def test_late_correction_is_a_new_event(billing_record, tmp_path):
    path = tmp_path / "late.jsonl"
    original = billing_record()
    corrected = billing_record(export_time="2025-09-05T07:00:00Z", cost=13.0)
    path.write_text(json.dumps(original) + "\n" + json.dumps(corrected) + "\n")
    summary = ingest(str(path), tmp_path / "out")
    assert summary["rows"] == 2 and summary["duplicates"] == 0


def test_parquet_source_gives_same_events_as_jsonl(small_generated, small_generator_config, small_seed, tmp_path):
    pq_dir = tmp_path / "gen_parquet"
    generate(small_generator_config, small_seed, pq_dir, fmt="parquet")
    from_pq = ingest(str(pq_dir / "events.parquet"), tmp_path / "from_pq", pq_dir / "control_totals.csv")
    from_js = ingest(str(small_generated / "events.jsonl"), tmp_path / "from_js", small_generated / "control_totals.csv")
    assert from_pq["quarantined"] == 0 and from_pq["duplicates"] == 0
    assert from_pq["rows"] == from_js["rows"] > 1000
    assert from_pq["reconciliation_diff"] == 0.0
    assert from_pq["cost_by_invoice_month"] == from_js["cost_by_invoice_month"]
    assert sorted(_ids(tmp_path / "from_pq")) == sorted(_ids(tmp_path / "from_js"))


def test_events_table_can_be_reingested(mixed_jsonl, tmp_path):
    """Ingest's own Parquet output (with its event_id column) is a valid source and gives the same ids."""
    path, _ = mixed_jsonl
    ingest(str(path), tmp_path / "a")
    shutil.copy(tmp_path / "a" / "events.parquet", tmp_path / "events_copy.parquet")
    summary = ingest(str(tmp_path / "events_copy.parquet"), tmp_path / "b")
    assert summary["quarantined"] == 0 and summary["duplicates"] == 0
    assert _ids(tmp_path / "b") == _ids(tmp_path / "a")


def test_parquet_with_bad_rows_is_quarantined(billing_record, tmp_path):
    good = parse_event(billing_record())[0]
    bad = dict(good, currency="XYZ", event_id=None)
    bad_time = dict(good, usage_end_time=good["usage_start_time"].replace(year=2024))
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist([good, bad, bad_time, good], schema=ARROW_SCHEMA), path)
    summary = ingest(str(path), tmp_path / "out")
    assert (summary["rows"], summary["quarantined"], summary["duplicates"]) == (1, 2, 1)
    assert [q["line"] for q in _quarantine(tmp_path / "out")] == [2, 3]


# --- errors -------------------------------------------------------------------------------------------------------


def test_missing_source(tmp_path):
    missing = tmp_path / "no-such-export.jsonl"
    with pytest.raises(FinopsError) as exc:
        ingest(str(missing), tmp_path / "out")
    assert str(missing) in str(exc.value) and "does not exist" in str(exc.value)
    assert not (tmp_path / "out" / "events.parquet").exists()


def test_glob_matching_nothing(tmp_path):
    with pytest.raises(FinopsError, match="does not exist"):
        ingest(str(tmp_path / "*.jsonl"), tmp_path / "out")


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "export.csv"
    path.write_text("a,b\n")
    with pytest.raises(FinopsError, match="neither JSONL .* nor Parquet"):
        ingest(str(path), tmp_path / "out")


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(FinopsError, match="cannot be read"):
        ingest(str(path), tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())


def test_missing_control_totals(mixed_jsonl, tmp_path):
    path, _ = mixed_jsonl
    with pytest.raises(FinopsError, match="Control totals file .* does not exist"):
        ingest(str(path), tmp_path / "out", tmp_path / "nope.csv")


def test_control_totals_without_columns(mixed_jsonl, tmp_path):
    path, _ = mixed_jsonl
    bad = tmp_path / "ct.csv"
    bad.write_text("month,total\n202509,1\n")
    with pytest.raises(FinopsError, match="needs the columns invoice_month and net_cost"):
        ingest(str(path), tmp_path / "out", bad)


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


def test_reconciliation_reports_months_missing_from_either_side(billing_record, tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps(billing_record()) + "\n")  # 10.00 net in 202509
    control = tmp_path / "ct.csv"
    control.write_text("invoice_month,net_cost\n202509,10.00\n202510,5.5\n")
    summary = ingest(str(path), tmp_path / "out", control)
    assert summary["reconciliation"]["diff_by_invoice_month"] == {"202509": 0.0, "202510": -5.5}
    assert summary["reconciliation_diff"] == 5.5
    control.write_text("invoice_month,net_cost\n202508,1.0\n")
    summary = ingest(str(path), tmp_path / "out", control)
    assert summary["reconciliation"]["diff_by_invoice_month"] == {"202508": -1.0, "202509": 10.0}
    assert summary["reconciliation_diff"] == 11.0


# --- crash safety -------------------------------------------------------------------------------------------------


def _crashing_after(n: int, real):
    calls = {"n": 0}

    def parse(record):
        calls["n"] += 1
        if calls["n"] > n:
            raise RuntimeError("killed mid-ingest")
        return real(record)

    return parse


def test_crash_in_parsing_leaves_no_outputs(small_generated, monkeypatch, tmp_path):
    out = tmp_path / "out"
    monkeypatch.setattr(ingest_mod, "parse_event", _crashing_after(500, ingest_mod.parse_event))
    with pytest.raises(RuntimeError, match="killed mid-ingest"):
        ingest(str(small_generated / "events.jsonl"), out, small_generated / "control_totals.csv", batch_size=100)
    assert out.is_dir()
    assert list(out.iterdir()) == []  # no events.parquet, quarantine or summary, and no partial files


def test_crash_in_writer_leaves_no_outputs(mixed_jsonl, monkeypatch, tmp_path):
    path, _ = mixed_jsonl
    out = tmp_path / "out"
    real_write = pq.ParquetWriter.write_table
    calls = {"n": 0}

    def write_table(self, table, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError("No space left on device")
        return real_write(self, table, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", write_table)
    with pytest.raises(OSError, match="No space left"):
        ingest(str(path), out, batch_size=2)
    assert calls["n"] == 2  # one batch was written before the crash
    assert list(out.iterdir()) == []


def test_crash_keeps_previous_run_intact(mixed_jsonl, monkeypatch, tmp_path):
    path, _ = mixed_jsonl
    out = tmp_path / "out"
    ingest(str(path), out)
    before = {name: (out / name).read_bytes() for name in OUTPUTS}
    monkeypatch.setattr(ingest_mod, "parse_event", _crashing_after(3, ingest_mod.parse_event))
    with pytest.raises(RuntimeError):
        ingest(str(path), out)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    assert {name: (out / name).read_bytes() for name in OUTPUTS} == before
