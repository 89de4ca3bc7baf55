"""Model monitoring: PSI, the champion's reference written at training, drift of a shifted world, the alarm rate and
the forecast's recent interval coverage, alerts through the stream's real senders (loopback SMTP and webhook)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from finops_ml.config import Config, MonitoringConfig, load_config
from finops_ml.errors import FinopsError
from finops_ml.fileio import read_json
from finops_ml.models.catalogue import ANOMALY, FORECAST, LABELER
from finops_ml.platform.registry import LocalRegistry
from finops_ml.training import monitoring, steps
from finops_ml.training.dashboard import write_dashboard
from finops_ml.training.report import build_summary
from testsupport.alerts import Webhook, smtp_recorder
from testsupport.registry import SMALL, train_small_registry

pytestmark = pytest.mark.unit
VIEW_NAMES = ("daily_cost", "resource_daily_cost", "resources")


def _strict_loads(text: str):
    def refuse(name):
        raise AssertionError(f"{name} in JSON")

    return json.loads(text, parse_constant=refuse)


# ---- PSI ---------------------------------------------------------------------------------------------------------

def test_psi_is_zero_for_identical_shares_and_has_its_textbook_value():
    assert monitoring.psi([0.25] * 4, [0.25] * 4) == 0.0
    # (0.9 - 0.5) ln(0.9/0.5) + (0.1 - 0.5) ln(0.1/0.5)
    assert monitoring.psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.4 * math.log(1.8) + 0.4 * math.log(5), rel=1e-9)
    # an empty bin counts as PSI_EPSILON: finite
    assert math.isfinite(monitoring.psi([0.5, 0.5, 0.0], [0.4, 0.4, 0.2]))


def test_psi_over_decile_bins_tells_a_shifted_distribution_from_another_sample_of_the_same():
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, 5000)
    edges = monitoring.bin_edges(reference)
    assert len(edges) == monitoring.BINS - 1
    ref = monitoring.proportions(reference, edges)
    assert ref == pytest.approx([0.1] * 10, abs=1e-3)
    same = monitoring.psi(ref, monitoring.proportions(rng.normal(0, 1, 5000), edges))
    shifted = monitoring.psi(ref, monitoring.proportions(rng.normal(0.5, 1, 5000), edges))
    wider = monitoring.psi(ref, monitoring.proportions(rng.normal(0, 2, 5000), edges))
    assert same < 0.02 and shifted > 0.2 and wider > 0.2


def test_a_psi_from_too_few_values_is_shown_but_judges_nothing():
    rng = np.random.default_rng(1)
    reference = {"features": {"x": monitoring.feature_reference(pd.DataFrame({"x": rng.normal(0, 1, 30)}))["x"]}}
    current = pd.DataFrame({"x": rng.normal(1, 1, 30)})
    (few,) = monitoring.feature_drift(reference, current, 0.2, min_values=100)
    (judged,) = monitoring.feature_drift(reference, current, 0.2, min_values=30)
    assert few["psi"] == judged["psi"] > 0.2
    assert few["status"] == "too few" and judged["status"] == "drift"


def test_a_discrete_feature_has_its_duplicate_edges_merged():
    values = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3] * 10)
    edges = monitoring.bin_edges(values)
    assert edges == [0.0, 1.0, 2.0, 3.0]  # values of the data, each once: bins (-inf, 0], (0, 1], ..., (3, inf)
    assert sum(monitoring.proportions(values, edges)) == pytest.approx(1.0)
    assert monitoring.proportions([np.nan, np.inf], edges) == [0.0] * (len(edges) + 1)  # nothing finite: no share


# ---- the champion's reference and the comparison ----------------------------------------------------------------

def _views(root: Path, overrides: dict) -> dict[str, pd.DataFrame]:
    """The three feature views of a generated world (generate, ingest, features: no training)."""
    from finops_ml.synthetic.generator import generate

    cfg = Config.model_validate(overrides)
    generate(cfg.generator, cfg.seed, root / "generated")
    steps.ingest_step(str(root / "generated" / "events.jsonl"), "", str(root / "events"))
    paths = {name: str(root / f"{name}.parquet") for name in VIEW_NAMES}
    steps.features_step(str(root / "events"), *paths.values())
    return {name: pd.read_parquet(path) for name, path in paths.items()}


@pytest.fixture(scope="module")
def champion(tmp_path_factory) -> dict:
    """A registry of the three models trained on the small world (seed 42, 11 months)."""
    return train_small_registry(tmp_path_factory.mktemp("champion"))


@pytest.fixture(scope="module")
def worlds_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("worlds")


@pytest.fixture(scope="module")
def worlds(worlds_dir, champion) -> dict[str, dict[str, pd.DataFrame]]:
    """The same world (the champion's own views), the same organisation two months later, and that later world with
    its daily usage noise raised (generator.noise_sigma 0.06 -> 0.3); generated under `worlds_dir`/NAME."""
    base = worlds_dir
    later = {**SMALL["generator"], "months": 13}
    return {"same": {k: champion[k] for k in VIEW_NAMES},
            "later": _views(base / "later", {**SMALL, "generator": later}),
            "noisy": _views(base / "noisy", {**SMALL, "generator": {**later, "noise_sigma": 0.3}})}


@pytest.mark.slow  # the first of the tests sharing the trained champion and the generated worlds
def test_each_trained_model_keeps_its_reference_in_its_registered_version(champion):
    for name, features in ((FORECAST, {"log_daily_cost", "weekly_log_change", "monthly_log_growth"}),
                           (ANOMALY, {"log_resource_cost", "log_ratio_to_28d_median", "share_of_cell"}),
                           (LABELER, {"log_cost_per_day", "new_in_window", "skus", "name_length", "labels_carried"})):
        path = LocalRegistry(champion["registry"]).model_dir(name, "champion") / monitoring.REFERENCE
        text = path.read_text()
        reference = _strict_loads(text)
        assert reference["model"] == name and reference["statistic"] == "PSI"
        assert reference["window_days"] == monitoring.REFERENCE_DAYS and reference["window_end"]
        assert set(reference["features"]) == features
        for f in reference["features"].values():
            assert len(f["proportions"]) == len(f["edges"]) + 1 and sum(f["proportions"]) == pytest.approx(1.0)
            assert f["count"] > 0
    anomaly = read_json(LocalRegistry(champion["registry"]).model_dir(ANOMALY, "champion") / monitoring.REFERENCE)
    assert anomaly["scores"]["alarm"]["cells"] > 0
    forecast = read_json(LocalRegistry(champion["registry"]).model_dir(FORECAST, "champion") / monitoring.REFERENCE)
    assert 0 <= forecast["scores"]["interval_coverage_series"] <= 1


def test_the_same_world_is_stable_and_a_noisier_one_drifts(champion, worlds):
    registry, cfg = LocalRegistry(champion["registry"]), MonitoringConfig()
    same = monitoring.monitor(worlds["same"], registry, cfg)
    assert same["drift"] is False and same["drifted"] == []
    for m in same["models"].values():
        assert m["status"] == "stable" and all(f["psi"] == 0.0 for f in m["features"])
    assert same["models"][ANOMALY]["scores"]["alarm_rate"]["alarm_rate_ratio"] == pytest.approx(1.0)

    later = monitoring.monitor(worlds["later"], registry, cfg)
    noisy = monitoring.monitor(worlds["noisy"], registry, cfg)
    psi = {k: {(n, f["feature"]): f["psi"] for n, m in s["models"].items() for f in m["features"]}
           for k, s in (("later", later), ("noisy", noisy))}
    # two more months of the same organisation: no feature drifts
    assert later["drifted"] == [] or all(d["check"] == "interval_error" for d in later["drifted"]), later["drifted"]
    for key in ((ANOMALY, "log_ratio_to_28d_median"), (FORECAST, "weekly_log_change")):
        assert psi["later"][key] < cfg.psi_threshold < psi["noisy"][key], key
    assert noisy["drift"] and {"model": ANOMALY, "check": "log_ratio_to_28d_median"} in noisy["drifted"]
    # the small world has a few dozen resources: the labeler's PSIs are shown, and judge nothing
    assert {f["status"] for f in noisy["models"][LABELER]["features"]} == {"too few"}
    assert noisy["models"][LABELER]["status"] == "stable"
    # the champion detector alarms far more often on the noisy world than in its training window
    assert noisy["models"][ANOMALY]["scores"]["alarm_rate"]["status"] == "drift"
    assert later["models"][ANOMALY]["scores"]["alarm_rate"]["alarm_rate_ratio"] < cfg.alarm_rate_ratio
    _strict_loads(json.dumps(noisy, allow_nan=False))


def test_the_forecast_is_checked_on_the_months_closed_since_the_champion(champion, worlds):
    check = monitoring.monitor(worlds["later"], LocalRegistry(champion["registry"]),
                               MonitoringConfig())["models"][FORECAST]["scores"]["interval_error"]
    assert check["months"] and check["series_months"] > 0
    assert 0 <= check["coverage"] <= 1 and check["accuracy"] is not None
    assert check["status"] in ("stable", "drift") and check["threshold"] == pytest.approx(
        check["reference_coverage"] - 0.15, abs=1e-6)  # both written with 6 decimals
    same = monitoring.monitor(worlds["same"], LocalRegistry(champion["registry"]),
                              MonitoringConfig())["models"][FORECAST]["scores"]["interval_error"]
    assert same["status"] == "n/a" and "no month" in same["reason"] and same["coverage"] is None


def test_no_champion_means_no_reference_and_no_failure(tmp_path, worlds):
    section = monitoring.monitor(worlds["same"], LocalRegistry(tmp_path / "empty"), MonitoringConfig())
    assert section["drift"] is False
    for m in section["models"].values():
        assert m["status"] == "no reference" and m["reason"] == "no champion yet" and m["features"] == []
    assert monitoring.kfp_metrics(section) == {"drift_checks_failed": 0.0}


def test_a_champion_registered_before_references_says_so(tmp_path, champion, worlds):
    import shutil

    root = tmp_path / "registry"
    shutil.copytree(champion["registry"], root)
    (LocalRegistry(root).model_dir(LABELER, "champion") / monitoring.REFERENCE).unlink()
    m = monitoring.monitor(worlds["same"], LocalRegistry(root), MonitoringConfig())["models"][LABELER]
    assert m["status"] == "no reference" and "registered without a reference.json" in m["reason"]


def test_the_kfp_metrics_are_drift_numbers_only(champion, worlds):
    section = monitoring.monitor(worlds["noisy"], LocalRegistry(champion["registry"]), MonitoringConfig())
    metrics = monitoring.kfp_metrics(section)
    assert metrics["drift_checks_failed"] == len(section["drifted"]) > 0
    assert "drift_anomaly_log_ratio_to_28d_median_psi" in metrics and "drift_anomaly_alarm_rate_ratio" in metrics
    assert "drift_forecast_recent_interval_coverage" in metrics and "drift_labeler_labels_carried_psi" in metrics
    assert all(k.startswith("drift_") and isinstance(v, float) and math.isfinite(v) for k, v in metrics.items())


# ---- the pipeline step: summary, dashboard, alerts ---------------------------------------------------------------

def _write_views(root: Path, views: dict[str, pd.DataFrame]) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in VIEW_NAMES:
        views[name].to_parquet(root / f"{name}.parquet", index=False)
        paths.append(str(root / f"{name}.parquet"))
    return paths


def test_drift_is_alerted_once_per_run_and_check_through_slack_and_email(tmp_path, champion, worlds, monkeypatch):
    hook = Webhook()
    try:
        with smtp_recorder() as (controller, handler):
            monkeypatch.setenv("FINOPS_SLACK_WEBHOOK_URL", hook.url)
            cfg = Config().with_updates("test", stream={"smtp_host": "127.0.0.1", "smtp_port": controller.port,
                                                        "email_to": ["finops@example.com"],
                                                        "retry_attempts": 1})
            cfg = Config.from_json(cfg.for_step("monitor"))  # what the pipeline's step is sent
            paths = _write_views(tmp_path / "views", worlds["noisy"])
            first = steps.monitor_step(*paths, str(champion["registry"]), cfg, "run-1", str(tmp_path / "m1"))
            drifted = len(first["drifted"])
            assert drifted >= 2 and first["alerts"]["submitted"] == drifted
            assert first["alerts"]["channels"] == ["email", "slack"] and first["alerts"]["pending"] == {
                "email": 0, "slack": 0}
            # the step retried (same run id): nothing is sent twice
            again = steps.monitor_step(*paths, str(champion["registry"]), cfg, "run-1", str(tmp_path / "m2"))
            assert again["alerts"]["submitted"] == 0
            assert len(hook.received) == drifted and len(handler.messages) == drifted
            subjects = sorted(" ".join(str(m["Subject"]).split()) for m in handler.messages)  # unfolded
            assert any("cost-anomaly log_ratio_to_28d_median: PSI" in s for s in subjects), subjects
            assert all(s.startswith("Model drift: ") for s in subjects)
            assert {m["text"] for m in hook.received} == set(subjects)
            assert "drift/run-1/cost-anomaly/log_ratio_to_28d_median" in {
                m["X-Finops-Anomaly-Id"] for m in handler.messages}
            # the written section is strict JSON
            _strict_loads((tmp_path / "m1" / "monitoring.json").read_text())
    finally:
        hook.close()


def test_no_channel_configured_sends_nothing_and_monitoring_can_be_turned_off(tmp_path, champion, worlds,
                                                                            monkeypatch):
    monkeypatch.delenv("FINOPS_SLACK_WEBHOOK_URL", raising=False)
    paths = _write_views(tmp_path / "views", worlds["noisy"])
    section = steps.monitor_step(*paths, str(champion["registry"]), Config(), "run-2", str(tmp_path / "m"))
    assert section["drift"] and section["alerts"]["channels"] == [] and section["alerts"]["submitted"] == 0
    off = Config().with_updates("test", monitoring={"enabled": False})
    section = steps.monitor_step(*paths, str(champion["registry"]), off, "run-3", str(tmp_path / "off"))
    assert section == {"enabled": False, "models": {}, "drifted": [], "drift": False}


def test_the_dashboard_shows_psi_per_feature_with_its_threshold_and_status(tmp_path, champion, worlds):
    section = {"enabled": True, **monitoring.monitor(worlds["noisy"], LocalRegistry(champion["registry"]),
                                                     MonitoringConfig())}
    dirs = {name: tmp_path / name for name in (FORECAST, ANOMALY, LABELER)}
    evaluations = {}
    for name, d in dirs.items():
        d.mkdir()
        evaluations[name] = steps._finish(d, name, {}, Config(), pd.DataFrame({"day": ["2025-03-01"]}),
                                          not_trained="test")
    summary = build_summary({"read": 1, "rows": 1, "quarantined": 0, "duplicates": 0, "reconciliation_diff": None,
                             "total_net_cost": 1.0}, evaluations)
    summary["monitoring"] = section
    write_dashboard(summary, dirs, tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert '<section id="monitoring"><h2>Model monitoring</h2>' in page
    f = next(f for f in section["models"][ANOMALY]["features"] if f["feature"] == "log_ratio_to_28d_median")
    assert (f"<td>log_ratio_to_28d_median</td><td class=\"n\">{f['psi']:.3f}</td><td class=\"n\">0.2</td>"
            "<td class=\"fail\">drift</td>") in page
    assert "alarm rate (champion detector" in page and 'id="monitoring-verdict" class="fail"' in page


def test_the_monitor_command_compares_an_export_with_the_champions(tmp_path, champion, worlds, worlds_dir):
    from typer.testing import CliRunner

    from finops_cli.main import app

    result = CliRunner().invoke(app, ["monitor", str(worlds_dir / "noisy" / "generated" / "events.jsonl"),
                                      "--out", str(tmp_path / "m"), "--registry", str(champion["registry"])])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "log_ratio_to_28d_median" in text and "drift" in text and "alarm rate ratio" in text
    section = _strict_loads((tmp_path / "m" / "monitoring.json").read_text())
    assert section["drift"] and "alerts" not in section  # --alert not given: nothing sent
    missing = CliRunner().invoke(app, ["monitor", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 1 and "Traceback" not in missing.output


# ---- configuration -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value, message", [
    ("psi_threshold", -1, "key 'monitoring.psi_threshold' is invalid"),
    ("alarm_rate_ratio", 0.5, "key 'monitoring.alarm_rate_ratio' is invalid"),
    ("coverage_drop", 2, "key 'monitoring.coverage_drop' is invalid"),
    ("psi", 0.2, "unknown key 'monitoring.psi'"),
])
def test_a_bad_monitoring_key_names_the_file_and_the_key(tmp_path, key, value, message):
    path = tmp_path / "bad.yaml"
    path.write_text(f"monitoring:\n  {key}: {value}\n")
    with pytest.raises(FinopsError, match=f"Config file {path}: {message}"):
        load_config(path)


def test_the_shipped_configs_carry_the_monitoring_thresholds():
    for name in ("local", "dev", "prod"):
        m = load_config(Path(__file__).parents[1] / "configs" / f"{name}.yaml").monitoring
        assert (m.psi_threshold, m.alarm_rate_ratio, m.coverage_drop) == (0.2, 2.0, 0.15)


# ---- Vertex AI Model Monitoring on the deployed endpoints (real aiplatform client, loopback fake) -----------------

@pytest.mark.gcp
def test_deploying_the_labeler_creates_then_updates_its_endpoints_vertex_monitoring_job(gcp, tmp_path):
    from finops_ml.platform.deploy import deploy_vertex
    from finops_ml.platform.vertex_registry import VertexRegistry

    cfg = _vertex_cfg(gcp, monitoring={"vertex_alert_emails": ["finops@example.com"], "vertex_sample_rate": 0.25})
    registry = VertexRegistry(cfg)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.joblib").write_bytes(b"fitted model")
    window = {"start": "2025-01-01", "end": "2025-06-30"}  # one holdout: the better model becomes champion

    def register(i: int) -> int:
        return registry.register(LABELER, model_dir, {"label_accuracy_min": 0.9 + i / 100}, f"digest-{i}", window,
                                 f"run-{i}")["version"]

    first = deploy_vertex(_step(cfg, "deploy"), LABELER, register(0))
    assert first["monitoring"]["configured"] and first["monitoring"]["action"] == "created"
    (create,) = gcp.sent("POST", r"/modelDeploymentMonitoringJobs$")
    job = create["body"]
    assert job["displayName"] == "finops-ml-resource-labeler-monitoring"
    assert job["endpoint"] == first["endpoint"]
    (objective,) = job["modelDeploymentMonitoringObjectiveConfigs"]
    assert objective["deployedModelId"] == first["deployed_model_id"]
    drift = objective["objectiveConfig"]["predictionDriftDetectionConfig"]["driftThresholds"]
    assert drift == {f: {"value": 0.3} for f in ("service", "project_id", "region", "env", "workload")}
    assert job["loggingSamplingStrategy"] == {"randomSampleConfig": {"sampleRate": 0.25}}
    assert job["modelDeploymentMonitoringScheduleConfig"] == {"monitorInterval": "86400s"}
    assert job["modelMonitoringAlertConfig"]["emailAlertConfig"] == {"userEmails": ["finops@example.com"]}
    assert job["modelMonitoringAlertConfig"]["enableLogging"] is True
    schema = job["analysisInstanceSchemaUri"]
    bucket, _, name = schema.removeprefix("gs://").partition("/")
    assert name.endswith("resource-labeler/monitoring-instance-schema.yaml")
    assert b"workload:\n    type: string" in gcp.objects[(bucket, name)]

    second = deploy_vertex(_step(cfg, "deploy"), LABELER, register(1))  # the canary beside v1: the job now watches both
    assert second["monitoring"]["action"] == "updated"
    assert len(gcp.sent("POST", r"/modelDeploymentMonitoringJobs$")) == 1
    (patch,) = gcp.sent("PATCH", r"/modelDeploymentMonitoringJobs/")
    assert "modelDeploymentMonitoringObjectiveConfigs" in patch["query"]["updateMask"].split(",")
    watched = {o["deployedModelId"] for o in patch["body"]["modelDeploymentMonitoringObjectiveConfigs"]}
    assert watched == {first["deployed_model_id"], second["deployed_model_id"]}
    assert not gcp.unknown()


@pytest.mark.gcp
def test_vertex_monitoring_is_not_configured_where_it_does_not_apply_or_is_off(gcp, tmp_path):
    from finops_ml.platform.deploy import deploy_vertex
    from finops_ml.platform.vertex_registry import VertexRegistry

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.joblib").write_bytes(b"fitted model")
    cfg = _vertex_cfg(gcp)
    v = VertexRegistry(cfg).register(ANOMALY, model_dir, {"anomaly_f1": 0.9}, "d", {"start": "2025-01-01",
                                                                                 "end": "2025-02-01"}, "r")
    out = deploy_vertex(_step(cfg, "deploy"), ANOMALY, v["version"])
    assert out["deployed"] and out["monitoring"]["configured"] is False and "arrays" in out["monitoring"]["reason"]
    off = _vertex_cfg(gcp, monitoring={"vertex_enabled": False})
    v = VertexRegistry(off).register(LABELER, model_dir, {"label_accuracy_min": 0.9}, "d", {"start": "2025-01-01",
                                                                                         "end": "2025-02-01"}, "r")
    assert deploy_vertex(_step(off, "deploy"), LABELER, v["version"])["monitoring"] == {
        "configured": False, "reason": "monitoring.vertex_enabled is false"}
    assert gcp.sent("POST", r"/modelDeploymentMonitoringJobs$") == [] and not gcp.unknown()


@pytest.mark.gcp
def test_on_vertex_the_champions_reference_is_read_from_its_artifacts(gcp, champion, worlds):
    from finops_ml.platform.registry import registry_for
    from finops_ml.platform.vertex_registry import VertexRegistry

    cfg = _vertex_cfg(gcp)
    local = LocalRegistry(champion["registry"])
    VertexRegistry(cfg).register(LABELER, local.model_dir(LABELER, "champion"), {"label_accuracy_min": 0.9}, "d",
                                 {"start": "2025-01-01", "end": "2025-02-01"}, "r")
    monitor_cfg = _step(cfg, "monitor")
    section = monitoring.monitor(worlds["same"], registry_for(monitor_cfg, "unused"), monitor_cfg.monitoring)
    labeler = section["models"][LABELER]
    assert labeler["status"] == "stable" and labeler["champion_version"] == 1
    assert all(f["psi"] == 0.0 for f in labeler["features"])
    assert section["models"][FORECAST]["status"] == "no reference"  # never registered on Vertex here
    assert section["models"][FORECAST]["reason"] == "no champion yet"
    assert not gcp.unknown()


def _vertex_cfg(fake, **updates) -> Config:
    from tests.test_vertex import _cfg

    return _cfg(fake, **updates)


def _step(cfg: Config, step: str) -> Config:
    """What the pipeline's STEP is sent: its sections only (reading another one raises)."""
    return Config.from_json(cfg.for_step(step))


from tests import test_vertex  # noqa: E402

gcp = test_vertex.gcp  # the fixture: the loopback fake of the Google APIs, as in test_vertex.py


def test_strict_makes_any_result_strict_json():
    import numpy as np

    from finops_ml.fileio import strict

    value = {"nan": float("nan"), "inf": np.float64("inf"), "n": np.int64(3), "ok": np.bool_(True),
             "rows": [1.5, np.float32(-np.inf), (np.nan,)], "text": "NaN"}
    out = _strict_loads(json.dumps(strict(value), allow_nan=False))
    assert out == {"nan": None, "inf": None, "n": 3, "ok": True, "rows": [1.5, None, [None]], "text": "NaN"}
