"""Model monitoring on generated worlds: does PSI stay low where nothing changed and pass the threshold where the
world did?

    python benchmarks/monitoring_drift.py [--seed 42] [--reference-months 13] [--months 15]
                                          [--worlds later,realistic,...] [--workdir DIR] [--out DIR]

The reference is the easy organisation (configs/local.yaml's generator in `--shape easy`: every realism knob off,
`--reference-months` months), so that each world below changes one thing against a calm one: the data a champion was
trained on, its reference built as the training steps build it (finops_ml.training.monitoring,
`build_reference`). Each other world is generated, ingested and run through the feature views as the pipeline does,
and compared with that reference feature by feature (`feature_drift`: PSI over the reference's decile bins, last 91
days of each):
  later        the same organisation (same seed and config) with `--months` months: 2 more months, nothing changed
  realistic    the same, generated with `--shape realistic` (finops_ml/synthetic/realism.py: every knob on; the
               default world of configs/local.yaml)
  usage_noise  only generator.usage_noise: by_kind (heavy-tailed daily usage, log-sigma 0.05-0.4 by service)
  events       only generator.normal_events: true (quarter ends, load tests, rightsizing, a price change, ...)
  labels       only the label knobs (errors 7%, variants 10%, departed owners 5%, unlabelled projects 15%)
The scores (alarm rate, forecast coverage) need trained models and are not measured here: tests/test_monitoring.py
measures them on a small world. Prints a table of PSI per model and feature and writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from finops_ml.config import load_config
from finops_ml.fileio import write_json
from finops_ml.models.catalogue import ANOMALY, FORECAST, LABELER
from finops_ml.synthetic.generator import generate, shape_config
from finops_ml.training import monitoring, steps

VIEWS = ("daily_cost", "resource_daily_cost", "resources")
WORLDS = {
    "later": {},
    "realistic": "realistic",
    "usage_noise": {"usage_noise": "by_kind"},
    "events": {"normal_events": True},
    "labels": {"label_error_share": 0.07, "label_variant_share": 0.1, "departed_owner_share": 0.05,
               "unlabelled_project_share": 0.15},
}


def views_of(gcfg, seed: int, root: Path) -> dict[str, pd.DataFrame]:
    """Generate, ingest and build the three feature views under ROOT (kept: a second call reads them back)."""
    paths = {name: root / f"{name}.parquet" for name in VIEWS}
    if not all(p.exists() for p in paths.values()):
        generate(gcfg, seed, root / "generated")
        steps.ingest_step(str(root / "generated" / "events.jsonl"), "", str(root / "events"))
        steps.features_step(str(root / "events"), *(str(p) for p in paths.values()))
    return {name: pd.read_parquet(p) for name, p in paths.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--reference-months", type=int, default=13)
    parser.add_argument("--months", type=int, default=15)
    parser.add_argument("--worlds", default=",".join(WORLDS), help="comma-separated: " + ", ".join(WORLDS))
    parser.add_argument("--workdir", type=Path, default=Path("out/bench-monitoring"))
    parser.add_argument("--out", type=Path, default=Path("out/bench-monitoring"))
    args = parser.parse_args(argv)
    console = Console(width=160)
    base = shape_config("easy", load_config().generator)  # the reference world: every realism knob off
    threshold = load_config().monitoring.psi_threshold
    t0 = time.perf_counter()
    ref_views = views_of(base.model_copy(update={"months": args.reference_months}), args.seed,
                         args.workdir / f"reference-{args.seed}-{args.reference_months}m")
    references = {name: monitoring.build_reference(name, ref_views) for name in (FORECAST, ANOMALY, LABELER)}
    console.print(f"reference: easy organisation, seed {args.seed}, {args.reference_months} months "
                  f"[dim]{time.perf_counter() - t0:.0f} s[/]")
    results: dict = {"seed": args.seed, "reference_months": args.reference_months, "months": args.months,
                     "threshold": threshold, "bins": monitoring.BINS_TEXT, "window_days": monitoring.REFERENCE_DAYS,
                     "worlds": {}}
    worlds = [w for w in args.worlds.split(",") if w]
    for world in worlds:
        t0 = time.perf_counter()
        knobs = WORLDS[world]
        gcfg = base.model_copy(update={"months": args.months})
        gcfg = shape_config(knobs, gcfg) if isinstance(knobs, str) else gcfg.model_copy(update=knobs)
        views = views_of(gcfg, args.seed, args.workdir / f"{world}-{args.seed}-{args.months}m")
        results["worlds"][world] = {
            name: monitoring.feature_drift(ref, monitoring.FEATURES[name](views, monitoring.REFERENCE_DAYS),
                                           threshold) for name, ref in references.items()}
        console.print(f"{world} [dim]{time.perf_counter() - t0:.0f} s[/]")
    table = Table(title=f"PSI per feature against the reference (last {monitoring.REFERENCE_DAYS} days; drift at "
                        f">= {threshold})")
    table.add_column("model")
    table.add_column("feature")
    for world in worlds:
        table.add_column(world, justify="right")
    for name, ref in references.items():
        for i, feature in enumerate(ref["features"]):
            cells = []
            for world in worlds:
                row = results["worlds"][world][name][i]
                cells.append(f"[red]{row['psi']:.3f}[/]" if row["status"] == "drift" else f"{row['psi']:.3f}")
            table.add_row(name, feature, *cells)
    console.print(table)
    write_json(args.out / "results.json", monitoring.strict(results))
    console.print(f"results: {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
