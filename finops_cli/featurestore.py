"""`finops-ml featurestore sync | status`: the Vertex AI Feature Store over the feature views (finops_ml.platform.
featurestore). The config is loaded and checked before any request, as for the other Vertex AI commands."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from finops_cli.vertex import CONFIG_HELP, ENDPOINT_HELP, _google_errors, _load

console = Console()
featurestore_app = typer.Typer(no_args_is_help=True, help="The Vertex AI Feature Store: BigQuery feature views, "
                                                          "feature groups, the online store the serving reads.")


@featurestore_app.command("sync")
def sync(
    config: Path = typer.Option(..., help=CONFIG_HELP),
    trigger: bool = typer.Option(True, help="Start a sync of each online feature view now (--no-trigger: only "
                                            "create what is missing; the views sync on featurestore.sync_cron)."),
    api_endpoint: Optional[str] = typer.Option(None, help=ENDPOINT_HELP),
):
    """Create what is missing (BigQuery views, feature groups and features, the online store and its feature views),
    then start a sync of each feature view. Running it again creates nothing that exists."""
    from finops_ml.platform import featurestore

    cfg = _load(config, "featurestore", api_endpoint)
    with _google_errors("Setting up the feature store"):
        done = featurestore.sync(cfg, trigger=trigger)
    for d in done:
        detail = f" ({d['detail']})" if d["detail"] else ""
        console.print(f"{d['action']:>8}  {d['kind']} {d['name']}{detail}", highlight=False)
    created = sum(d["action"] in ("created", "updated") for d in done)
    started = sum(d["action"] == "started" for d in done)
    console.print(f"{created} created or updated, {len(done) - created - started} already there, {started} syncs "
                  "started (finops-ml featurestore status shows how they end).", highlight=False)


@featurestore_app.command("status")
def status(
    config: Path = typer.Option(..., help=CONFIG_HELP),
    api_endpoint: Optional[str] = typer.Option(None, help=ENDPOINT_HELP),
):
    """The online store's feature views and their latest sync; the series view's name is what serving reads
    (FINOPS_FEATURE_VIEW)."""
    from finops_ml.platform import featurestore

    cfg = _load(config, "featurestore", api_endpoint)
    with _google_errors("Reading the feature store"):
        rows = featurestore.status(cfg)
    table = Table(title=f"feature views of {cfg.featurestore.online_store} in {cfg.gcp.project}/{cfg.gcp.region}")
    for col in ("view", "group", "latest sync", "state", "rows", "name"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["view"], r["group"], r["sync"].rsplit("/", 1)[-1], r["state"], r["rows"], r["resource"])
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(featurestore_app, name="featurestore")
