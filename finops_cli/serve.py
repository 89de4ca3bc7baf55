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
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8080, help="Port to listen on."),
    workers: Optional[int] = typer.Option(None, help="Server processes (default: the config's, 1)."),
    max_body_bytes: Optional[int] = typer.Option(None, help="Largest request body accepted (default: the config's, "
                                                            "1,500,000); larger ones get 413."),
    config: Optional[Path] = typer.Option(None, help="YAML config (default: configs/local.yaml)."),
):
    """Serve the registered models over HTTP, as the Vertex AI custom container does."""
    from finops_ml.models.catalogue import MODELS
    from finops_ml.serving import app, predictors

    cfg = load_config(config).serving
    if model is not None and model not in MODELS:
        raise FinopsError(f"--model {model!r} is not one of {', '.join(MODELS)}; pick one or leave it "
                          "out to serve all three.")
    if workers is not None and workers < 1:
        raise FinopsError(f"--workers {workers} is not a positive number of processes; pass 1 or more.")
    if max_body_bytes is not None and max_body_bytes < 1:
        raise FinopsError(f"--max-body-bytes {max_body_bytes} is not a positive size; pass a number of bytes.")
    kinds = [model] if model else list(MODELS)
    dirs = predictors.resolve_registry(registry, kinds, alias or cfg.alias)
    spec = app.ServerSpec(models={k: str(d) for k, d in dirs.items()},
                          max_body_bytes=max_body_bytes or cfg.max_body_bytes)
    for kind, (health, predict) in spec.routes().items():
        console.print(f"{kind}: {dirs[kind]}  POST {predict}  GET {health}")
    if len(spec.models) > 1:
        console.print(f"all: GET {spec.health_route}")
    app.run_server(spec, host, port, workers or cfg.workers)
