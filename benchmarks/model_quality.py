"""Model quality against the standard baselines, side by side, over generator seeds and organisation shapes.

    python -m benchmarks.model_quality [--seeds 101-105] [--shapes realistic,large_fast_migration]
                                         [--tasks forecast,anomaly,labels] [--out out/model_quality]

For each (seed, shape) it generates the organisation (finops_ml.synthetic.generator, ORG_SHAPES), ingests it, builds the
feature views as the pipeline does, then evaluates the baselines (benchmarks/baselines.py) and our models (their
public train_and_evaluate, with the settings of configs/local.yaml) on the same holdout with the same metric
functions (finops_ml.models.metrics). It prints one table per task (mean and worst over seeds x shapes) and one per
shape, and writes every figure to OUT/results.csv (long format) and OUT/results.json.

Metrics:
- forecast, at (service, month) over the last `forecast.holdout_months` full months, forecast from every rolling
  holdout origin (the cutoff and each later month end; the cells of the forecast_accuracy gate): accuracy =
  1 - WAPE; MASE = MAE / MAE of the seasonal-naive forecast (7-day season, repeated from the origin's last week)
  over the same cells (so the seasonal naive scores 1.0; below 1 is better); coverage = share of those cells
  whose actual lies in the nominal 80% interval (the forecast_interval_coverage gate).
- anomaly, on daily cells (day x service x project) after the training months (as anomaly.train_and_evaluate):
  precision, recall, F1 against the generator's material anomaly cells; event-wise F1 and mean detection delay
  (finops_ml.models.metrics.event_metrics).
- labels (labeler.evaluate, the same folds for ours and every baseline): accuracy per target out of fold over a
  random resource split (`acc_*`) and with whole projects held out (`acc_*_project`); coverage and precision of
  the predictions confident enough to apply, on those held-out resources (`applied_precision`, the gate); then
  fitted on every labelled resource and applied to the missing labels: compliance before -> after counting only
  correct labels, as estimated without truth (`compliance_after`, the gate) and against the generator's truth
  (`compliance_after_truth`, `applied_precision_truth`). Baselines: same-project majority, overall majority,
  nearest name.
Seeds 1-20 are for development; 101-105 are held out for the reported figures.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from threadpoolctl import threadpool_limits

from benchmarks import baselines
from finops_ml.config import load_config
from finops_ml.data.ingest import ingest
from finops_ml.data.warehouse import export_feature_view
from finops_ml.fileio import atomic_path, read_json, write_json
from finops_ml.models import anomaly, forecast, labeler
from finops_ml.models.label_values import canonical_labels
from finops_ml.models.metrics import event_metrics, forecast_accuracy, precision_recall_f1, wape
from finops_ml.synthetic.generator import generate, shape_config

TASKS = ("forecast", "anomaly", "labels")
# Headline metrics per task: (column, higher is better).
COLUMNS = {
    "forecast": [("accuracy", True), ("mase", False), ("coverage", None), ("seconds", False)],
    "anomaly": [("precision", True), ("recall", True), ("f1", True), ("event_f1", True), ("delay_days", False),
                ("normal_event_alarm_rate", False), ("seconds", False)],
    "labels": [("acc_owner", True), ("acc_cost_center", True), ("acc_plant", True),
               ("acc_owner_project", True), ("acc_cost_center_project", True), ("acc_plant_project", True),
               ("coverage", True), ("applied_precision", True), ("applied_precision_truth", True),
               ("compliance_before", None), ("compliance_after", True), ("compliance_after_truth", True),
               ("seconds", False)],
}


def parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            seeds.extend(range(int(lo), int(hi) + 1))
        elif part:
            seeds.append(int(part))
    return seeds


def prepare(shape: str, seed: int, cfg, workdir: Path) -> Path:
    """Generate, ingest and build the feature views of one organisation, as the pipeline's first steps do."""
    d = workdir / f"{shape}-{seed}"
    generate(shape_config(shape, cfg.generator), seed, d / "data", "parquet")
    ingest(str(d / "data" / "events.parquet"), d / "events", d / "data" / "control_totals.csv")
    for view in ("daily_cost", "resource_daily_cost", "resources"):
        export_feature_view(view, d / "events" / "events.parquet", d / f"{view}.parquet")
    return d


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------------ anomaly


def _cell_metrics(test: pd.DataFrame, predicted: np.ndarray) -> dict:
    test = test.assign(predicted=np.asarray(predicted, bool))
    precision, recall, f1 = precision_recall_f1(test.truth, test.predicted)
    ev = event_metrics(test[["day", "service", "project_id", "truth", "predicted"]])
    return {"precision": precision, "recall": recall, "f1": f1, "event_f1": ev["event_f1"],
            "delay_days": ev["mean_detection_delay_days"]}


SIZE_BINS = [(0.0, 0.5, "lt0.5x"), (0.5, 1.0, "0.5-1x"), (1.0, 3.0, "1-3x"), (3.0, np.inf, "ge3x")]
KIND_COLUMNS = [f"recall_{k}" for k in ("spike", "level_shift", "drift", "new_sku", "drop", "new_resource", "spread")]
SIZE_COLUMNS = [f"recall_{label}" for _, _, label in SIZE_BINS]
COLUMNS["anomaly_breakdown"] = ([(c, True) for c in KIND_COLUMNS + SIZE_COLUMNS]
                                + [("normal_event_alarm_rate", False)])


def _cell_truth(d: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per material truth cell its kind and size (the anomaly's extra cost / the cell's expected cost); the cells
    of normal events (labelled normal: a short event's days, a step's first week) with their kind."""
    from finops_ml.synthetic.org import SERVICE_BY_KEY

    truth = pd.read_csv(d / "data" / "truth" / "anomaly_cells.csv")
    truth = truth[truth.material.astype(bool)].assign(
        day=lambda t: pd.to_datetime(t.date), size=lambda t: t.injected_cost.abs() / t.expected_cost.clip(lower=1e-9))
    truth = truth.drop_duplicates(["day", "service", "project_id"])[["day", "service", "project_id", "kind", "size"]]
    rows = []
    path = d / "data" / "truth" / "normal_events.csv"
    events = pd.read_csv(path) if path.exists() else pd.DataFrame()
    for e in events.itertuples():
        last = min(pd.Timestamp(e.end), pd.Timestamp(e.start) + pd.Timedelta(days=6))
        for service in str(e.service).split(";"):
            rows += [dict(day=day, service=SERVICE_BY_KEY[service].description, project_id=e.project_id,
                          normal_kind=e.kind) for day in pd.date_range(e.start, last)]
    normal = pd.DataFrame(rows, columns=["day", "service", "project_id", "normal_kind"]).drop_duplicates(
        ["day", "service", "project_id"])
    return truth, normal


def _breakdown(test: pd.DataFrame, predicted: np.ndarray, truth: pd.DataFrame, normal: pd.DataFrame) -> dict:
    """Recall per anomaly kind and per size bin; the share of normal-event cells (not anomalous) flagged."""
    t = test.assign(predicted=np.asarray(predicted, bool))
    hit = t.merge(truth, on=["day", "service", "project_id"])
    out = {f"recall_{k}": float(g.predicted.mean()) for k, g in hit.groupby("kind")}
    for lo, hi, label in SIZE_BINS:
        g = hit[(hit["size"] >= lo) & (hit["size"] < hi)]
        out[f"recall_{label}"] = float(g.predicted.mean()) if len(g) else np.nan
    quiet = t.merge(normal, on=["day", "service", "project_id"])
    quiet = quiet[~quiet.truth.astype(bool)]
    out["normal_event_alarm_rate"] = float(quiet.predicted.mean()) if len(quiet) else np.nan
    return out


def eval_anomaly(d: Path, cfg, seed: int) -> tuple[list[dict], pd.DataFrame]:
    truth = pd.read_csv(d / "data" / "truth" / "anomaly_cells.csv")
    a = cfg.anomaly
    result, secs = _timed(anomaly.train_and_evaluate, pd.read_parquet(d / "resource_daily_cost.parquet"), truth,
                          a.holdout_months, a.window_days, a.n_estimators, seed)
    cells = result["cells"].copy()
    cells["day"] = pd.to_datetime(cells["day"])
    train_end = pd.Timestamp(result["metrics"]["train_end"])
    test_mask = (cells.day > train_end).to_numpy()
    test = cells[test_mask][["day", "service", "project_id", "truth"]]
    truth_cells, normal = _cell_truth(d)
    ours = cells.is_anomaly.to_numpy()[test_mask]
    rows = [{"model": "ours", **_cell_metrics(test, ours), **_breakdown(test, ours, truth_cells, normal),
             "seconds": secs}]
    flags = baselines.anomaly_baselines(cells[["day", "service", "project_id", "net_cost", "truth"]], train_end, seed)
    for name, (pred, secs) in flags.items():
        rows.insert(-1, {"model": name, **_cell_metrics(test, pred[test_mask]),
                         **_breakdown(test, pred[test_mask], truth_cells, normal), "seconds": secs})
    return rows, result["cells"]


# ----------------------------------------------------------------------------------------------------- forecast


def eval_forecast(d: Path, cfg, seed: int) -> list[dict]:
    """Ours (as the pipeline calls it) and every baseline on the same cells: (holdout origin, service, month) for
    each rolling holdout origin of train_and_evaluate (the cutoff, then every later month end)."""
    f = cfg.forecast
    daily = pd.read_parquet(d / "daily_cost.parquet")
    daily["day"] = pd.to_datetime(daily["day"])
    result, secs = _timed(forecast.train_and_evaluate, daily, list(f.candidates), f.holdout_months,
                          f.horizon_months, f.backtest_origins, f.interval, seed)
    m = result["metrics"]
    cells = result["holdout"]  # origin, service, month, step, forecast, actual, lo, hi: the gate's cells
    keys = ["origin", "service", "month"]
    actual = cells[[*keys, "actual"]]

    def score(fc: pd.DataFrame) -> dict:
        both = actual.merge(fc, on=keys, how="left").fillna({"forecast": 0.0})
        out = {"accuracy": forecast_accuracy(both.actual, both.forecast), "_wape": wape(both.actual, both.forecast)}
        if {"lo", "hi"} <= set(both.columns):
            out["coverage"] = float(((both.actual >= both.lo) & (both.actual <= both.hi)).mean())
        return out

    found: dict[str, list] = {}
    for origin in m["holdout_origins"]:
        for name, (fc, s) in baselines.forecast_baselines(daily, pd.Timestamp(origin), f.interval,
                                                          end=pd.Timestamp(m["holdout_end"])).items():
            found.setdefault(name, []).append((fc.assign(origin=origin), s))
    rows = [{"model": name, **score(pd.concat([fc for fc, _ in runs])), "seconds": sum(s for _, s in runs)}
            for name, runs in found.items()]
    # Ours: the naive baselines computed inside train_and_evaluate, each candidate (fitted on the training
    # window and scored on the same cells, as the selection saw them) and the selected model.
    rows += [{"model": f"naive: {name}", "accuracy": acc, "_wape": 1.0 - acc} for name, acc in m["baselines"].items()]
    rows += [{"model": f"ours: {name}", "accuracy": c["accuracy"], "_wape": 1.0 - c["accuracy"],
              "coverage": c["interval_coverage"]} for name, c in m["candidates"].items()]
    rows.append({"model": "ours: selected", **score(cells[[*keys, "forecast", "lo", "hi"]]), "seconds": secs,
                 "selected": str(m["model"])})
    naive = 1.0 - m["baselines"]["seasonal_naive"]
    for r in rows:
        r["mase"] = r.pop("_wape") / naive if naive > 0 else np.nan
    return rows


# ------------------------------------------------------------------------------------------------------- labels


def _label_row(model: str, m: dict, targets, seconds: float | None) -> dict:
    row = {"model": model, "seconds": seconds,
           "coverage": float(np.mean([m.get(f"label_coverage_{t}", np.nan) for t in targets])),
           "applied_precision": m.get("label_applied_precision", np.nan),
           "applied_precision_truth": m.get("applied_label_precision", np.nan),
           "compliance_before": m.get("label_compliance_before", np.nan),
           "compliance_after": m.get("label_compliance_after", np.nan),
           "compliance_after_truth": m.get("label_compliance_after_truth", np.nan)}
    for t in targets:
        row[f"acc_{t}"] = m.get(f"label_accuracy_{t}", np.nan)
        row[f"acc_{t}_project"] = m.get(f"label_accuracy_{t}_project_holdout", np.nan)
    return row


def eval_labels(d: Path, cfg, seed: int) -> list[dict]:
    """Ours and its baselines through the same evaluation (labeler.evaluate: the same folds, the same metrics)."""
    lc = cfg.labeler
    resources = pd.read_parquet(d / "resources.parquet")
    truth = pd.read_csv(d / "data" / "truth" / "resources.csv")
    result, secs = _timed(labeler.train_and_evaluate, resources, lc.targets, lc.confidence_threshold, lc.test_share,
                          seed, truth, lc.target_precision)
    m = result["metrics"]
    rows = []
    for name, metrics in m["baselines"].items():  # same-project and overall majority label
        rows.append(_label_row(name, {**metrics, "label_compliance_before": m["label_compliance_before"]},
                               lc.targets, None))
    canonical, _ = canonical_labels(resources, lc.targets)  # the same cleaned labels train_and_evaluate learns from
    for name, make in baselines.LABEL_BASELINES.items():
        base, secs_b = _timed(labeler.evaluate, lambda ts, make=make: make(ts, lc.confidence_threshold), canonical,
                              lc.targets, lc.test_share, seed, truth)
        rows.append(_label_row(name, base["metrics"], lc.targets, secs_b))
    rows.append(_label_row("ours", m, lc.targets, secs))
    return rows


# ------------------------------------------------------------------------------------------------------ tables


def _fmt(v: float) -> str:
    return "—" if v is None or not np.isfinite(v) else (f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}")


def summary(df: pd.DataFrame, task: str) -> pd.DataFrame:
    """Mean (worst) per model over the rows of `df`, as text; worst = min where higher is better, max where lower."""
    cols = [(c, hb) for c, hb in COLUMNS[task] if c in df.columns]
    out = {}
    for model, g in df.groupby("model", sort=False):
        cells = {}
        for c, hb in cols:
            v = g[c].astype(float)
            worst = v.min() if hb else v.max()
            cells[c + ("" if hb is None else " ↑" if hb else " ↓")] = (
                _fmt(v.mean()) if hb is None or c == "seconds" or len(v) == 1 else f"{_fmt(v.mean())} ({_fmt(worst)})")
        out[model] = cells
    return pd.DataFrame.from_dict(out, orient="index").rename_axis("model").reset_index()


def rich_table(table: pd.DataFrame, title: str) -> Table:
    t = Table(title=title)
    for i, c in enumerate(table.columns):
        t.add_column(c, justify="left" if i == 0 else "right")
    for row in table.itertuples(index=False):
        t.add_row(*map(str, row))
    return t


def markdown(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="101-105")
    parser.add_argument("--shapes", default="realistic,large_fast_migration")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--out", default="out/model_quality")
    parser.add_argument("--config", default=None, help="model settings (default configs/local.yaml)")
    parser.add_argument("--workdir", default=None, help="keep the generated data here (default: a temporary dir)")
    parser.add_argument("--from-results", default=None,
                        help="comma-separated results.json files of earlier runs: print their tables, run nothing")
    args = parser.parse_args(argv)
    seeds, shapes = parse_seeds(args.seeds), [s for s in args.shapes.split(",") if s]
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        parser.error(f"unknown task(s) {unknown}; use {', '.join(TASKS)}")
    console = Console(width=max(Console().width, 160))
    started = time.perf_counter()
    if args.from_results:
        records = [r for f in args.from_results.split(",") for r in read_json(f)["runs"]]
        tasks = [t for t in tasks if any(r["task"] == t for r in records)]
        report(pd.DataFrame(records).fillna(value=np.nan), tasks, seeds, shapes, args, console, started)
        return 0
    base = load_config(args.config)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="finops-quality-"))
    records: list[dict] = []
    # One BLAS/OpenMP thread per model: on a busy 2-core machine XGBoost's OpenMP threads otherwise spin-wait
    # (measured: a forecast fit 75 s -> 5.6 s), and the seconds compare like with like.
    limits = threadpool_limits(1)
    try:
        for shape in shapes:
            for seed in seeds:
                cfg = base.model_copy(update={"seed": seed})
                t0 = time.perf_counter()
                d = prepare(shape, seed, cfg, workdir)
                timing = {"prepare": time.perf_counter() - t0}
                if "anomaly" in tasks:
                    t0 = time.perf_counter()
                    rows, _ = eval_anomaly(d, cfg, seed)
                    records += [{"task": "anomaly", "shape": shape, "seed": seed, **r} for r in rows]
                    timing["anomaly"] = time.perf_counter() - t0
                if "forecast" in tasks:
                    t0 = time.perf_counter()
                    records += [{"task": "forecast", "shape": shape, "seed": seed, **r}
                                for r in eval_forecast(d, cfg, seed)]
                    timing["forecast"] = time.perf_counter() - t0
                if "labels" in tasks:
                    t0 = time.perf_counter()
                    records += [{"task": "labels", "shape": shape, "seed": seed, **r}
                                for r in eval_labels(d, cfg, seed)]
                    timing["labels"] = time.perf_counter() - t0
                if not args.workdir:
                    shutil.rmtree(d, ignore_errors=True)
                write_json(Path(args.out) / "partial.json", {"runs": records})  # what is done survives a stop
                console.print(f"[bold]{shape} seed {seed}[/bold]: "
                              + ", ".join(f"{k} {v:.1f} s" for k, v in timing.items())
                              + f" (elapsed {time.perf_counter() - started:.0f} s)")
    finally:
        limits.restore_original_limits()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    report(pd.DataFrame(records), tasks, seeds, shapes, args, console, started)
    return 0


def report(df: pd.DataFrame, tasks, seeds, shapes, args, console: Console, started: float) -> None:
    """Tables per task (all runs, then per shape) on the console and in OUT/tables.md; every figure in OUT/."""
    df = df[df["seed"].isin(seeds) & df["shape"].isin(shapes)].copy()
    # "ours: selected (xgboost)" -> one row "ours: selected" (which candidate was picked stays in the files)
    df["model"] = df["model"].str.replace(r"^ours: selected \(.*\)$", "ours: selected", regex=True)
    n = len(seeds) * len(shapes)
    md = []
    shown = [x for t in tasks for x in ([t, "anomaly_breakdown"] if t == "anomaly" else [t])]
    for task in shown:
        t = df[df.task == ("anomaly" if task == "anomaly_breakdown" else task)].dropna(axis=1, how="all")
        parts = [(f"{task}: mean (worst) over {n} runs, seeds {args.seeds} x {', '.join(shapes)}", t)]
        parts += [(f"{task} on {shape}: mean (worst) over seeds {args.seeds}", t[t["shape"] == shape])
                  for shape in shapes]
        for title, part in parts:
            table = summary(part, task)
            console.print(rich_table(table, title))
            md.append(f"**{title}**\n\n{markdown(table)}\n")
    out = Path(args.out)
    long = df.melt(id_vars=["task", "shape", "seed", "model"], var_name="metric").dropna(subset=["value"])
    with atomic_path(out / "results.csv") as tmp:
        long.to_csv(tmp, index=False)
    with atomic_path(out / "tables.md") as tmp:
        tmp.write_text("\n".join(md))
    write_json(out / "results.json", {"seeds": seeds, "shapes": shapes, "tasks": tasks,
                                      "seconds": time.perf_counter() - started,
                                      "runs": df.replace({np.nan: None}).to_dict(orient="records")})
    console.print(f"figures: {out / 'results.csv'}, {out / 'results.json'}, {out / 'tables.md'}; "
                  f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
