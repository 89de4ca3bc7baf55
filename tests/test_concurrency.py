"""Concurrent writers never lose an update: one ingest or run per directory, registrations serialised, quarantine
appended per ingest, and a killed ingest's work files removed by the next one."""

from __future__ import annotations

import json
import threading

import pytest

from finops_ml.data.ingest import ingest
from finops_ml.errors import FinopsError
from finops_ml.fileio import exclusive_lock
from finops_ml.platform.registry import LocalRegistry

pytestmark = pytest.mark.unit


def _jsonl(path, billing_record, bad_lines: int = 1):
    rows = [json.dumps(billing_record(usage_start_time=f"2025-09-{d:02d}T00:00:00Z",
                                      usage_end_time=f"2025-09-{d + 1:02d}T00:00:00Z")) for d in range(1, 4)]
    path.write_text("\n".join(rows + ["{not json"] * bad_lines) + "\n")
    return path


def test_a_second_ingest_into_the_same_directory_is_refused_with_a_sentence(tmp_path, billing_record):
    source = _jsonl(tmp_path / "a.jsonl", billing_record)
    out = tmp_path / "out"
    with exclusive_lock(out, "ingest"):
        with pytest.raises(FinopsError, match=r"is in use by a ingest \(pid \d+\); wait for it"):
            ingest(str(source), out)
    assert not (out / "events.parquet").exists()
    assert ingest(str(source), out)["rows"] == 3  # the lock is gone with its holder


def test_each_ingest_appends_its_quarantined_records(tmp_path, billing_record):
    out = tmp_path / "out"
    first = ingest(str(_jsonl(tmp_path / "a.jsonl", billing_record, bad_lines=2)), out)
    second = ingest(str(_jsonl(tmp_path / "b.jsonl", billing_record, bad_lines=1)), out)
    lines = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert [q["ingest_id"] for q in lines] == [first["ingest_id"]] * 2 + [second["ingest_id"]]
    assert first["ingest_id"] != second["ingest_id"] and second["quarantined"] == 1


def test_a_killed_ingests_work_files_are_removed_by_the_next_one(tmp_path, billing_record):
    out = tmp_path / "out"
    (out / ".ingest.dead").mkdir(parents=True)
    (out / ".ingest.dead" / "staging.parquet").write_bytes(b"x" * 1000)
    (out / ".events.parquet.abc.partial").write_bytes(b"half")
    ingest(str(_jsonl(tmp_path / "a.jsonl", billing_record)), out)
    assert sorted(p.name for p in out.iterdir()) == ["events.parquet", "ingest_summary.json",
                                                    "quarantine.jsonl"]


def test_registrations_at_the_same_moment_get_distinct_versions(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.joblib").write_text("m")
    registry = LocalRegistry(tmp_path / "registry")
    barrier = threading.Barrier(4)
    results, errors = [], []

    def register(i: int) -> None:
        barrier.wait()
        try:
            results.append(registry.register("cost-anomaly", model, {"anomaly_f1": 0.9 + i / 100}, f"d{i}", {},
                                             f"r{i}"))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r["version"] for r in results) == [1, 2, 3, 4] == registry.versions("cost-anomaly")
    assert sorted(registry.entry("cost-anomaly", v)["run_id"] for v in range(1, 5)) == ["r0", "r1", "r2", "r3"]
