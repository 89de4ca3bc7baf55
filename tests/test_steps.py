"""Pipeline steps when the data cannot train a model: the reason is recorded, the gates fail, the report builds."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from finops_ml.config import Config
from finops_ml.errors import InsufficientData
from finops_ml.models import labeler
from finops_ml.models.catalogue import ANOMALY, FORECAST, LABELER, MODELS
from finops_ml.training import steps
from finops_ml.training.report import build_summary, write_dashboard

REASON = "The labeler needs at least 20 labelled resources per label; the data holds 0."

pytestmark = pytest.mark.unit


def _resources() -> pd.DataFrame:
    return pd.DataFrame({"resource_name": ["a", "b"], "first_day": ["2025-01-01", "2025-02-01"],
                         "net_cost": [1.0, 2.0]})


def test_a_model_the_data_cannot_train_writes_its_reason_and_fails_its_gates(tmp_path, monkeypatch):
    def cannot_train(*args, **kwargs):
        raise InsufficientData(REASON)

    monkeypatch.setattr(labeler, "train_and_evaluate", cannot_train)
    path = tmp_path / "resources.parquet"
    _resources().to_parquet(path)
    evaluation = steps.train_labeler_step(str(path), "", Config(), str(tmp_path / "model"), str(tmp_path / "eval"))
    stored = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert stored == json.loads(json.dumps(evaluation))
    assert evaluation["trained"] is False and evaluation["not_trained_reason"] == REASON
    assert evaluation["passed"] is False and not steps.gate_step(str(tmp_path / "eval"))
    assert set(evaluation["gates"]) == set(MODELS["labeler"].gates)
    assert all(g["value"] is None and not g["passed"] for g in evaluation["gates"].values())
    window = evaluation["data_window"]
    assert {k: window[k] for k in ("start", "end")} == {"start": "2025-01-01", "end": "2025-02-01"}
    assert re.fullmatch(r"[0-9a-f]{16}", window["digest"])  # other data over the same dates is other data


def test_an_empty_window_has_no_data_window_instead_of_a_crash(tmp_path):
    evaluation = steps._finish(tmp_path, FORECAST, {}, Config(), pd.DataFrame({"day": []}), not_trained=REASON)
    assert evaluation["data_window"] is None and evaluation["passed"] is False


@pytest.mark.parametrize("missing", [FORECAST, ANOMALY, LABELER])
def test_summary_and_report_name_the_model_that_was_not_trained(tmp_path, missing):
    dirs = {name: tmp_path / name for name in (FORECAST, ANOMALY, LABELER)}
    evaluations = {}
    for name, d in dirs.items():
        d.mkdir()
        evaluations[name] = steps._finish(d, name, {}, Config(), pd.DataFrame({"day": ["2025-03-01"]}),
                                          not_trained=REASON)
    summary = build_summary({"read": 10, "rows": 10, "quarantined": 0, "duplicates": 0, "reconciliation_diff": None,
                             "total_net_cost": 1.0}, evaluations)
    assert summary["not_trained"] == {name: REASON for name in dirs}
    assert summary["all_gates_passed"] is False and summary["label_compliance_before"] is None
    write_dashboard(summary, dirs, tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert f"{missing} not trained: {REASON}" in page


def test_only_finite_numbers_reach_the_kfp_metrics_and_tables_are_flattened():
    metrics = {"a": 1, "b": 0.5, "nan": float("nan"), "inf": float("inf"), "flag": True, "table": {"x": 1},
               "name": "linear", "none": None, "rows": [1, 2], "baselines": {"naive": {"mape": 0.2, "bad": None}}}
    assert steps.loggable_metrics(metrics) == {"a": 1.0, "b": 0.5, "table_x": 1.0, "baseline_naive_mape": 0.2}


def test_a_step_whose_retry_succeeded_is_not_reported_as_failed():
    import io

    from pipelines.local import StepLog

    events = []
    log = StepLog(io.StringIO(), lambda task, what, seconds: events.append((task, what)))
    log.write("Executing task 'build-features'\nTask 'build-features' finished with status FAILURE\n"
              "Executing task 'build-features'\nTask 'build-features' finished with status SUCCESS\n"
              "Executing task 'train-labeler'\nTask 'train-labeler' finished with status FAILURE\n")
    assert log.failed == ["train-labeler"]
    assert events[-1] == ("train-labeler", "failure") and ("build-features", "success") in events


def test_a_weekly_retrain_registers_new_data_once_and_rescores_the_forecast_champion_on_its_holdout(tmp_path):
    import joblib

    from finops_ml.models import forecast
    from finops_ml.platform.registry import LocalRegistry
    from tests.test_forecast import _daily

    cfg = Config(forecast={"candidates": ["linear"], "backtest_origins": 1})
    registry_dir = str(tmp_path / "registry")
    runs = {}
    for run, days in (("run-1", 400), ("run-2", 431)):
        daily = tmp_path / f"{run}.parquet"
        _daily(days=days).to_parquet(daily, index=False)
        model, evaluation = tmp_path / run / "model", tmp_path / run / "evaluation"
        steps.train_forecast_step(str(daily), cfg, str(model), str(evaluation))
        runs[run] = steps.register_step(str(model), str(evaluation), registry_dir, cfg, run)
    registry = LocalRegistry(registry_dir)
    # The champion's data and config again (a cached or repeated run): it stands, nothing new is stored.
    champion_run = registry.entry(FORECAST, "champion")["run_id"]
    again = steps.register_step(str(tmp_path / champion_run / "model"), str(tmp_path / champion_run / "evaluation"),
                                registry_dir, cfg, "run-3")
    assert again["registered"] is False and again["run_id"] == champion_run and registry.versions(FORECAST) == [1, 2]

    comparison = runs["run-2"]["comparison"]
    assert comparison["basis"] == "the champion re-scored on this holdout"
    champion_model = joblib.load(registry.model_dir(FORECAST, 1) / "model.joblib")
    rescored = forecast.holdout_score(champion_model, _daily(days=431), 3, 3, 1)
    assert comparison["champion"] == pytest.approx(rescored["forecast_accuracy"])
    assert comparison["holdout"] == {"start": rescored["holdout_start"], "end": rescored["holdout_end"]}
    assert comparison["champion_stored"] == runs["run-1"]["metrics"]["forecast_accuracy"]
    assert runs["run-2"]["champion_when_registered"] is (comparison["challenger"] >= comparison["champion"])


def _register_two_runs(tmp_path, train, configs: dict, inputs: dict) -> dict:
    """Train and register run-1 then run-2 (each with its own config and data); their register step outputs."""
    registry_dir = str(tmp_path / "registry")
    out = {}
    for run, cfg in configs.items():
        model, evaluation = tmp_path / run / "model", tmp_path / run / "evaluation"
        train(inputs[run], cfg, str(model), str(evaluation))
        out[run] = steps.register_step(str(model), str(evaluation), registry_dir, cfg, run)
    return out


def test_a_retrained_anomaly_detector_is_compared_with_the_champions_settings_on_its_own_holdout(tmp_path):
    from finops_ml.models.anomaly import CostAnomalyDetector, train_and_evaluate
    from finops_ml.models.anomaly_eval import spec_from_config
    from tests.test_anomaly import Org

    daily = Org(n_cells=4).daily()
    inputs = {}
    for run, days in (("run-1", 300), ("run-2", 330)):  # a month more data: another holdout
        inputs[run] = str(tmp_path / f"{run}.parquet")
        daily[daily.day < daily.day.min() + pd.Timedelta(days=days)].to_parquet(inputs[run], index=False)
    # The champion was trained with a looser alarm budget than the challenger.
    configs = {"run-1": Config(anomaly={"injection_draws": 1, "alarm_budget_up": 0.05, "alarm_budget_down": 0.05}),
               "run-2": Config(anomaly={"injection_draws": 1})}
    runs = _register_two_runs(tmp_path, lambda path, cfg, m, e: steps.train_anomaly_step(path, "", "", "", cfg, m, e),
                              configs, inputs)

    comparison = runs["run-2"]["comparison"]
    assert comparison["basis"] == "the champion re-scored on this holdout"
    a = configs["run-1"].anomaly
    injection = {"draws": 1, "seed": configs["run-2"].seed, "spec": spec_from_config(configs["run-2"].anomaly),
                 "cells_share": a.injection_cells_share, "max_clean_alarm_rate": a.injection_max_clean_alarm_rate}
    direct = train_and_evaluate(pd.read_parquet(inputs["run-2"]), None, 3,
                                detector=CostAnomalyDetector.from_config(a, configs["run-1"].seed),
                                injection=injection)["metrics"]
    assert comparison["champion"] == pytest.approx(direct["anomaly_f1"])
    assert comparison["holdout"] != comparison["champion_holdout"]
    assert runs["run-2"]["champion_when_registered"] is (comparison["challenger"] >= comparison["champion"])


def test_a_retrained_labeler_is_compared_with_the_champions_settings_on_its_own_resources(tmp_path):
    from tests.test_labeler import _partly_unlabelled

    resources, _ = _partly_unlabelled(per_kind=6)
    resources["first_day"] = pd.Timestamp("2025-01-01") + pd.to_timedelta(np.arange(len(resources)) % 60, "D")
    inputs = {}
    for run, last in (("run-1", 40), ("run-2", 60)):  # resources that appeared since: another data window
        inputs[run] = str(tmp_path / f"{run}.parquet")
        resources[resources.first_day < pd.Timestamp("2025-01-01") + pd.Timedelta(days=last)].to_parquet(
            inputs[run], index=False)
    configs = {"run-1": Config(labeler={"confidence_threshold": 0.95, "target_precision": 0.0}),
               "run-2": Config(labeler={"target_precision": 0.0})}
    runs = _register_two_runs(tmp_path, lambda path, cfg, m, e: steps.train_labeler_step(path, "", cfg, m, e),
                              configs, inputs)

    comparison = runs["run-2"]["comparison"]
    assert comparison["basis"] == "the champion re-scored on this holdout"
    lc = configs["run-2"].labeler
    direct = labeler.evaluate(lambda ts: labeler.ResourceLabeler(tuple(ts), 0.95, configs["run-1"].seed, 0.0),
                              pd.read_parquet(inputs["run-2"]), lc.targets, lc.test_share, configs["run-2"].seed)
    assert comparison["champion"] == pytest.approx(min(direct["metrics"][f"label_accuracy_{t}"] for t in lc.targets))
    assert runs["run-2"]["champion_when_registered"] is (comparison["challenger"] >= comparison["champion"])
