"""The anomaly detector measured by injection, as on a user's export: the generator's truth is ignored.

    python benchmarks/anomaly_injection.py [--seeds 5] [--shape realistic] [--draws 5] [--fit-labels none|truth]
                                           [--leave-out-truth] [--workdir DIR] [--out DIR]

For each seed it generates the organisation (finops_ml.synthetic.generator; the default world, realistic, as
`finops-ml run` trains on: a user's export is no easier; `--shape easy` for the calm one), ingests it and builds the
resource_daily_cost and resources views as the pipeline does, fits the detector on the training window WITHOUT
labels (`fit(train, None)`: what a user's export allows; `--fit-labels truth` fits with the generator's truth, for
comparison only), then evaluates it with finops_ml.models.anomaly_eval.evaluate_by_injection on the holdout (the
last `anomaly.holdout_months` months, cut as anomaly.train_and_evaluate cuts them) with the settings of
configs/local.yaml (injection_* keys of `anomaly`). `--leave-out-truth` leaves the generator's own anomaly cells
out of the precision side and the alarm rate (on an export they are unknown and count as false alarms).
It prints recall per kind and direction, cell-wise and event-wise F1, the alarm rate on the untouched holdout,
and writes every figure to OUT/results.json. `--workdir` keeps the generated data for the next run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from threadpoolctl import threadpool_limits

from finops_ml.config import load_config
from finops_ml.data.ingest import ingest
from finops_ml.data.warehouse import export_feature_view
from finops_ml.fileio import write_json
from finops_ml.models.anomaly import CostAnomalyDetector
from finops_ml.models.anomaly_eval import evaluate_by_injection, spec_from_config
from finops_ml.synthetic.generator import generate, shape_config
from finops_ml.synthetic.injector import KINDS


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
    """Generate, ingest and build the two views the detector reads (kept in `workdir` between runs)."""
    d = workdir / f"{shape}-{seed}"
    if (d / "resources.parquet").exists():
        return d
    generate(shape_config(shape, cfg.generator), seed, d / "data", "parquet")
    ingest(str(d / "data" / "events.parquet"), d / "events", d / "data" / "control_totals.csv")
    for view in ("resource_daily_cost", "resources"):
        export_feature_view(view, d / "events" / "events.parquet", d / f"{view}.parquet")
    return d


def split(daily: pd.DataFrame, holdout_months: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training window and holdout, cut as anomaly.train_and_evaluate cuts them (whole months)."""
    daily = daily.assign(day=pd.to_datetime(daily["day"]))
    cutoff = daily.day.max() - pd.DateOffset(months=holdout_months) + pd.offsets.MonthEnd(0)
    return daily[daily.day <= cutoff], daily[daily.day > cutoff]


def run_seed(d: Path, cfg, seed: int, draws: int, fit_labels: str = "none", leave_out_truth: bool = False) -> dict:
    a = cfg.anomaly
    daily = pd.read_parquet(d / "resource_daily_cost.parquet")
    resources = pd.read_parquet(d / "resources.parquet")
    train, holdout = split(daily, a.holdout_months)
    truth = pd.read_csv(d / "data" / "truth" / "anomaly_cells.csv")
    labels = truth if fit_labels == "truth" else None
    t0 = time.perf_counter()
    detector = CostAnomalyDetector(a.window_days, a.n_estimators, seed).fit(train, labels)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = evaluate_by_injection(detector, train, holdout, resources, draws=draws, seed=seed,
                                   spec=spec_from_config(a), cells_share=a.injection_cells_share,
                                   known=truth if leave_out_truth else None)
    return {**result, "fit_seconds": fit_s, "eval_seconds": time.perf_counter() - t0}


def _fmt(x: float, digits: int = 3) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def report(results: dict[int, dict], console: Console) -> None:
    seeds = sorted(results)
    kinds = Table(title="Recall per kind (cells pooled over draws; events = anomalies found on >= 1 day)")
    kinds.add_column("kind")
    for s in seeds:
        kinds.add_column(f"seed {s}: cell recall (cells)", justify="right")
        kinds.add_column(f"seed {s}: event recall (anomalies)", justify="right")
    for kind in KINDS:
        row = [kind]
        for s in seeds:
            r = results[s]
            row += [f"{_fmt(r['recall_per_kind'][kind])} ({r['cells_per_kind'][kind]})",
                    f"{_fmt(r['event_recall_per_kind'][kind])} ({r['anomalies_per_kind'][kind]})"]
        kinds.add_row(*row)
    for direction in ("up", "down"):
        kinds.add_row(f"direction {direction}", *[x for s in seeds
                                                   for x in (_fmt(results[s]["recall_per_direction"][direction]), "")])
    console.print(kinds)
    overall = Table(title="Overall: mean over draws (std)")
    for col in ("seed", "draws", "anomalies/draw", "precision", "recall", "F1", "event F1", "delay d",
                "alarm rate clean", "seconds"):
        overall.add_column(col, justify="right")
    for s in seeds:
        r = results[s]
        overall.add_row(str(s), str(r["draws"]), _fmt(r["anomalies_per_draw"], 1),
                        *[f"{_fmt(r[k])} ({_fmt(r['spread'][k]['std'])})" for k in ("precision", "recall", "f1",
                                                                                     "event_f1")],
                        _fmt(r["mean_detection_delay_days"], 1),
                        f"{_fmt(r['alarm_rate_clean'], 4)} ({r['clean_flagged']}/{r['clean_cells']})",
                        _fmt(r["fit_seconds"] + r["eval_seconds"], 0))
    console.print(overall)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="5")
    parser.add_argument("--shape", default="realistic")
    parser.add_argument("--draws", type=int, default=None, help="default: anomaly.injection_draws of the config")
    parser.add_argument("--fit-labels", choices=("none", "truth"), default="none",
                        help="none: fit as on a user's export; truth: with the generator's labels (comparison)")
    parser.add_argument("--leave-out-truth", action="store_true",
                        help="leave the generator's own anomaly cells out of precision and the alarm rate")
    parser.add_argument("--config", default=None)
    parser.add_argument("--workdir", default=None, help="keep generated data here (reused when present)")
    parser.add_argument("--out", default="out/anomaly_injection")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    draws = args.draws or cfg.anomaly.injection_draws
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="finops-injection-"))
    console = Console(width=200)
    results = {}
    with threadpool_limits(1):
        for seed in parse_seeds(args.seeds):
            t0 = time.perf_counter()
            d = prepare(args.shape, seed, cfg.model_copy(update={"seed": seed}), workdir)
            console.print(f"seed {seed}: data ready in {time.perf_counter() - t0:.0f} s ({d})")
            results[seed] = run_seed(d, cfg, seed, draws, args.fit_labels, args.leave_out_truth)
    report(results, console)
    write_json(Path(args.out) / "results.json", {"shape": args.shape, "draws": draws, "fit_labels": args.fit_labels,
                                                 "leave_out_truth": args.leave_out_truth,
                                                 "results": {str(s): r for s, r in results.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
