"""Each KFP component run by the KFP local runner (`SubprocessRunner(use_venv=False)`) on a small organisation.

The local runner cannot pass an artifact from one standalone component call to the next ("Input artifacts are
not supported"), so every downstream component is called inside a one-step pipeline that imports its input
artifacts by URI with `dsl.importer`: the component itself runs unchanged, in its own process, exactly as in the
training pipeline. The chain runs once per module (ingest -> features -> three trainers -> gates -> register ->
report) and the tests below inspect what each step wrote.

No `from __future__ import annotations` here: KFP reads the pipelines' annotations as types, not strings.
"""

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import joblib
import numpy as np
import pandas as pd
import pytest
from kfp import dsl, local
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Metrics, Model

from components.features import build_features
from components.ingest import ingest_events
from components.registry import check_gate, deploy_model, register_model
from components.report import build_report
from components.train import train_anomaly_detector, train_forecast, train_labeler
from finops_ml.config import Config, GeneratorConfig
from finops_ml.platform.registry import LocalRegistry
from finops_ml.synthetic.generator import generate
from finops_ml.training.steps import loggable_metrics

# The smallest organisation the forecast can train on: 11 months = 3 holdout months + one backtest origin
# 3 months earlier + 56 days of history + the 93-day horizon. One plant, two resources per project.
GENERATOR = GeneratorConfig(plants=1, resources_per_project=2, months=11)
SEED = 7
CONFIG = Config(
    generator=GENERATOR,
    forecast={"candidates": ["linear"], "backtest_origins": 1},
    anomaly={"n_estimators": 50},
    # forecast gate forced to pass; labeler gates forced to fail (checked below: its metrics are < 1 here).
    gates={"forecast_accuracy": 0.0, "forecast_interval_coverage": 0.0, "label_accuracy": 1.0,
           "label_compliance_after": 1.0},
    budgets=[{"name": "everything", "monthly_usd": 1.0}, {"name": "ghost", "scope": {"project_id": "nope"},
                                                          "monthly_usd": 1.0}],
)
RUN_ID = "components-test-run"

# The local runner notes that the components name a custom base image: here they run in this environment.
pytestmark = [pytest.mark.kfp, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")]


# ---- one-step pipelines: import the inputs by URI, run the component, return its outputs ----------------------

class _Features(NamedTuple):
    daily_cost: Dataset
    resource_daily_cost: Dataset
    resources: Dataset


@dsl.pipeline
def features_from(events_uri: str) -> _Features:
    events = dsl.importer(artifact_uri=events_uri, artifact_class=Dataset)
    task = build_features(events=events.output).set_retry(1)  # as in the pipeline (see pipelines/training.py)
    return _Features(daily_cost=task.outputs["daily_cost"], resource_daily_cost=task.outputs["resource_daily_cost"],
                     resources=task.outputs["resources"])


class _Trained(NamedTuple):
    model: Model
    evaluation: Artifact
    metrics: Metrics


@dsl.pipeline
def forecast_from(daily_cost_uri: str, config_json: str) -> _Trained:
    daily = dsl.importer(artifact_uri=daily_cost_uri, artifact_class=Dataset)
    task = train_forecast(daily_cost=daily.output, config_json=config_json)
    return _Trained(model=task.outputs["model"], evaluation=task.outputs["evaluation"],
                    metrics=task.outputs["metrics"])


class _Anomaly(NamedTuple):
    model: Model
    evaluation: Artifact
    metrics: Metrics
    confusion: ClassificationMetrics


@dsl.pipeline
def anomaly_from(resource_daily_cost_uri: str, resources_uri: str, anomaly_labels: str, config_json: str,
                 anomaly_feedback: str = "") -> _Anomaly:
    daily = dsl.importer(artifact_uri=resource_daily_cost_uri, artifact_class=Dataset)
    resources = dsl.importer(artifact_uri=resources_uri, artifact_class=Dataset)
    task = train_anomaly_detector(resource_daily_cost=daily.output, resources=resources.output,
                                  anomaly_labels=anomaly_labels, anomaly_feedback=anomaly_feedback,
                                  config_json=config_json)
    return _Anomaly(model=task.outputs["model"], evaluation=task.outputs["evaluation"],
                    metrics=task.outputs["metrics"], confusion=task.outputs["confusion"])


class _Labeler(NamedTuple):
    model: Model
    evaluation: Artifact
    metrics: Metrics
    owner_confusion: ClassificationMetrics
    cost_center_confusion: ClassificationMetrics
    plant_confusion: ClassificationMetrics


@dsl.pipeline
def labeler_from(resources_uri: str, resource_truth: str, config_json: str) -> _Labeler:
    resources = dsl.importer(artifact_uri=resources_uri, artifact_class=Dataset)
    task = train_labeler(resources=resources.output, resource_truth=resource_truth, config_json=config_json)
    return _Labeler(model=task.outputs["model"], evaluation=task.outputs["evaluation"],
                    metrics=task.outputs["metrics"], owner_confusion=task.outputs["owner_confusion"],
                    cost_center_confusion=task.outputs["cost_center_confusion"],
                    plant_confusion=task.outputs["plant_confusion"])


@dsl.pipeline
def gate_from(evaluation_uri: str) -> bool:
    evaluation = dsl.importer(artifact_uri=evaluation_uri, artifact_class=Artifact)
    return check_gate(evaluation=evaluation.output).output


@dsl.pipeline
def register_from(model_uri: str, evaluation_uri: str, registry_dir: str, config_json: str, run_id: str) -> str:
    model = dsl.importer(artifact_uri=model_uri, artifact_class=Model)
    evaluation = dsl.importer(artifact_uri=evaluation_uri, artifact_class=Artifact)
    return register_model(model=model.output, evaluation=evaluation.output, registry_dir=registry_dir,
                          config_json=config_json, run_id=run_id).output


class _Report(NamedTuple):
    report: HTML
    summary: Artifact


@dsl.pipeline
def report_from(events_uri: str, forecast_uri: str, anomaly_uri: str, labeler_uri: str) -> _Report:
    events = dsl.importer(artifact_uri=events_uri, artifact_class=Dataset)
    fc = dsl.importer(artifact_uri=forecast_uri, artifact_class=Artifact)
    an = dsl.importer(artifact_uri=anomaly_uri, artifact_class=Artifact)
    lab = dsl.importer(artifact_uri=labeler_uri, artifact_class=Artifact)
    task = build_report(events=events.output, forecast_evaluation=fc.output, anomaly_evaluation=an.output,
                        labeler_evaluation=lab.output, config_json=CONFIG.for_step("report"))
    return _Report(report=task.outputs["report"], summary=task.outputs["summary"])


# ---- the chain, run once ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> SimpleNamespace:
    base = tmp_path_factory.mktemp("components")
    data = base / "data"
    generate(GENERATOR, SEED, data)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(base / "pipeline_root"))
    step_config = CONFIG.step_parameters()  # what the pipeline sends each step: its sections only
    registry_dir = base / "registry"

    ingest = ingest_events(source=str(data / "events.jsonl"), control_totals=str(data / "control_totals.csv"))
    events = ingest.outputs["events"]
    features = features_from(events_uri=events.uri)
    daily_uri = features.outputs["daily_cost"].uri
    anomaly = anomaly_from(resource_daily_cost_uri=features.outputs["resource_daily_cost"].uri,
                           resources_uri=features.outputs["resources"].uri,
                           anomaly_labels=str(data / "truth" / "anomaly_cells.csv"),
                           config_json=step_config["anomaly_config"])
    trained = {
        "cost-forecast": forecast_from(daily_cost_uri=daily_uri, config_json=step_config["forecast_config"]),
        "cost-anomaly": anomaly,
        "resource-labeler": labeler_from(resources_uri=features.outputs["resources"].uri,
                                         resource_truth=str(data / "truth" / "resources.csv"),
                                         config_json=step_config["labeler_config"]),
    }
    gates = {name: gate_from(evaluation_uri=t.outputs["evaluation"].uri).output for name, t in trained.items()}
    fc = trained["cost-forecast"]
    registered = register_from(model_uri=fc.outputs["model"].uri, evaluation_uri=fc.outputs["evaluation"].uri,
                               registry_dir=str(registry_dir), config_json=step_config["register_config"],
                               run_id=RUN_ID).output
    report = report_from(events_uri=events.uri, forecast_uri=fc.outputs["evaluation"].uri,
                         anomaly_uri=trained["cost-anomaly"].outputs["evaluation"].uri,
                         labeler_uri=trained["resource-labeler"].outputs["evaluation"].uri)
    return SimpleNamespace(data=data, ingest=ingest, features=features, trained=trained, gates=gates,
                           registered=registered, registry_dir=registry_dir, report=report)


def _evaluation(chain, name: str) -> dict:
    return json.loads((Path(chain.trained[name].outputs["evaluation"].path) / "evaluation.json").read_text())


# ---- ingest / features --------------------------------------------------------------------------------------------

def test_ingest_writes_events_and_logs_reconciled_metrics(chain):
    events_dir = Path(chain.ingest.outputs["events"].path)
    summary = json.loads((events_dir / "ingest_summary.json").read_text())
    events = pd.read_parquet(events_dir / "events.parquet")
    generated = json.loads((chain.data / "generation.json").read_text())

    assert len(events) == summary["rows"] == generated["rows"] > 0
    assert summary["quarantined"] == 0 and summary["duplicates"] == 0
    metrics = chain.ingest.outputs["metrics"].metadata
    assert metrics["rows"] == summary["rows"]
    assert metrics["quarantined"] == 0.0 and metrics["duplicates"] == 0.0
    assert metrics["reconciliation_diff"] == 0.0
    assert metrics["total_net_cost"] == pytest.approx(summary["total_net_cost"])
    control = pd.read_csv(chain.data / "control_totals.csv", dtype={"invoice_month": str})
    assert summary["cost_by_invoice_month"] == dict(zip(control.invoice_month, control.net_cost))
    assert set(summary["reconciliation"]["diff_by_invoice_month"].values()) == {0.0}


def test_build_features_writes_daily_cost_and_resources(chain):
    daily = pd.read_parquet(chain.features.outputs["daily_cost"].path)
    resources = pd.read_parquet(chain.features.outputs["resources"].path)
    truth = pd.read_csv(chain.data / "truth" / "resources.csv")

    assert {"day", "service", "project_id", "net_cost"} <= set(daily.columns)
    days = pd.to_datetime(daily.day)
    assert days.min() == pd.Timestamp(GENERATOR.start)
    assert (days.max().year - days.min().year) * 12 + days.max().month - days.min().month + 1 == GENERATOR.months
    assert not daily.duplicated(["day", "service", "project_id"]).any()
    assert len(resources) == len(truth) > 0
    # the resources of a cell add up to the cell
    per_resource = pd.read_parquet(chain.features.outputs["resource_daily_cost"].path)
    summed = per_resource.groupby(["day", "service", "project_id"]).net_cost.sum()
    np.testing.assert_allclose(daily.set_index(["day", "service", "project_id"]).net_cost.sort_index(),
                               summed.sort_index())


# ---- trainers ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, gate_names", [
    ("cost-forecast", ["forecast_accuracy", "forecast_interval_coverage"]),
    ("cost-anomaly", ["anomaly_f1"]),
    ("resource-labeler", ["label_accuracy_owner", "label_accuracy_cost_center", "label_accuracy_plant",
                          "label_compliance_after", "label_applied_precision"]),
])
def test_trainer_writes_model_and_held_out_evaluation(chain, name, gate_names):
    trained = chain.trained[name]
    model = joblib.load(Path(trained.outputs["model"].path) / "model.joblib")
    assert model is not None
    evaluation = _evaluation(chain, name)

    assert evaluation["model_name"] == name
    assert list(evaluation["gates"]) == gate_names
    for gate, g in evaluation["gates"].items():
        assert 0.0 <= g["value"] <= 1.0, (gate, g)
        assert g["value"] == evaluation["metrics"][gate]
        assert g["passed"] == (g["value"] >= g["threshold"])
    assert evaluation["passed"] == all(g["passed"] for g in evaluation["gates"].values())
    assert evaluation["data_window"]["start"] == GENERATOR.start
    # The KFP Metrics artifact carries the same numbers (as floats).
    logged = trained.outputs["metrics"].metadata
    for gate in gate_names:
        assert logged[gate] == pytest.approx(evaluation["metrics"][gate])


@pytest.mark.parametrize("name", ["cost-forecast", "cost-anomaly", "resource-labeler"])
def test_trainer_executor_output_is_strict_json(chain, name):
    """Vertex AI's launcher parses executor_output.json strictly: a NaN metric (e.g. the detection delay when no
    event was detected) must be left out of the Metrics artifact, not written as a bare NaN."""
    task_dir = Path(chain.trained[name].outputs["model"].path).parent
    text = (task_dir / "executor_output.json").read_text()

    def reject(constant):
        raise AssertionError(f"{name}: executor_output.json holds {constant}")

    json.loads(text, parse_constant=reject)
    metrics = loggable_metrics(_evaluation(chain, name)["metrics"])  # nested tables flattened
    for key, value in chain.trained[name].outputs["metrics"].metadata.items():
        assert math.isfinite(value) and value == pytest.approx(metrics[key]), key


def test_forecast_step_evaluates_on_a_three_month_holdout_and_forecasts_ahead(chain):
    trained = chain.trained["cost-forecast"]
    metrics = _evaluation(chain, "cost-forecast")["metrics"]
    # The configured model, the naive forecasts and the ensemble of the two best compete on the backtest.
    assert set(metrics["backtest_accuracy"]) == {"linear", "naive_last_month", "seasonal_naive", "ensemble"}
    assert metrics["model"] == max(metrics["backtest_accuracy"], key=metrics["backtest_accuracy"].get)
    assert set(metrics["baselines"]) == {"naive_last_month", "seasonal_naive"}
    for key in ("naive_accuracy", "mape", "mase", "interval_coverage"):
        assert math.isfinite(metrics[key]), key
    assert 0.0 <= metrics["interval_coverage"] <= 1.0
    forecast = pd.read_csv(Path(trained.outputs["model"].path) / "forecast.csv")
    # Exactly the next three calendar months after the data (which ends 2026-06-30), no partial fourth one.
    assert sorted(forecast.month.unique()) == ["2026-07", "2026-08", "2026-09"]
    assert len(forecast) == forecast.groupby(["service", "project_id"]).ngroups * CONFIG.forecast.horizon_months
    assert (forecast.lo <= forecast.forecast).all() and (forecast.forecast <= forecast.hi).all()
    daily = pd.read_csv(Path(trained.outputs["model"].path) / "forecast_daily.csv", parse_dates=["day"])
    assert daily.day.min() == pd.Timestamp("2026-07-01") and daily.day.max() == pd.Timestamp("2026-09-30")
    assert (daily.lo <= daily.yhat).all() and (daily.yhat <= daily.hi).all()
    monthly = pd.read_csv(Path(trained.outputs["model"].path) / "forecast_monthly.csv")
    assert set(monthly.level) == {"series", "service", "project", "total"}
    alerts = json.loads((Path(trained.outputs["evaluation"].path) / "budget_alerts.json").read_text())
    assert [(a["budget"], a["month"], a["alert"]) for a in alerts["budgets"]] == [
        ("everything", m, True) for m in ("2026-07", "2026-08", "2026-09")] + [
        ("ghost", m, False) for m in ("2026-07", "2026-08", "2026-09")]
    assert alerts["warnings"] == ["project 'nope' has no cost in the data; its forecast is $0"]
    logged = trained.outputs["metrics"].metadata
    assert logged["budget_p_exceed_everything"] == 1.0 and logged["budget_p_exceed_ghost"] == 0.0
    assert logged["budget_alerts"] == 3


def test_labeler_logs_a_confusion_matrix_per_label(chain):
    trained = chain.trained["resource-labeler"]
    confusion = json.loads((Path(trained.outputs["evaluation"].path) / "confusion.json").read_text())
    for target in ("owner", "cost_center", "plant"):
        logged = trained.outputs[f"{target}_confusion"].metadata["confusionMatrix"]
        assert [a["displayName"] for a in logged["annotationSpecs"]] == confusion[target]["labels"]
        assert [row["row"] for row in logged["rows"]] == confusion[target]["matrix"]


def test_anomaly_detector_logs_its_holdout_confusion_matrix(chain):
    trained = chain.trained["cost-anomaly"]
    logged = trained.outputs["confusion"].metadata["confusionMatrix"]
    assert [a["displayName"] for a in logged["annotationSpecs"]] == ["normal", "anomaly"]
    matrix = [row["row"] for row in logged["rows"]]
    evaluation = _evaluation(chain, "cost-anomaly")["metrics"]["evaluation"]
    assert evaluation["used"] == "ground_truth"  # the chain's synthetic data carries its truth
    truth = evaluation["ground_truth"]
    assert matrix[1][1] + matrix[0][1] == truth["flagged_cells"]
    assert matrix[1][0] + matrix[1][1] == truth["anomalous_cells"]


# ---- gates and registry --------------------------------------------------------------------------------------------

def test_check_gate_returns_the_evaluations_verdict(chain):
    for name in chain.trained:
        assert isinstance(chain.gates[name], bool), name
        assert chain.gates[name] == _evaluation(chain, name)["passed"], name
    # The config forces one verdict of each kind.
    assert chain.gates["cost-forecast"] is True
    labeler = _evaluation(chain, "resource-labeler")["metrics"]
    assert labeler["label_compliance_after"] < 1.0
    assert chain.gates["resource-labeler"] is False


def test_register_model_creates_version_1_as_champion(chain):
    assert chain.registered == "cost-forecast:v1"
    version_dir = chain.registry_dir / "cost-forecast" / "v1"
    entry = json.loads((version_dir / "entry.json").read_text())
    assert (version_dir / "model.joblib").exists() and (version_dir / "forecast.csv").exists()
    assert entry["name"] == "cost-forecast" and entry["version"] == 1
    assert entry["run_id"] == RUN_ID
    assert entry["config_digest"] == CONFIG.digest("forecast")  # what its training step was sent
    assert entry["primary_metric"] == "forecast_accuracy"
    assert entry["metrics"] == _evaluation(chain, "cost-forecast")["metrics"]
    assert entry["champion_when_registered"] is True
    assert json.loads((chain.registry_dir / "cost-forecast" / "aliases.json").read_text()) == \
        {"latest": 1, "champion": 1}
    registry = LocalRegistry(chain.registry_dir)
    assert registry.versions("cost-forecast") == [1]
    assert registry.model_dir("cost-forecast") == version_dir


def _register(registry: LocalRegistry, model_dir: Path, value: float, run_id: str) -> dict:
    return registry.register("cost-anomaly", model_dir, {"anomaly_f1": value, "precision": 0.5}, f"digest-{run_id}",
                             {"start": "2025-08-01", "end": "2026-06-30"}, run_id)


def test_registry_keeps_the_champion_when_a_later_model_is_worse(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.joblib").write_bytes(b"model")
    registry = LocalRegistry(tmp_path / "registry")

    first = _register(registry, model_dir, 0.90, "run-1")
    assert first["version"] == 1 and sorted(first["aliases"]) == ["champion", "latest"]

    worse = _register(registry, model_dir, 0.80, "run-2")
    assert worse["version"] == 2 and worse["aliases"] == ["latest"]
    assert worse["champion_when_registered"] is False
    assert registry.aliases("cost-anomaly") == {"latest": 2, "champion": 1}
    assert registry.entry("cost-anomaly", "champion")["run_id"] == "run-1"
    assert registry.model_dir("cost-anomaly") == tmp_path / "registry" / "cost-anomaly" / "v1"
    assert (registry.model_dir("cost-anomaly", "latest") / "model.joblib").read_bytes() == b"model"

    equal = _register(registry, model_dir, 0.90, "run-3")  # not worse than the champion: it takes over
    assert sorted(equal["aliases"]) == ["champion", "latest"]
    assert registry.aliases("cost-anomaly") == {"latest": 3, "champion": 3}
    assert registry.versions("cost-anomaly") == [1, 2, 3]
    for v in (1, 2, 3):
        assert (tmp_path / "registry" / "cost-anomaly" / f"v{v}" / "entry.json").exists()


def test_deploy_model_serves_the_new_champion_from_the_local_endpoint(chain):
    deployed = json.loads(deploy_model(registered=chain.registered, registry_dir=str(chain.registry_dir),
                                       config_json=CONFIG.for_step("deploy")).output)
    assert deployed["deployed"] is True and deployed["traffic"] == {"v1": 100}
    state = json.loads((chain.registry_dir / "cost-forecast" / "endpoint.json").read_text())
    assert state["model"] == "cost-forecast" and state["traffic"] == {"1": 100}


@pytest.mark.gcp
def test_register_and_deploy_components_with_the_vertex_backend(chain, monkeypatch):
    """The same two components, with `registry.backend: vertex`, call the real aiplatform SDK from their own
    processes (here against the recording fake; on Vertex AI with the pipeline runner's identity)."""
    from testsupport.fake_gcp import FakeGCP

    fake = FakeGCP()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake.endpoint)  # the component processes inherit it
        cfg = Config.model_validate({
            **CONFIG.model_dump(),
            "registry": {"path": "registry", "backend": "vertex"},
            "gcp": {"project": "acme-finops-dev", "region": "europe-west1", "api_endpoint": fake.endpoint},
            "pipeline": {"pipeline_root": "gs://acme-finops-dev-pipelines/root"},
            "deploy": {"serving_image": "europe-west1-docker.pkg.dev/acme-finops-dev/finops-ml/serving:0.1.0",
                       "canary_percent": 10, "keep_versions": 2}})
        fc = chain.trained["cost-forecast"]
        registered = register_from(model_uri=fc.outputs["model"].uri, evaluation_uri=fc.outputs["evaluation"].uri,
                                   registry_dir="", config_json=cfg.for_step("register"),
                                   run_id=RUN_ID).output
        assert registered == "cost-forecast:v1"
        deployed = json.loads(deploy_model(registered=registered, registry_dir="",
                                             config_json=cfg.for_step("deploy")).output)
        assert deployed["deployed"] is True and deployed["traffic"] == {"v1": 100}

        (upload,) = [r for r in fake.requests if r["path"].endswith("/models:upload")]
        assert upload["body"]["model"]["displayName"] == "cost-forecast"
        assert upload["body"]["model"]["labels"]["config_digest"] == cfg.digest("forecast") == CONFIG.digest("forecast")
        (imported,) = [r for r in fake.requests if r["path"].endswith("/evaluations:import")]
        metrics = _evaluation(chain, "cost-forecast")["metrics"]
        assert imported["body"]["modelEvaluation"]["metrics"]["forecast_accuracy"] == \
            pytest.approx(metrics["forecast_accuracy"])
        objects = {name for _, name in fake.objects}
        assert f"root/models/cost-forecast/{RUN_ID}/model.joblib" in objects  # PIPELINE_ROOT/models by default
        (deploy,) = [r for r in fake.requests if r["path"].endswith(":deployModel")]
        assert deploy["body"]["trafficSplit"] == {"0": 100}
    finally:
        fake.close()


# ---- report --------------------------------------------------------------------------------------------------------

def test_build_report_writes_html_with_plots_and_a_summary_of_the_gates(chain):
    html = Path(chain.report.outputs["report"].path).read_text()
    summary = json.loads(Path(chain.report.outputs["summary"].path).read_text())

    assert html.startswith("<!doctype html>")
    assert html.count("Plotly.newPlot") >= 3
    assert "Gates" in html and "forecast_accuracy" in html

    assert list(summary["gates"]) == ["forecast_accuracy", "forecast_interval_coverage", "anomaly_f1",
                                      "label_accuracy_owner",
                                      "label_accuracy_cost_center", "label_accuracy_plant", "label_compliance_after",
                                      "label_applied_precision"]
    for name in chain.trained:
        for gate, g in _evaluation(chain, name)["gates"].items():
            assert summary["gates"][gate] == g
    assert summary["all_gates_passed"] is False
    assert summary["reconciliation_diff"] == 0.0
    assert summary["rows"]["ingested"] == chain.ingest.outputs["metrics"].metadata["rows"]
    assert summary["rows"]["quarantined"] == 0 and summary["rows"]["duplicates"] == 0
    assert 0.0 <= summary["label_compliance_before"] <= 1.0
