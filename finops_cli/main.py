"""`finops-ml`: generate data, ingest, run the training pipeline locally, compile it for Vertex AI."""

from __future__ import annotations

import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from finops_cli.errors import ErrorHandlingGroup
from finops_ml.config import Config, load_config
from finops_ml.errors import FinopsError
from finops_ml.fileio import exclusive_lock, read_json, strict, write_json

# ErrorHandlingGroup: a FinopsError from any command is one red sentence and exit code 1 (finops_cli/errors.py)
app = typer.Typer(cls=ErrorHandlingGroup, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ML for cloud FinOps on Google Cloud: cost forecast, anomalies, auto-labelling.")
console = Console()


def _config(path: Optional[Path], seed: Optional[int]) -> Config:
    cfg = load_config(path)
    return cfg.model_copy(update={"seed": seed}) if seed is not None else cfg


@app.command()
def generate(
    out: Path = typer.Option(Path("out/data"), help="Directory for events, control totals and ground truth."),
    seed: Optional[int] = typer.Option(None, help="Random seed (default: the config's)."),
    config: Optional[Path] = typer.Option(None, help="YAML config (default: configs/local.yaml)."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl or parquet."),
    rows: Optional[int] = typer.Option(None, help="Scale: about this many line items, within 20% (sets resources "
                                                  "per project; refused when the organisation cannot come close)."),
    resources_per_project: Optional[int] = typer.Option(None, help="Scale: resources per project (~600 rows each)."),
    plants: Optional[int] = typer.Option(None, help="Scale: number of plants (3 projects each)."),
    from_monthly_csv: Optional[Path] = typer.Option(None, help="CSV month,service,cost to reconcile to the cent."),
    shape: Optional[str] = typer.Option(None, help="Organisation shape over the config's generator: easy (every "
                                                   "realism knob off, for fast tests), realistic (the default "
                                                   "config's), small_stable, large_fast_migration."),
):
    """Generate the synthetic organisation's billing events and their ground truth."""
    from finops_ml.synthetic.generator import generate as gen
    from finops_ml.synthetic.generator import generate_from_monthly, resources_for_rows, shape_config

    cfg = _config(config, seed)
    if rows is not None and resources_per_project is not None:
        raise FinopsError("--rows and --resources-per-project both set the organisation's size; give one of them.")
    options = {"plants": plants, "resources_per_project": resources_per_project}
    gcfg = cfg.with_options("generator", **options).generator
    if shape:
        gcfg = shape_config(shape, gcfg)
    if rows is not None:
        gcfg = gcfg.model_copy(update={"resources_per_project": resources_for_rows(gcfg, rows)})
    t0 = time.perf_counter()
    if from_monthly_csv:
        meta = generate_from_monthly(from_monthly_csv, gcfg, cfg.seed, out, fmt)
    else:
        meta = gen(gcfg, cfg.seed, out, fmt)
    console.print(f"generated {meta['rows']:,} line items into {out} in {time.perf_counter() - t0:.1f} s")


@app.command()
def ingest(
    source: str = typer.Argument(..., help="Billing events: a JSONL / Parquet / CSV (FOCUS) file or glob, "
                                           "bq://project.dataset.table or kafka://host:port/topic."),
    out: Path = typer.Option(Path("out/ingest"), help="Directory for events.parquet, quarantine, summary."),
    control_totals: Optional[Path] = typer.Option(None, help="CSV invoice_month,net_cost to reconcile with."),
):
    """Validate, quarantine, dedupe and reconcile billing events into the events table."""
    from finops_ml.data.ingest import ingest as run_ingest

    t0 = time.perf_counter()
    s = run_ingest(source, out, control_totals)
    seconds = time.perf_counter() - t0
    console.print(f"read {s['read']:,} records in {seconds:.1f} s ({s['read'] / max(seconds, 1e-9):,.0f}/s): "
                  f"{s['rows']:,} new events, {s['quarantined']:,} quarantined, {s['duplicates']:,} duplicates; "
                  f"table {s['table_rows']:,} rows, net cost {s['total_net_cost']:,.2f} USD; "
                  f"reconciliation diff: {s['reconciliation_diff']}\nsummary: {out / 'ingest_summary.json'}")


@app.command()
def replay(
    file: Path = typer.Argument(..., help="JSONL or Parquet file of billing events."),
    bootstrap: str = typer.Option(..., help="Kafka bootstrap servers, HOST:PORT."),
    topic: str = typer.Option(..., help="Topic to publish to (created if missing)."),
    partitions: int = typer.Option(3, help="Partitions of the topic if it has to be created."),
    key: str = typer.Option("cell", help="Message key: cell (service|project, what `stream` needs) or event (id)."),
    order: str = typer.Option("export", help="export: as a billing export delivers the rows (by export time); "
                                             "file: in file order."),
):
    """Publish billing events to a Kafka topic, keyed by series (replaying twice is safe: ingest dedupes)."""
    from finops_ml.data.kafka_io import replay as run_replay

    s = run_replay(file, bootstrap, topic, partitions=partitions, key=key, order=order)
    console.print(f"sent {s['sent']:,} events to {topic} on {bootstrap} ({s['invalid']:,} not valid billing events) "
                  f"in {s['seconds']:.1f} s: {s['events_per_s']:,} events/s")


@app.command()
def bridge(
    source: str = typer.Argument(..., help="A billing export file: gs://BUCKET/PATH or a local JSONL / Parquet / "
                                           "CSV file."),
    bootstrap: str = typer.Option(..., help="Kafka bootstrap servers, HOST:PORT."),
    topic: str = typer.Option("billing-events", help="The billing topic (created if missing)."),
    dead_letter_topic: Optional[str] = typer.Option(None, help="Where invalid rows go, with their reason "
                                                               "(default: TOPIC-dlq)."),
    marker_topic: Optional[str] = typer.Option(None, help="The bridge's record of published files "
                                                          "(default: TOPIC-bridge-markers)."),
    generation: Optional[str] = typer.Option(None, help="The gs:// object's generation (default: the live one)."),
):
    """Publish a billing export file to Kafka as the Cloud Run bridge does: valid rows keyed by series, bad rows
    to the dead-letter topic, each object generation once (see docs/bridge.md)."""
    from finops_ml.data.bridge import bridge as run_bridge

    s = run_bridge(source, bootstrap, topic, dead_letter_topic, marker_topic, generation=generation)
    where = f"{s['object']}#{s['generation']}"
    if s["skipped"]:
        console.print(f"{where} was published already ({s['rows']:,} rows, {s['dead_letters']:,} dead letters, "
                      f"marker in {s['marker_topic']}): nothing sent")
        return
    console.print(f"published {where}: {s['rows']:,} of {s['read']:,} rows to {s['topic']}, {s['dead_letters']:,} "
                  f"dead letters to {s['dead_letter_topic']}, in {s['seconds']:.1f} s ({s['rows_per_s']:,} rows/s)")


@app.command()
def run(
    seed: Optional[int] = typer.Option(None, help="Random seed (default: the config's)."),
    out: Path = typer.Option(Path("out"), help="Output directory: report.html, summary.json, registry, data."),
    config: Optional[Path] = typer.Option(None, help="YAML config (default: configs/local.yaml)."),
    source: Optional[str] = typer.Option(None, help="Billing events to train on; default: generate the "
                                                    "synthetic organisation."),
    feedback: Optional[Path] = typer.Option(None, help="Anomaly verdicts (finops-ml feedback); default: "
                                                       "OUT/feedback.csv when it exists."),
    shape: Optional[str] = typer.Option(None, help="Organisation shape over the config's generator: easy (every "
                                                   "realism knob off, for fast tests), realistic (the default "
                                                   "config's), small_stable, large_fast_migration."),
):
    """Run the whole training pipeline on this machine with the KFP local runner."""
    out = out.resolve()
    with exclusive_lock(out, "finops-ml run"):  # a second run into the same --out is refused, not interleaved
        _run(seed, out, config, source, feedback, shape)


def _run(seed: Optional[int], out: Path, config: Optional[Path], source: Optional[str],
         feedback: Optional[Path], shape: Optional[str] = None) -> None:
    cfg = _config(config, seed)
    if shape:
        from finops_ml.synthetic.generator import shape_config

        if source:
            raise FinopsError("--shape shapes the generated organisation; with --source there is none to shape.")
        cfg = cfg.model_copy(update={"generator": shape_config(shape, cfg.generator)})
    from finops_ml.data.sources.files import resolve_files
    from finops_ml.synthetic.generator import generate as gen
    from pipelines.local import run_local

    # a failed run must not leave the last run's results looking new
    for stale in ("summary.json", "report.html", "anomalies.csv", "value.json"):
        (out / stale).unlink(missing_ok=True)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    data = out / "data"
    arguments = {**cfg.step_parameters(), "registry_dir": str((out / cfg.registry.path).resolve()),
                 "run_id": f"local-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"}
    if source:
        if "://" not in source:
            resolve_files(source)  # a missing file is the user's to fix: say so before any step runs
        arguments["source"] = source
    else:
        console.print(f"[bold]generate[/] synthetic organisation (seed {cfg.seed}) ...")
        t0 = time.perf_counter()
        meta = gen(cfg.generator, cfg.seed, data)
        timings["generate"] = round(time.perf_counter() - t0, 2)
        console.print(f"  {meta['rows']:,} line items, {meta['resources']} resources, "
                      f"{meta['anomalies']} injected anomalies  [dim]{timings['generate']:.1f} s[/]")
        arguments.update(source=str(data / "events.jsonl"), control_totals=str(data / "control_totals.csv"),
                         anomaly_labels=str(data / "truth" / "anomaly_cells.csv"),
                         resource_truth=str(data / "truth" / "resources.csv"))
    feedback = feedback or (out / "feedback.csv" if (out / "feedback.csv").exists() else None)
    if feedback:
        from finops_ml.models.anomaly import read_feedback

        read_feedback(feedback)  # a malformed file is the user's to fix before any step runs
        arguments["anomaly_feedback"] = str(feedback.resolve())

    progress = Console(file=sys.stdout)  # bound now: the runner's own output is captured into pipeline.log

    def on_event(task: str, what: str, seconds: float | None) -> None:
        if what == "start":
            progress.print(f"[bold]{task}[/] ...")
        else:
            color = "green" if what == "success" else "red"
            progress.print(f"  [{color}]{what}[/]  [dim]{seconds:.1f} s[/]")

    root = out / "pipeline_root"
    log_path = out / "pipeline.log"
    before = set(root.glob("*")) if root.exists() else set()
    _, step_timings, failed = run_local(arguments, root, log_path, on_event)
    timings.update(step_timings)
    if failed:
        reason = _step_error(log_path)
        raise FinopsError(f"pipeline step {', '.join(failed)} failed{': ' + reason if reason else ''}; "
                          f"the full log is {log_path}.")
    run_dir = max(set(root.glob("*")) - before, key=lambda p: p.stat().st_mtime)
    summary = read_json(run_dir / "build-report" / "summary")
    from finops_ml.models.catalogue import ANOMALY, FORECAST, LABELER, MODEL_NAMES
    from finops_ml.platform.registry import LocalRegistry

    registry = LocalRegistry(arguments["registry_dir"])
    registered = []
    for name in MODEL_NAMES:
        for v in registry.versions(name):
            e = registry.entry(name, v)
            if e["run_id"] == arguments["run_id"]:
                aliases = [a for a, n in registry.aliases(name).items() if n == v]
                registered.append({"name": name, "version": v, "aliases": aliases})
    timings["total"] = round(time.perf_counter() - t_start, 2)
    summary.update(registered=registered, timings_s=timings, run_id=arguments["run_id"], seed=cfg.seed,
                   config_digest=cfg.digest())
    anomalies_csv = next(run_dir.glob("train-anomaly-detector*/evaluation/anomalies.csv"), None)
    if anomalies_csv is not None:
        shutil.copyfile(anomalies_csv, out / ".anomalies.csv.partial")
        (out / ".anomalies.csv.partial").replace(out / "anomalies.csv")
    # The dashboard again, now with what only the run knows after the pipeline: registered versions, timings,
    # the whole config's digest (the pipeline's own copy is its build-report/report artifact).
    from finops_ml.training.report import write_dashboard

    value = read_json(run_dir / "build-report" / "value")
    eval_dirs = {FORECAST: run_dir / "train-forecast" / "evaluation",
                 ANOMALY: run_dir / "train-anomaly-detector" / "evaluation",
                 LABELER: run_dir / "train-labeler" / "evaluation"}
    write_dashboard(summary, eval_dirs, out / "report.html", value)
    write_json(out / "value.json", strict(value))
    write_json(out / "summary.json", strict(summary))
    _print_gates(summary)
    console.print(f"dashboard: {out / 'report.html'} (serve it: finops-ml dashboard --out {out})\n"
                  f"summary: {out / 'summary.json'}  value: {out / 'value.json'}  "
                  f"[dim](total {timings['total']:.1f} s)[/]")


def _step_error(log_path: Path) -> str:
    """The user-facing error a failed step raised, if it was one (FinopsError), from the run's log."""
    for line in reversed(log_path.read_text().splitlines()):
        if "FinopsError: " in line:
            return line.split("FinopsError: ", 1)[1].strip()
    return ""


def _print_gates(summary: dict) -> None:
    table = Table(title="Evaluation gates (held-out data)")
    for col in ("gate", "value", "threshold", "result"):
        table.add_column(col)
    for gate, g in summary["gates"].items():
        value = "n/a" if g["value"] is None else f"{g['value']:.4f}"
        table.add_row(gate, value, f"{g['threshold']:.2f}", "[green]PASS[/]" if g["passed"] else "[red]FAIL[/]")
    console.print(table)
    for name, reason in summary.get("not_trained", {}).items():
        console.print(f"[yellow]{name} not trained:[/] {reason}")
    before = summary["label_compliance_before"]
    console.print(f"label compliance before: {'n/a' if before is None else f'{before:.4f}'}; rows {summary['rows']}; "
                  f"reconciliation diff {summary['reconciliation_diff']}")
    regs = ", ".join(f"{r['name']} v{r['version']} ({'/'.join(r['aliases'])})" for r in summary["registered"])
    console.print(f"registered: {regs or 'nothing (no gate passed)'}")
    mon = summary.get("monitoring") or {}
    if mon.get("enabled"):
        drifted = ", ".join(f"{d['model']} {d['check']}" for d in mon["drifted"])
        none = [n for n, m in mon["models"].items() if m["status"] == "no reference"]
        console.print("monitoring against the champions: " + (f"[red]drift[/] in {drifted}" if drifted else "no drift")
                      + (f"; no reference for {', '.join(none)}" if none else "")
                      + " (dashboard section Model monitoring)")


@app.command("compile")
def compile_cmd(output: Path = typer.Option(Path("out/training_pipeline.yaml"), help="Where to write the YAML.")):
    """Compile the training pipeline to the YAML that Vertex AI Pipelines accepts."""
    from pipelines.local import compile_pipeline

    console.print(f"compiled {compile_pipeline(output)}")


from finops_cli import anomalies as _anomalies  # noqa: E402

app.command()(_anomalies.detect)
app.command()(_anomalies.feedback)

from finops_cli import vertex as _vertex  # noqa: E402 (submit, schedule, promote)

_vertex.register(app)

from finops_cli import featurestore as _featurestore  # noqa: E402 (featurestore sync, status)

_featurestore.register(app)

from finops_cli.serve import serve  # noqa: E402

app.command()(serve)

from finops_cli.dashboard import dashboard  # noqa: E402

app.command()(dashboard)

from finops_cli.monitor import monitor  # noqa: E402

app.command()(monitor)

from finops_cli import stream as _stream  # noqa: E402

_stream.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
