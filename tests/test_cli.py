"""`finops-ml` as a user runs it: the installed console script in a subprocess (exit codes, stdout, stderr)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from finops_cli.main import app
from finops_ml.config import GeneratorConfig
from finops_ml.platform.registry import LocalRegistry
from finops_ml.synthetic.generator import generate
from finops_ml.training.gates import MODEL_GATES
from pipelines.training import PIPELINE_NAME
from testsupport.cli import finops_ml, one_error_sentence

pytestmark = pytest.mark.cli

# Small enough for seconds per step, long enough for the forecast (3 holdout months + 1 backtest origin).
SMALL_CONFIG = {
    "seed": 42,
    "generator": {"months": 11, "plants": 1, "resources_per_project": 2},
    "forecast": {"candidates": ["linear"], "backtest_origins": 1},
    "anomaly": {"n_estimators": 50},
}
GATES = ["forecast_accuracy", "forecast_interval_coverage", "anomaly_f1", "label_accuracy_owner",
         "label_accuracy_cost_center", "label_accuracy_plant", "label_compliance_after", "label_applied_precision"]


@pytest.fixture(scope="module")
def events_file(tmp_path_factory) -> Path:
    """A small generated events.jsonl (the smallest organisation the generator makes)."""
    out = tmp_path_factory.mktemp("cli-data") / "generated"
    generate(GeneratorConfig(plants=1, resources_per_project=2, months=6), 3, out)
    return out / "events.jsonl"


# ---- errors --------------------------------------------------------------------------------------------------------

def test_run_with_an_unknown_config_key_names_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**SMALL_CONFIG, "generator": {**SMALL_CONFIG["generator"], "plantz": 2}}))
    out = tmp_path / "out"

    result = finops_ml("run", "--config", str(bad), "--out", str(out))

    line = one_error_sentence(result)
    assert result.returncode == 1
    assert str(bad) in line and "'generator.plantz'" in line and "unknown key" in line
    assert not (out / "summary.json").exists() and not (out / "report.html").exists()
    assert not (out / "pipeline_root").exists()


def test_run_with_an_invalid_config_value_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"gates": {"anomaly_f1": 1.5}}))
    line = one_error_sentence(finops_ml("run", "--config", str(bad), "--out", str(tmp_path / "out")))
    assert str(bad) in line and "'gates.anomaly_f1'" in line


def test_ingest_of_a_missing_file_is_one_clear_sentence(tmp_path):
    missing = tmp_path / "missing.jsonl"
    out = tmp_path / "ingest"

    line = one_error_sentence(finops_ml("ingest", str(missing), "--out", str(out)))

    assert str(missing) in line and "does not exist" in line
    assert not (out / "events.parquet").exists()


def test_an_unexpected_exception_is_one_sentence_naming_the_saved_traceback(tmp_path, monkeypatch):
    import tempfile

    import finops_ml.data.ingest

    def broken(*args, **kwargs):
        raise ZeroDivisionError("float division by zero\nsecond line")

    monkeypatch.setattr(finops_ml.data.ingest, "ingest", broken)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    result = CliRunner().invoke(app, ["ingest", "events.jsonl"], catch_exceptions=False)

    assert result.exit_code == 1 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: unexpected error (ZeroDivisionError: float division by zero); ")
    (log,) = (tmp_path / "finops-ml").glob("error-*.log")
    assert f"the traceback is in {log};" in line
    text = log.read_text()
    assert text.startswith("Traceback") and "in broken" in text and "second line" in text


def test_a_user_error_is_printed_as_written_and_usage_errors_are_clicks(tmp_path):
    result = CliRunner().invoke(app, ["feedback", "a1", "--verdict", "[bold]maybe", "--file", str(tmp_path / "f.csv")])
    assert result.exit_code == 1 and result.exception is not None  # SystemExit(1), nothing else
    assert result.stderr.strip() == "error: --verdict must be one of expected, unexpected, not '[bold]maybe'."

    result = CliRunner().invoke(app, ["feedback", "a1", "--no-such-option"])
    assert result.exit_code == 2 and "No such option" in result.stderr and "error: " not in result.stderr


def test_ingest_quarantines_an_unparseable_line_and_succeeds(tmp_path, events_file):
    good = events_file.read_text().splitlines()[:40]
    source = tmp_path / "events.jsonl"
    source.write_text("\n".join([*good[:20], '{"billing_account_id": "01A2B3", "cost": ', *good[20:]]) + "\n")
    out = tmp_path / "ingest"

    result = finops_ml("ingest", str(source), "--out", str(out))

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "read 41 records" in result.stdout
    assert "40 new events, 1 quarantined, 0 duplicates" in " ".join(result.stdout.split())
    summary = json.loads((out / "ingest_summary.json").read_text())
    assert summary["read"] == 41 and summary["rows"] == 40 and summary["quarantined"] == 1
    (quarantined,) = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert quarantined["location"] == "21" and quarantined["reason"].startswith("invalid JSON")


def test_compile_writes_the_pipeline_yaml(tmp_path):
    output = tmp_path / "nested" / "x.yaml"
    result = finops_ml("compile", "--output", str(output))
    assert result.returncode == 0, result.stderr
    assert str(output) in " ".join(result.stdout.split())
    assert yaml.safe_load(output.read_text())["pipelineInfo"]["name"] == PIPELINE_NAME


# ---- a small organisation, end to end -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    base = tmp_path_factory.mktemp("cli-run")
    config = base / "small.yaml"
    config.write_text(yaml.safe_dump(SMALL_CONFIG))
    out = base / "out"
    return finops_ml("run", "--config", str(config), "--out", str(out), timeout=300), out


@pytest.mark.kfp
@pytest.mark.slow
def test_run_end_to_end_writes_summary_and_report(small_run):
    result, out = small_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # strict JSON: a metric with nothing to measure (a baseline that applies no label) is null, not NaN
    summary = json.loads((out / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    json.loads((out / "value.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))

    assert list(summary["gates"]) == GATES
    for gate, g in summary["gates"].items():
        assert set(g) == {"value", "threshold", "passed"}, gate
        assert 0.0 <= g["value"] <= 1.0 and g["passed"] == (g["value"] >= g["threshold"]), gate
    assert summary["gates"]["forecast_accuracy"]["threshold"] == 0.90  # the defaults: the config sets none
    assert 0.0 <= summary["label_compliance_before"] <= 1.0
    rows = summary["rows"]
    assert {"ingested", "quarantined", "duplicates"} <= set(rows)
    generated = json.loads((out / "data" / "generation.json").read_text())
    assert rows["ingested"] == generated["rows"] and rows["quarantined"] == 0 and rows["duplicates"] == 0
    assert summary["reconciliation_diff"] == 0.0
    assert summary["seed"] == 42

    html = (out / "report.html").read_text()
    assert "Plotly.newPlot" in html and "forecast_accuracy" in html and "<script src=" not in html
    assert json.loads((out / "value.json").read_text())["run_id"] == summary["run_id"]
    from finops_ml.models.anomaly import ANOMALY_COLUMNS

    anomalies = pd.read_csv(out / "anomalies.csv")  # what `finops-ml feedback` reads the anomaly ids from
    assert list(anomalies.columns) == ANOMALY_COLUMNS
    assert anomalies.anomaly_id.str.startswith("anom-").all()
    assert ((anomalies.impact > 0) == (anomalies.direction == "up")).all()  # drops have a negative impact
    # a cell expected at 0 (a runaway new resource) has no % deviation; every other one is material
    assert (anomalies.pct_deviation.isna() == (anomalies.expected == 0)).all()
    assert (anomalies.pct_deviation.dropna().abs() >= 25).all()


@pytest.mark.kfp
@pytest.mark.slow
def test_run_registers_exactly_the_models_whose_gates_passed(small_run):
    result, out = small_run
    summary = json.loads((out / "summary.json").read_text())
    passed = {model for model, gates in MODEL_GATES.items()
              if all(summary["gates"][g]["passed"] for g in gates)}

    registry = LocalRegistry(out / "registry")
    assert {r["name"] for r in summary["registered"]} == passed
    for r in summary["registered"]:
        assert r["version"] == 1 and sorted(r["aliases"]) == ["champion", "latest"]
        assert registry.entry(r["name"], "champion")["run_id"] == summary["run_id"]
    assert ("nothing (no gate passed)" in result.stdout) == (not passed)


@pytest.mark.kfp
@pytest.mark.slow
def test_run_reports_progress_and_timings(small_run):
    result, out = small_run
    timings = json.loads((out / "summary.json").read_text())["timings_s"]
    steps = {"ingest-events", "build-features", "train-forecast", "train-anomaly-detector", "train-labeler",
             "check-gate", "check-gate-2", "check-gate-3", "build-report"}
    assert steps | {"generate", "total"} <= set(timings)
    assert timings["total"] >= sum(v for k, v in timings.items() if k != "total") * 0.9
    for step in steps:
        assert f"{step} ..." in result.stdout
    assert "Evaluation gates" in result.stdout and "dashboard:" in result.stdout
    assert (out / "pipeline.log").exists() and not (out / ".report.html.partial").exists()


# ---- hostile input: one sentence, never a traceback nor "a bug in finops-ml" -----------------------------------------

def _user_error(result: subprocess.CompletedProcess) -> str:
    line = one_error_sentence(result)
    assert result.returncode == 1 and "bug in finops-ml" not in line, line
    return line


def test_a_config_that_is_a_folder_or_a_binary_file_is_one_sentence(tmp_path):
    binary = tmp_path / "config.yaml"
    binary.write_bytes(bytes(range(128, 256)) * 4)
    line = _user_error(finops_ml("generate", "--config", str(tmp_path), "--out", str(tmp_path / "o")))
    assert str(tmp_path) in line and "folder" in line
    line = _user_error(finops_ml("generate", "--config", str(binary), "--out", str(tmp_path / "o")))
    assert str(binary) in line and "not a text file" in line


def test_folders_given_as_files_to_detect_and_compile_are_one_sentence(tmp_path):
    series = tmp_path / "series.csv"
    series.write_text("timestamp,value\n" + "".join(f"2026-01-{d:02d},{d}\n" for d in range(1, 29)))
    folder = tmp_path / "folder"
    folder.mkdir()
    line = _user_error(finops_ml("detect", "--input", str(folder), "--output", str(tmp_path / "x.csv")))
    assert str(folder) in line and "folder" in line
    line = _user_error(finops_ml("detect", "--input", str(series), "--output", str(folder)))
    assert str(folder) in line and "folder" in line
    line = _user_error(finops_ml("compile", "--output", str(folder)))
    assert str(folder) in line and "folder" in line
    assert list(folder.iterdir()) == []


def test_command_line_options_are_validated_as_the_config_is(tmp_path):
    line = _user_error(finops_ml("generate", "--plants", "99", "--out", str(tmp_path / "o")))
    assert "--plants 99" in line and "'generator.plants'" in line and "less than or equal to 12" in line
    line = _user_error(finops_ml("generate", "--rows", "2000", "--out", str(tmp_path / "o")))
    assert "--rows 2000 is out of reach" in line and "line items" in line
    line = _user_error(finops_ml("serve", "--port", "70000", "--registry", str(tmp_path / "none")))
    assert "--port 70000" in line and "'serving.port'" in line
    assert not (tmp_path / "o").exists()


def test_generate_rows_gives_about_that_many_line_items(tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump({"generator": {"plants": 1, "months": 6}}))
    result = finops_ml("generate", "--config", str(config), "--rows", "15000", "--out", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    rows = len((tmp_path / "o" / "events.jsonl").read_text().splitlines())
    assert abs(rows - 15000) <= 0.2 * 15000, rows


def test_a_run_on_an_empty_source_stops_at_ingest_with_one_sentence(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(SMALL_CONFIG))
    result = finops_ml("run", "--config", str(config), "--source", str(empty), "--out", str(tmp_path / "out"))
    line = _user_error(result)
    assert "ingest" in line and f"Source {empty} holds no billing rows" in line
    assert "train" not in result.stdout.split("ingest", 1)[1], result.stdout  # no training step started


@pytest.mark.gcp
@pytest.mark.parametrize("args", [["submit"], ["promote", "cost-anomaly", "--version", "1"], ["schedule", "list"]],
                         ids=["submit", "promote", "schedule-list"])
def test_vertex_commands_without_credentials_say_how_to_log_in(tmp_path, monkeypatch, args):
    from finops_ml.config import CONFIG_DIR

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/gcloud/application_default_credentials.json
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.delenv("CLOUDSDK_CONFIG", raising=False)
    for name in ("GCE_METADATA_HOST", "GCE_METADATA_IP"):  # no metadata server: refused at once
        monkeypatch.setenv(name, "127.0.0.1:9")
    line = _user_error(finops_ml(*args, "--config", str(CONFIG_DIR / "dev.yaml")))
    assert "gcloud auth application-default login" in line and "GOOGLE_APPLICATION_CREDENTIALS" in line
