"""`finops-ml detect` on real labelled series (NAB development corpus), beside nab_eval.py's built-in baselines.

Runs the measurement tool ../shared/tools/nab_eval.py twice: once with our CLI plugged in (--cmd, every series
through `finops-ml detect --direction both`, all other flags at their defaults) and once for its built-in baselines
(or reads an earlier baselines JSON: they take ~6 minutes, STL mostly). Prints, per mode (full, probation), one
table of the pool "dev" with our row beside every baseline, and says whether ours beats each of them on event-wise F1
and point-wise F1 while alarming on at most 5% of rows.

--per-series adds the per-file picture (ours beside the baselines' event-wise F1).
--loco adds a leave-one-category-out check, so that the figure is not an in-sample fit: for each of the three NAB
folders, the detector's four decision parameters (threshold, budget, local_threshold, local_window: 144
combinations) are picked on the two other folders (largest event F1 + point F1 with alarms <= 5%), then that pick
is scored on the held-out folder; the three held-out folders are pooled. This part runs the library in-process and
scores with nab_eval.py's own functions.

    python benchmarks/nab_detect.py [--per-series] [--loco] [--baselines-json FILE] [--out DIR]
        [--nab-dir ../shared/data/nab-dev] [--nab-eval ../shared/tools/nab_eval.py]
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from finops_ml.models.series import SeriesAnomalyDetector

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NAB_DIR = Path(os.environ.get("NAB_DIR", ROOT.parent / "shared" / "data" / "nab-dev"))
DEFAULT_NAB_EVAL = Path(os.environ.get("NAB_EVAL", ROOT.parent / "shared" / "tools" / "nab_eval.py"))
OURS = "finops-ml"
POOL = "dev"
MAX_ALARM_RATE = 0.05
REFERENCE_KINDS = ("reference",)
LOCO_GRID = {"threshold": [4.0, 5.0, 6.0], "budget": [0.0025, 0.005, 0.01, 0.02],
             "local_threshold": [2.0, 2.5, 3.0, 4.0], "local_window": [6, 12, 24]}


def detect_command() -> str:
    exe = shutil.which("finops-ml", path=str(Path(sys.executable).parent)) or shutil.which("finops-ml")
    base = shlex.quote(exe) if exe else f"{shlex.quote(sys.executable)} -c 'from finops_cli.main import main; main()'"
    return f"{base} detect --input {{in}} --output {{out}} --direction both"


def run_nab_eval(nab_eval: Path, nab_dir: Path, json_out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, str(nab_eval), "--nab-dir", str(nab_dir), "--json-out", str(json_out), *extra]
    print("$", shlex.join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"nab_eval.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(json_out.read_text())["detectors"]


def _fmt(v, spec=".3f") -> str:
    return "-" if v is None else format(v, spec)


def print_pool_table(results: dict, mode: str) -> None:
    first = next(iter(results.values()))["pooled"][POOL][mode]
    print(f"\n== pool {POOL}, mode {mode}: {first['series']} series, {first['windows']} windows")
    print(f"{'detector':<22}{'kind':<10}{'TP':>4}{'FP':>6}{'FN':>4}{'prec':>7}{'rec':>7}{'F1':>7}{'ptF1':>7}"
          f"{'alarm%':>8}{'delay_h':>8}")
    for name, res in results.items():
        c = res["pooled"][POOL][mode]
        print(f"{name:<22}{res['kind']:<10}{c['tp_windows']:>4}{c['fp_events']:>6}{c['fn_windows']:>4}"
              f"{_fmt(c['precision']):>7}{_fmt(c['recall']):>7}{_fmt(c['f1']):>7}{_fmt(c['point_f1']):>7}"
              f"{100 * c['alarm_rate']:>8.2f}{_fmt(c['median_delay_h'], '.1f'):>8}")
    ours = results[OURS]["pooled"][POOL][mode]
    lost = [f"{n} ({metric} {res['pooled'][POOL][mode][metric]:.3f} >= {ours[metric]:.3f})"
            for n, res in results.items() if n != OURS
            for metric in ("f1", "point_f1") if res["pooled"][POOL][mode][metric] >= ours[metric]]
    within = ours["alarm_rate"] <= MAX_ALARM_RATE
    verdict = "MET" if not lost and within else "MISSED"
    print(f"goal (beat every built-in baseline on F1 and ptF1, alarm% <= {100 * MAX_ALARM_RATE:.0f}): {verdict}"
          + ("" if within else f"; alarm% {100 * ours['alarm_rate']:.2f}")
          + ("" if not lost else "; not beaten: " + ", ".join(lost)))


def print_per_series(results: dict, mode: str) -> None:
    names = [n for n in results if n != OURS and results[n]["kind"] not in REFERENCE_KINDS]
    print(f"\n-- per series, mode {mode}: ours (windows, TP, FP events, F1, ptF1, alarm%) and each baseline's F1")
    print(f"{'series':<52}{'win':>4}{'TP':>4}{'FP':>5}{'F1':>7}{'ptF1':>7}{'alarm%':>7}"
          + "".join(f"{n[:10]:>11}" for n in names))
    for key, r in results[OURS]["per_series"].items():
        c = r[mode]
        alarm = 100 * c["alarm_rows"] / c["scored_rows"]
        print(f"{key:<52}{c['windows']:>4}{c['tp_windows']:>4}{c['fp_events']:>5}{_fmt(c['f1']):>7}"
              f"{_fmt(c['point_f1']):>7}{alarm:>7.2f}"
              + "".join(f"{_fmt(results[n]['per_series'][key][mode]['f1']):>11}" for n in names))


def _load_nab_eval(path: Path):
    spec = importlib.util.spec_from_file_location("nab_eval", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["nab_eval"] = module
    spec.loader.exec_module(module)
    return module


def leave_one_category_out(nab_eval: Path, nab_dir: Path, baselines: dict) -> None:
    ne = _load_nab_eval(nab_eval)
    groups = list(ne.POOLS[POOL])
    corpus, _ = ne.load_corpus(nab_dir, groups)
    keys = list(LOCO_GRID)
    grid = [dict(zip(keys, values)) for values in itertools.product(*LOCO_GRID.values())]
    # The robust z depends only on the threshold (it decides which points are accepted into the baseline).
    z_by_threshold = {}
    for threshold in LOCO_GRID["threshold"]:
        det = SeriesAnomalyDetector(threshold=threshold)
        z_by_threshold[threshold] = {}
        for s in corpus:
            summed = s.data.groupby("timestamp", as_index=False)["value"].sum()  # as `detect` does
            z_by_threshold[threshold][s.key] = (summed.timestamp, det.robust_z(summed.timestamp, summed.value)[1])
    counts = {}  # (config index, series key) -> nab_eval counts, mode full
    for i, params in enumerate(grid):
        det = SeriesAnomalyDetector(direction="both", **params)
        for s in corpus:
            times, z = z_by_threshold[params["threshold"]][s.key]
            flags = pd.Series(det.decide(z)[1], index=times.to_numpy())
            alarms = s.data.timestamp.map(flags).to_numpy(bool)
            counts[i, s.key] = ne.score_series(s.data.timestamp.to_numpy(), alarms, s.windows, 0)

    def pooled(i, members):
        return ne.pool_counts([dict(counts[i, s.key]) for s in members])

    def objective(c):
        return c["f1"] + c["point_f1"] if c["alarm_rate"] <= MAX_ALARM_RATE else -1.0

    default = next(i for i, p in enumerate(grid) if p == {k: getattr(SeriesAnomalyDetector(), k) for k in keys})
    print("\n== leave-one-category-out (mode full): parameters picked on two folders, scored on the third")
    print(f"{'held out':<12}{'picked on the other two':<62}{'F1':>7}{'ptF1':>7}{'alarm%':>8}"
          f"{'default F1':>12}{'ptF1':>7}{'best baseline F1':>22}{'best ptF1':>18}")
    held_out = []
    for g in groups:
        train = [s for s in corpus if s.group != g]
        test = [s for s in corpus if s.group == g]
        best = max(range(len(grid)), key=lambda i: objective(pooled(i, train)))
        c, d = pooled(best, test), pooled(default, test)
        held_out += [dict(counts[best, s.key]) for s in test]
        base = {n: ne.pool_counts([r["full"] for k, r in res["per_series"].items() if r["group"] == g])
                for n, res in baselines.items() if res["kind"] not in REFERENCE_KINDS}
        bf1 = max(base, key=lambda n: base[n]["f1"])
        bpt = max(base, key=lambda n: base[n]["point_f1"])
        picked = ", ".join(f"{k}={v}" for k, v in grid[best].items())
        print(f"{g:<12}{picked:<62}{c['f1']:>7.3f}{c['point_f1']:>7.3f}{100 * c['alarm_rate']:>8.2f}"
              f"{d['f1']:>12.3f}{d['point_f1']:>7.3f}{bf1:>22} {base[bf1]['f1']:.3f}"
              f"{bpt:>11} {base[bpt]['point_f1']:.3f}")
    c = ne.pool_counts(held_out)
    print(f"pooled held-out folders: TP {c['tp_windows']}/{c['windows']}, FP events {c['fp_events']}, "
          f"F1 {c['f1']:.3f}, ptF1 {c['point_f1']:.3f}, alarm {100 * c['alarm_rate']:.2f}% "
          f"(the defaults, in sample: see the table above)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nab-dir", type=Path, default=DEFAULT_NAB_DIR)
    ap.add_argument("--nab-eval", type=Path, default=DEFAULT_NAB_EVAL)
    ap.add_argument("--baselines-json", type=Path, help="reuse this nab_eval.py baselines JSON (else run them)")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "nab_detect")
    ap.add_argument("--per-series", action="store_true")
    ap.add_argument("--loco", action="store_true", help="also run the leave-one-category-out check")
    args = ap.parse_args(argv)
    for path, what in ((args.nab_eval, "--nab-eval"), (args.nab_dir, "--nab-dir")):
        if not path.exists():
            ap.error(f"{path} not found: pass {what}")
    args.out.mkdir(parents=True, exist_ok=True)

    if args.baselines_json and args.baselines_json.is_file():
        baselines = json.loads(args.baselines_json.read_text())["detectors"]
    else:
        baselines = run_nab_eval(args.nab_eval, args.nab_dir, args.out / "baselines.json", [])
    ours = run_nab_eval(args.nab_eval, args.nab_dir, args.out / f"{OURS}.json",
                        ["--cmd", detect_command(), "--name", OURS])
    results = {**baselines, **ours}
    for mode in ("full", "probation"):
        print_pool_table(results, mode)
    if args.per_series:
        print_per_series(results, "full")
    if args.loco:
        leave_one_category_out(args.nab_eval, args.nab_dir, baselines)
    runtime = ours[OURS]["pooled"][POOL]["runtime_s"]
    print(f"\nour detector: {runtime:.0f} s for the pool (CLI start-up included); JSON in {args.out}")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
