"""`finops-ml submit | schedule create|list|delete | promote`: the production path on Vertex AI.

Every command loads and validates the config before any request: a missing or bad key is one sentence naming the
file and the key, and nothing is sent.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table

from finops_ml.config import Config, load_config
from finops_ml.errors import FinopsError

console = Console()
schedule_app = typer.Typer(no_args_is_help=True, help="Retraining schedules: Vertex AI schedules or Cloud Scheduler.")

CONFIG_HELP = "Per-environment YAML config (configs/dev.yaml, configs/prod.yaml)."
ENDPOINT_HELP = ("API endpoint for the Google clients instead of the default one: a regional or private (PSC) host, "
                 "or http://127.0.0.1:PORT for a loopback recorder. Overrides gcp.api_endpoint and "
                 "gcp.scheduler_api_endpoint.")


def _load(config: Path, command: str, api_endpoint: Optional[str] = None, **schedule: Optional[str]) -> Config:
    """The validated config (one sentence naming the file and key otherwise), before any request."""
    from finops_ml.platform.gcp import validate

    cfg = load_config(config)
    if api_endpoint:
        cfg = cfg.with_updates("--api-endpoint", gcp={"api_endpoint": api_endpoint,
                                                      "scheduler_api_endpoint": api_endpoint})
    updates = {k: v for k, v in schedule.items() if v}
    if updates:
        cfg = cfg.with_updates("--backend", schedule=updates)
    validate(cfg, config, command)
    return cfg


@contextlib.contextmanager
def _template(cfg: Config, template: Optional[Path]) -> Iterator[Path]:
    """The compiled pipeline: the given YAML, or compiled now with the config's pipeline image."""
    if template is not None:
        if not template.exists():
            raise FinopsError(f"Pipeline template {template} does not exist; run `finops-ml compile` "
                              "or drop --template.")
        yield template
        return
    from pipelines.local import compile_pipeline

    with tempfile.TemporaryDirectory(prefix="finops-ml-") as tmp:
        yield compile_pipeline(Path(tmp) / "training_pipeline.yaml", image=cfg.pipeline.image)


@contextlib.contextmanager
def _google_errors(what: str) -> Iterator[None]:
    """A refused API call becomes one sentence (what was refused, the API's reason, what to check)."""
    from google.api_core import exceptions

    try:
        yield
    except exceptions.GoogleAPICallError as exc:
        reason = (exc.message or str(exc)).splitlines()[0].rstrip(".")
        reason = re.sub(r"^(GET|POST|PUT|PATCH|DELETE) \S+: ", "", reason)  # the REST transport prefixes the URL
        raise FinopsError(f"{what} was refused by the Google API ({exc.code}: {reason}); check the project, region, "
                          "endpoint and the caller's IAM roles (README: Production on Vertex AI).") from None


def submit(
    config: Path = typer.Option(..., help=CONFIG_HELP),
    template: Optional[Path] = typer.Option(None, help="Compiled pipeline YAML (default: compile now)."),
    job_id: Optional[str] = typer.Option(None, help="Pipeline job id (default: generated)."),
    api_endpoint: Optional[str] = typer.Option(None, help=ENDPOINT_HELP),
):
    """Submit the training pipeline to Vertex AI Pipelines (PipelineJob), without waiting for it."""
    from finops_ml.platform import schedules

    cfg = _load(config, "submit", api_endpoint)
    with _template(cfg, template) as path, _google_errors("Submitting the pipeline job"):
        job = schedules.submit(cfg, path, job_id)
    console.print(f"submitted {job['name']} ({job['state']})")


@schedule_app.command("create")
def schedule_create(
    config: Path = typer.Option(..., help=CONFIG_HELP),
    backend: Optional[str] = typer.Option(None, help="vertex or cloud_scheduler (default: schedule.backend)."),
    template: Optional[Path] = typer.Option(None, help="Compiled pipeline YAML (default: compile now)."),
    api_endpoint: Optional[str] = typer.Option(None, help=ENDPOINT_HELP),
):
    """Create the retraining schedule (cron and time zone from the config)."""
    from finops_ml.platform import schedules

    cfg = _load(config, "schedule", api_endpoint, backend=_backend(backend))
    with _template(cfg, template) as path, _google_errors("Creating the schedule"):
        created = schedules.create_schedule(cfg, path)
    console.print(f"created {created['backend']} schedule {created['name']}: {created['cron']}")


@schedule_app.command("list")
def schedule_list(
    config: Path = typer.Option(..., help=CONFIG_HELP),
    backend: Optional[str] = typer.Option(None, help="vertex or cloud_scheduler (default: schedule.backend)."),
    api_endpoint: Optional[str] = typer.Option(None, help=ENDPOINT_HELP),
):
    """List the schedules of the project and region."""
    from finops_ml.platform import schedules

    cfg = _load(config, "gcp", api_endpoint, backend=_backend(backend))
    with _google_errors("Listing the schedules"):
        rows = schedules.list_schedules(cfg)
    table = Table(title=f"{cfg.schedule.backend} schedules in {cfg.gcp.project}/{cfg.gcp.region}")
    for col in ("display name", "cron", "state", "name"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["display_name"], r["cron"], r["state"], r["name"])
    console.print(table)


@schedule_app.command("delete")
def schedule_delete(
    config: Path = typer.Option(..., help=CONFIG_HELP),
    name: Optional[str] = typer.Option(None, help="Display name (default: schedule.display_name)."),
    backend: Optional[str] = typer.Option(None, help="vertex or cloud_scheduler (default: schedule.backend)."),
    api_endpoint: Optional[str] = typer.Option(None, help=ENDPOINT_HELP),
):
    """Delete the schedule with this display name."""
    from finops_ml.platform import schedules

    cfg = _load(config, "gcp", api_endpoint, backend=_backend(backend))
    with _google_errors("Deleting the schedule"):
        deleted = schedules.delete_schedule(cfg, name or cfg.schedule.display_name)
    for resource in deleted:
        console.print(f"deleted {resource}")


def _backend(backend: Optional[str]) -> Optional[str]:
    if backend not in (None, "vertex", "cloud_scheduler"):
        raise typer.BadParameter("give vertex or cloud_scheduler", param_hint="--backend")
    return backend


def promote(
    model: str = typer.Argument(..., help="Model name: cost-forecast, cost-anomaly or resource-labeler."),
    version: int = typer.Option(..., help="The version to make champion."),
    config: Optional[Path] = typer.Option(None, help="YAML config; its registry.backend picks local or Vertex AI."),
    registry: Path = typer.Option(Path("out/registry"), help="The local registry directory (local backend)."),
    api_endpoint: Optional[str] = typer.Option(None, help=ENDPOINT_HELP),
):
    """Move the champion alias to VERSION (no re-evaluation: a person's decision, e.g. a rollback)."""
    from finops_ml.platform.registry import registry_for

    cfg = load_config(config)
    if cfg.registry.backend == "vertex":
        cfg = _load(config, "gcp", api_endpoint)
    elif not (registry / model).is_dir():
        raise FinopsError(f"Model {model} is not in the local registry {registry}; pass --registry DIR "
                          "(a run's OUT/registry).")
    with _google_errors("Moving the champion alias"):
        registry_for(cfg, registry).promote(model, version)
    console.print(f"{model}: champion is now v{version} ({cfg.registry.backend} registry)")


def register(app: typer.Typer) -> None:
    """Add these commands to the `finops-ml` app."""
    app.command()(submit)
    app.command()(promote)
    app.add_typer(schedule_app, name="schedule")
