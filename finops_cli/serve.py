"""`finops-ml serve`: the prediction server on this machine, from the local registry."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from finops_ml.config import load_config
from finops_ml.errors import FinopsError

console = Console()


def serve(
    model: Optional[str] = typer.Option(None, help="forecast, anomaly or labeler; default: all three, under "
                                                   "/forecast/..., /anomaly/... and /labeler/..."),
    registry: Path = typer.Option(Path("out/registry"), help="The local registry (finops-ml run --out DIR makes "
                                                             "DIR/registry)."),
    alias: Optional[str] = typer.Option(None, help="Alias or version number to serve (default: the config's, "
                                                   "champion)."),
    host: Optional[str] = typer.Option(None, help="Interface to listen on (default: the config's, 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="Port to listen on (default: the config's, 8080)."),
    workers: Optional[int] = typer.Option(None, help="Server processes (default: the config's, 1)."),
    max_body_bytes: Optional[int] = typer.Option(None, help="Largest request body accepted (default: the config's, "
                                                            "1,500,000); larger ones get 413."),
    config: Optional[Path] = typer.Option(None, help="YAML config (default: configs/local.yaml)."),
    feature_view: str = typer.Option("", help="An online feature view (projects/.../featureViews/series_latest, "
                                              "`finops-ml featurestore status`) the forecast and anomaly models read "
                                              "a series' history from when an instance has none; default: off."),
    feature_store_endpoint: str = typer.Option("", help="The feature view's API endpoint (default: "
                                                        "REGION-aiplatform.googleapis.com)."),
):
    """Serve the registered models over HTTP, as the Vertex AI custom container does."""
    from finops_ml.models.catalogue import MODELS
    from finops_ml.serving import app, predictors

    cfg = load_config(config).with_options("serving", host=host, port=port, workers=workers,
                                           max_body_bytes=max_body_bytes).serving
    if model is not None and model not in MODELS:
        raise FinopsError(f"--model {model!r} is not one of {', '.join(MODELS)}; pick one or leave it "
                          "out to serve all three.")
    kinds = [model] if model else list(MODELS)
    dirs = predictors.resolve_registry(registry, kinds, alias or cfg.alias)
    if feature_view:
        from finops_ml.serving.online_store import OnlineStore

        OnlineStore(feature_view, feature_store_endpoint)  # a malformed name is one sentence before the server starts
    spec = app.ServerSpec(models={k: str(d) for k, d in dirs.items()}, max_body_bytes=cfg.max_body_bytes,
                          feature_view=feature_view, feature_store_endpoint=feature_store_endpoint)
    for kind, (health, predict) in spec.routes().items():
        console.print(f"{kind}: {dirs[kind]}  POST {predict}  GET {health}")
    if len(spec.models) > 1:
        console.print(f"all: GET {spec.health_route}")
    app.run_server(spec, cfg.host, cfg.port, cfg.workers)
