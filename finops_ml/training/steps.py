"""One function per pipeline step: read inputs from paths, call the library, write outputs to paths.

KFP components (in `components/`) are a few lines around these, so every step is testable without KFP
and the same code runs on the local runner and on Vertex AI. Each training step writes:
  MODEL_DIR/model.joblib          the fitted model
  EVAL_DIR/metrics.json           held-out metrics (what the gates read)
  EVAL_DIR/*.parquet              small tables the report plots
  EVAL_DIR/rescore/               what re-scoring a champion on this holdout needs (its tables, plan.json)
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import joblib
import pandas as pd

from finops_ml.config import Config
from finops_ml.data.ingest import ingest, reconcile, require_billing_rows
from finops_ml.data.warehouse import export_feature_view
from finops_ml.errors import InsufficientData
from finops_ml.fileio import atomic_path, read_json, write_json
from finops_ml.models import anomaly, forecast, labeler
from finops_ml.models.catalogue import ANOMALY, FORECAST, LABELER, by_name
from finops_ml.models.label_values import canonical_labels
from finops_ml.platform.registry import LocalRegistry, registry_for
from finops_ml.training import gates, monitoring


def _dirs(*paths: str | Path) -> list[Path]:
    out = []
    for p in paths:
        p = Path(p)
        p.mkdir(parents=True, exist_ok=True)
        out.append(p)
    return out


BIGQUERY_SOURCE = "bigquery_source.json"  # in the events artifact: the rows stay in BigQuery


def ingest_step(source: str, control_totals: str, events_dir: str) -> dict:
    """The events table; for a BigQuery export, only its totals: the feature views will run in BigQuery."""
    if not source.startswith("bq://"):
        return require_billing_rows(ingest(source, events_dir, control_totals or None))
    from finops_ml.data.sources.bigquery import summarise_bigquery

    (events_dir,) = _dirs(events_dir)
    totals = summarise_bigquery(source)
    reconciliation = reconcile(totals["cost_by_invoice_month"], control_totals) if control_totals else None
    summary = {"source": source, "read": totals["rows"], "rows": totals["rows"], "quarantined": 0, "duplicates": 0,
               "table_rows": totals["rows"], "cost_by_invoice_month": totals["cost_by_invoice_month"],
               "total_net_cost": round(sum(totals["cost_by_invoice_month"].values()), 2),
               "reconciliation": reconciliation,
               "reconciliation_diff": reconciliation["diff"] if reconciliation else None}
    write_json(events_dir / BIGQUERY_SOURCE, {"source": source})
    write_json(events_dir / "ingest_summary.json", summary)
    return summary


def features_step(events_dir: str, daily_cost_path: str, resource_daily_cost_path: str,
                  resources_path: str) -> dict:
    """The feature views, run by DuckDB over the events table, or by BigQuery over a BigQuery source."""
    outputs = {"daily_cost": daily_cost_path, "resource_daily_cost": resource_daily_cost_path,
               "resources": resources_path}
    bigquery_source = Path(events_dir) / BIGQUERY_SOURCE
    if bigquery_source.exists():
        from finops_ml.data.sources.bigquery import default_client, parse_bq_uri
        from finops_ml.data.warehouse import run_feature_view_bigquery

        source = read_json(bigquery_source)["source"]
        client = default_client(parse_bq_uri(source)[0])
        for name, path in outputs.items():
            run_feature_view_bigquery(name, source, client).to_parquet(path, index=False)
    else:
        for name, path in outputs.items():
            export_feature_view(name, Path(events_dir) / "events.parquet", path)
    daily = pd.read_parquet(daily_cost_path, columns=["day", "service", "project_id"])
    return {"daily_cells": len(daily), "series": int(daily.groupby(["service", "project_id"]).ngroups),
            "resources": len(pd.read_parquet(resources_path, columns=["resource_name"])),
            "first_day": str(daily.day.min()), "last_day": str(daily.day.max())}


def train_forecast_step(daily_cost_path: str, cfg: Config, model_dir: str, eval_dir: str) -> dict:
    """The cost forecast, trained on the daily cost as billed.

    MODEL_DIR: forecast.csv (monthly per series), forecast_monthly.csv (also the totals per service, project and
    all), forecast_daily.csv (per series and day), each with its interval lo..hi.
    EVAL_DIR: the same tables as Parquet, the holdout, and budget_alerts.json / .csv (one row per budget and month).
    """
    model_dir, eval_dir = _dirs(model_dir, eval_dir)
    daily = pd.read_parquet(daily_cost_path)
    f = cfg.forecast
    try:
        result = forecast.train_and_evaluate(daily, f.candidates, f.holdout_months, f.horizon_months,
                                             f.backtest_origins, f.interval, cfg.seed, cfg.budgets)
    except InsufficientData as exc:
        return _finish(eval_dir, FORECAST, {}, cfg, daily, not_trained=str(exc))
    joblib.dump(result["model"], model_dir / "model.joblib")
    _save_rescore_inputs(eval_dir, {"daily_cost": daily},
                         {"holdout_months": f.holdout_months, "horizon_months": f.horizon_months,
                          "backtest_origins": f.backtest_origins})
    for name in ("forecast", "forecast_monthly", "forecast_daily"):
        with atomic_path(model_dir / f"{name}.csv") as tmp:
            result[name].to_csv(tmp, index=False)
    for name in ("holdout", "forecast", "forecast_monthly", "forecast_daily", "holdout_levels", "history",
                 "holdout_curve", "future_curve"):
        with atomic_path(eval_dir / f"{name}.parquet") as tmp:
            result[name].to_parquet(tmp, index=False)
    alerts = result["budget_alerts"]
    with atomic_path(eval_dir / "budget_alerts.csv") as tmp:
        alerts.to_csv(tmp, index=False)
    write_json(eval_dir / "budget_alerts.json", {"budgets": alerts.to_dict(orient="records"),
                                                 "warnings": sorted({w for w in alerts["warning"] if w})})
    monitoring.write_reference(model_dir, monitoring.build_reference(FORECAST, {"daily_cost": daily},
                                                                     metrics=result["metrics"]))
    return _finish(eval_dir, FORECAST, result["metrics"], cfg, daily)


def train_anomaly_step(resource_daily_cost_path: str, resources_path: str, labels_path: str, feedback_path: str,
                       cfg: Config, model_dir: str, eval_dir: str) -> dict:
    """The detector on daily cost per resource (it judges the cells they add up to), trained without labels; the
    users' feedback (anomalies marked expected / unexpected) refines its thresholds, and ground truth (synthetic
    data) replaces them. Evaluated by injection into the holdout, and against the truth and the verdicts."""
    from finops_ml.models.anomaly_eval import spec_from_config

    model_dir, eval_dir = _dirs(model_dir, eval_dir)
    daily = pd.read_parquet(resource_daily_cost_path)
    resources = pd.read_parquet(resources_path) if resources_path else None
    truth = pd.read_csv(labels_path) if labels_path else None
    feedback = anomaly.read_feedback(feedback_path) if feedback_path and Path(feedback_path).exists() else None
    a = cfg.anomaly
    injection = {"draws": a.injection_draws, "seed": cfg.seed, "spec": spec_from_config(a),
                 "cells_share": a.injection_cells_share, "max_clean_alarm_rate": a.injection_max_clean_alarm_rate}
    try:
        result = anomaly.train_and_evaluate(daily, truth, a.holdout_months, resources=resources, feedback=feedback,
                                            detector=anomaly.CostAnomalyDetector.from_config(a, cfg.seed),
                                            injection=injection)
    except InsufficientData as exc:
        return _finish(eval_dir, ANOMALY, {}, cfg, daily, not_trained=str(exc))
    joblib.dump(result["model"], model_dir / "model.joblib")
    _save_rescore_inputs(eval_dir, {"daily": daily, "resources": resources, "truth": truth, "feedback": feedback},
                         {"holdout_months": a.holdout_months,
                          "injection": {k: v for k, v in injection.items() if k != "spec"},
                          "injection_spec": dataclasses.asdict(injection["spec"])})
    cells = result["cells"]
    cells[anomaly.CELL_COLUMNS].to_parquet(eval_dir / "cells.parquet", index=False)
    # anomalies.csv: what the registered detector (fitted on every day, the one `stream` and serving load) decides,
    # so that its anomaly ids are the ones the stream publishes; cells.parquet stays the evaluation's.
    registered = result["model"].score(daily, resources)
    found = registered[registered.is_anomaly].assign(size=lambda c: c.impact.abs())
    found = found.sort_values(["day", "size"], ascending=[True, False])
    found[anomaly.ANOMALY_COLUMNS].to_csv(eval_dir / "anomalies.csv", index=False, float_format="%.4f")
    monitoring.write_reference(model_dir, monitoring.build_reference(ANOMALY, {"resource_daily_cost": daily},
                                                                     scored_cells=registered))
    result["metrics"]["feedback_marks"] = 0 if feedback is None else int(len(feedback))
    return _finish(eval_dir, ANOMALY, result["metrics"], cfg, daily)


def train_labeler_step(resources_path: str, truth_path: str, cfg: Config, model_dir: str, eval_dir: str) -> dict:
    """The labeler, judged on held-out labelled resources beside its baselines (InsufficientData, one sentence, when
    a label is carried by too few resources to learn and measure it)."""
    model_dir, eval_dir = _dirs(model_dir, eval_dir)
    resources = pd.read_parquet(resources_path)
    truth = pd.read_csv(truth_path) if truth_path else None
    lc = cfg.labeler
    window = resources.rename(columns={"first_day": "day"})
    try:
        result = labeler.train_and_evaluate(resources, lc.targets, lc.confidence_threshold, lc.test_share, cfg.seed,
                                            truth, lc.target_precision)
    except InsufficientData as exc:
        return _finish(eval_dir, LABELER, {}, cfg, window, not_trained=str(exc))
    with atomic_path(model_dir / "model.joblib") as tmp:
        joblib.dump(result["model"], tmp)
    _save_rescore_inputs(eval_dir, {"resources": resources, "truth": truth},
                         {"targets": list(lc.targets), "test_share": lc.test_share, "seed": cfg.seed})
    for d in (model_dir, eval_dir):
        with atomic_path(d / "review_list.csv") as tmp:
            result["review"].to_csv(tmp, index=False)
    with atomic_path(eval_dir / "label_fixes.csv") as tmp:  # carried values brought to one spelling
        result["fixes"].to_csv(tmp, index=False)
    with atomic_path(eval_dir / "labelled.parquet") as tmp:
        result["labelled"].to_parquet(tmp, index=False)
    write_json(eval_dir / "confusion.json", result["confusion"])
    monitoring.write_reference(model_dir, monitoring.build_reference(LABELER, {"resources": resources}))
    metrics = result["metrics"]
    metrics["label_accuracy_min"] = min(metrics[f"label_accuracy_{t}"] for t in lc.targets)
    return _finish(eval_dir, LABELER, metrics, cfg, window)


def _finish(eval_dir: Path, model_name: str, metrics: dict, cfg: Config, data: pd.DataFrame,
            not_trained: str | None = None) -> dict:
    """Write EVAL_DIR/evaluation.json. A model the data cannot train (`not_trained`: the one-sentence reason) has
    no metrics, fails its gates and is not registered; the other models of the run carry on."""
    days = pd.to_datetime(data["day"]).dropna() if "day" in data else pd.Series(dtype="datetime64[ns]")
    window = {"start": str(days.min().date()), "end": str(days.max().date())} if len(days) else None
    if window:  # other data over the same dates is not the champion's data again (the registry's duplicate check)
        window["digest"] = f"{int(pd.util.hash_pandas_object(data, index=False).sum()) & (2**64 - 1):016x}"
    evaluation = {"model_name": model_name, "trained": not_trained is None, "not_trained_reason": not_trained,
                  "metrics": metrics, "gates": gates.check(model_name, metrics, cfg),
                  "passed": not_trained is None and gates.passed(model_name, metrics, cfg), "data_window": window,
                  # what this training step was sent (STEP_SECTIONS), registered with the model
                  "config_digest": cfg.digest(by_name(model_name).kind)}
    write_json(eval_dir / "evaluation.json", evaluation)
    return evaluation


def loggable_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers among a step's metrics, nested tables flattened with "_" (baselines.naive.mape ->
    baseline_naive_mape): what KFP `Metrics` can hold (NaN/inf would make executor_output.json invalid JSON)."""
    out = {}
    for key, value in metrics.items():
        name = prefix + ("baseline" if key == "baselines" else str(key))
        if isinstance(value, dict):
            out.update(loggable_metrics(value, name + "_"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


RESCORE = "rescore"  # EVAL_DIR/rescore/: the data and plan the holdout was made of


def _save_rescore_inputs(eval_dir: Path, tables: dict[str, pd.DataFrame | None], plan: dict) -> None:
    """EVAL_DIR/rescore/: the tables (NAME.parquet; None: absent) and plan.json a champion is re-scored with."""
    (d,) = _dirs(eval_dir / RESCORE)
    for name, table in tables.items():
        if table is not None:
            with atomic_path(d / f"{name}.parquet") as tmp:
                table.to_parquet(tmp, index=False)
    write_json(d / "plan.json", plan)


def _rescore_inputs(d: Path) -> tuple[dict[str, pd.DataFrame | None], dict]:
    plan = read_json(d / "plan.json")
    tables = {p.stem: pd.read_parquet(p) for p in d.glob("*.parquet")}
    return tables, plan


def _rescore_forecast(model, tables: dict, plan: dict) -> dict:
    return forecast.holdout_score(model, tables["daily_cost"], **plan)


def _rescore_anomaly(model: anomaly.CostAnomalyDetector, tables: dict, plan: dict) -> dict:
    """The champion's settings (alarm budgets, windows, minimum impacts; not its fitted thresholds) trained and
    evaluated as the challenger was: its training window, the same injected anomalies in its holdout."""
    plan = dict(plan)
    injection = {**plan.pop("injection"), "spec": _anomaly_spec(plan.pop("injection_spec"))}
    return anomaly.train_and_evaluate(tables["daily"], tables.get("truth"), plan["holdout_months"],
                                      resources=tables.get("resources"), feedback=tables.get("feedback"),
                                      detector=anomaly.unfitted_copy(model), injection=injection,
                                      refit=False)["metrics"]


def _anomaly_spec(raw: dict):
    from finops_ml.synthetic.injector import InjectionSpec

    return InjectionSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def _rescore_labeler(model: labeler.ResourceLabeler, tables: dict, plan: dict) -> dict:
    """The champion's settings (confidence threshold, precision target, seed) trained and evaluated on the
    challenger's labelled resources, with the challenger's folds."""
    targets = plan["targets"]
    make = labeler.unfitted_factory(model)
    resources, _ = canonical_labels(tables["resources"], targets)  # as train_and_evaluate cleans them
    metrics = labeler.evaluate(make, resources, targets, plan["test_share"], plan["seed"],
                               tables.get("truth"))["metrics"]
    metrics["label_accuracy_min"] = min(metrics[f"label_accuracy_{t}"] for t in targets)
    return metrics


_RESCORERS = {FORECAST: _rescore_forecast, ANOMALY: _rescore_anomaly, LABELER: _rescore_labeler}


def rescorer(eval_dir: str | Path):
    """A function scoring a stored model (its directory) on the holdout of the evaluation in EVAL_DIR, the way
    that evaluation scored its own model: the stored model's settings refitted on that evaluation's training data
    (the stored model itself was fitted on data a later holdout mostly lies in). None when EVAL_DIR keeps no
    re-scoring inputs (a model that was not trained)."""
    d = Path(eval_dir) / RESCORE
    if not d.exists():
        return None
    score = _RESCORERS[read_json(Path(eval_dir) / "evaluation.json")["model_name"]]

    def rescore(model_dir: Path) -> dict:
        tables, plan = _rescore_inputs(d)
        return score(joblib.load(Path(model_dir) / "model.joblib"), tables, plan)

    return rescore


def gate_step(eval_dir: str) -> bool:
    return bool(read_json(Path(eval_dir) / "evaluation.json")["passed"])


def register_step(model_dir: str, eval_dir: str, registry_dir: str, cfg: Config, run_id: str) -> dict:
    """Register a trained model with the digest of the config its training step was sent; the champion is
    re-scored on this holdout when it was measured on another. The champion's own data window and config digest
    are not registered again (`registered` false, with the reason)."""
    evaluation = read_json(Path(eval_dir) / "evaluation.json")
    return registry_for(cfg, registry_dir).register(evaluation["model_name"], model_dir, evaluation["metrics"],
                                                    evaluation["config_digest"], evaluation["data_window"], run_id,
                                                    rescore=rescorer(eval_dir))


def deploy_step(registered: str, registry_dir: str, cfg: Config) -> dict:
    """Deploy a just-registered version ("NAME:vN") when it is the champion: canary split, newest N kept.
    Locally the "endpoint" is REGISTRY/NAME/endpoint.json (what the prediction server serves)."""
    name, _, version = registered.rpartition(":v")
    out = {"name": name, "version": int(version), "deployed": False}
    if not cfg.deploy.enabled:
        return {**out, "reason": "deploy.enabled is false"}
    if cfg.registry.backend == "vertex":
        from finops_ml.platform.deploy import deploy_vertex

        return deploy_vertex(cfg, name, int(version))
    registry = LocalRegistry(registry_dir)
    if registry.aliases(name).get("champion") != int(version):
        return {**out, "reason": "not the champion: the endpoint keeps serving the champion"}
    if str(int(version)) in registry.endpoint(name)["traffic"]:
        return {**out, "reason": "already deployed: the endpoint serves this version"}
    state = registry.deploy(name, int(version), cfg.deploy.canary_percent, cfg.deploy.keep_versions)
    return {**out, "deployed": True, "endpoint": str(Path(registry_dir) / name / "endpoint.json"),
            "traffic": {f"v{v}": p for v, p in state["traffic"].items()}}


def monitor_step(daily_cost_path: str, resource_daily_cost_path: str, resources_path: str, registry_dir: str,
                 cfg: Config, run_id: str, out_dir: str) -> dict:
    """This run's features and scores against each champion's training reference (finops_ml.training.monitoring):
    OUT_DIR/monitoring.json, and drift alerts through the stream's channels (each once: OUT_DIR's outbox, or
    REGISTRY/monitoring/alerts-outbox.jsonl for the local registry, which outlives the run's directories)."""
    (out,) = _dirs(out_dir)
    m = cfg.monitoring
    if not m.enabled:
        section = {"enabled": False, "models": {}, "drifted": [], "drift": False}
        write_json(out / "monitoring.json", section)
        return section
    views = {name: pd.read_parquet(path) for name, path in (
        ("daily_cost", daily_cost_path), ("resource_daily_cost", resource_daily_cost_path),
        ("resources", resources_path)) if path and Path(path).exists()}
    section = {"enabled": True, **monitoring.monitor(views, registry_for(cfg, registry_dir), m)}
    if m.alert and section["drifted"]:
        outbox = (Path(registry_dir) / "monitoring" / "alerts-outbox.jsonl" if cfg.registry.backend == "local"
                  else out / "alerts-outbox.jsonl")
        section["alerts"] = monitoring.send_drift_alerts(section, run_id, cfg.stream, outbox)
    write_json(out / "monitoring.json", section)
    return section
