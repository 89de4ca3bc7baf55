"""The prediction server: the three registered models behind the Vertex AI custom container contract.

  POST {AIP_PREDICT_ROUTE}  {"instances": [...], "parameters": {...}}  ->  {"predictions": [...]}
  GET  {AIP_HEALTH_ROUTE}   200 once the model is loaded, 503 before

The port is AIP_HTTP_PORT (default 8080), the model's directory AIP_STORAGE_URI (a registry version directory, or
gs://... on Vertex AI, downloaded at start-up), or, outside Vertex AI (docker compose, Kubernetes), a local registry:
FINOPS_REGISTRY with FINOPS_MODEL (forecast, anomaly or labeler) under FINOPS_MODEL_ALIAS (default champion). When
FINOPS_MODEL is set, the model found must be of that kind: a container started for the forecast never serves a
labeler. One model per server, as on a Vertex endpoint; `finops-ml serve` without --model serves the three side by
side under /forecast, /anomaly and /labeler.

Each model's instance is a pydantic model (the README documents them). Requests are cheap by design:
- forecast: the model's stored forecast (forecast.csv beside the model, the library's own forecast for every
  series), indexed by (service, project_id) at load time: a lookup; or, with the series' recent daily `history`,
  the model run on that one series;
- anomaly: a short window of a cell's daily costs (per resource, or for the whole cell) ending on the day judged;
  the detector's recursive baseline runs over that window only;
- labeler: one resource's metadata; the TF-IDF + logistic regression pipelines run on it without a DataFrame.
With FINOPS_FEATURE_VIEW set (an online feature view of `finops-ml featurestore sync`), a forecast or anomaly
instance without a history is given the series' stored one first (finops_ml.serving.online_store).

A bad instance is a 400 whose message names the instance index and the field (and, when it is another model's
instance, which service to send it to); an unknown route is a 404 that names this server's model and routes; a
body over the limit, or more instances than the kind's limit (schemas.MAX_INSTANCES), is a 413; a body not
received within `body_timeout_s` is a 408. Validation and prediction run on a worker thread, so health answers
stay fast while a heavy request computes.
Anything unexpected is a 500 with a JSON sentence (the traceback goes to the server's log), never a reset connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import threading
from collections.abc import Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.concurrency import run_in_threadpool

from finops_ml.errors import FinopsError
from finops_ml.serving.online_store import FEATURE_VIEW, OnlineStore
from finops_ml.serving.predictors import PREDICTORS, Predictor, kind_of, resolve_registry
from finops_ml.serving.schemas import DEFAULT_MAX_BODY_BYTES, DEFAULT_PORT, RequestError

log = logging.getLogger("finops_ml.serving")

# ---- the HTTP app ---------------------------------------------------------------------------------------------------

def _answer(predictor: Predictor, instances: list, parameters: dict | None) -> str:
    """Validate, predict and serialise (on a worker thread: the event loop keeps answering health checks)."""
    items, params = predictor.validate(instances, parameters)
    return json.dumps({"predictions": predictor.predict(items, params)}, allow_nan=False)


class ServerSpec(BaseModel):
    """What one server process serves; passed to worker processes as JSON in FINOPS_SERVE_SPEC."""

    models: dict[Literal["forecast", "anomaly", "labeler"], str]  # kind -> model directory
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1)
    body_timeout_s: float = Field(30.0, gt=0)  # a client that stops sending mid-body gets 408, not a held worker
    health_route: str = "/health"
    predict_route: str = "/predict"
    # The online store's series feature view the forecast and anomaly models read a missing history from
    # (finops_ml.serving.online_store); empty: off. Its API endpoint; empty: REGION-aiplatform.googleapis.com.
    feature_view: str = ""
    feature_store_endpoint: str = ""

    def routes(self) -> dict[str, tuple[str, str]]:
        """kind -> (health route, predict route): the AIP_* routes for one model, /<kind>/... for several."""
        if len(self.models) == 1:
            return {next(iter(self.models)): (self.health_route, self.predict_route)}
        return {kind: (f"/{kind}/health", f"/{kind}/predict") for kind in self.models}


def create_app(spec: ServerSpec):
    """The FastAPI app; models load on a background thread at start-up, health says 503 until they are ready."""
    predictors: dict[str, Predictor] = {}
    failures: dict[str, str] = {}

    def load() -> None:
        for kind, model_dir in spec.models.items():
            try:
                predictor = PREDICTORS[kind](model_dir)
                if spec.feature_view and kind in ("forecast", "anomaly"):
                    predictor.store = OnlineStore(spec.feature_view, spec.feature_store_endpoint)
                predictors[kind] = predictor
            except Exception as exc:  # reported by health and predict; the process stays up to say so
                failures[kind] = f"{exc.__class__.__name__}: {exc}"

    @asynccontextmanager
    async def lifespan(app):
        thread = threading.Thread(target=load, name="model-loader", daemon=True)
        thread.start()
        yield

    app = FastAPI(title="finops-ml prediction server", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)

    def error(status: int, message: str) -> Response:
        return Response(json.dumps({"error": message}), status_code=status, media_type="application/json")

    def not_ready(kind: str) -> Response:
        if kind in failures:
            return error(503, f"model {kind} failed to load: {failures[kind]}")
        return error(503, f"model {kind} is loading; retry shortly.")

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > spec.max_body_bytes:
            raise RequestError(f"request body of {int(declared):,} bytes is over the limit of "
                               f"{spec.max_body_bytes:,} bytes; send fewer instances per request.", 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > spec.max_body_bytes:
                raise RequestError(f"request body is over the limit of {spec.max_body_bytes:,} bytes; send fewer "
                                   "instances per request.", 413)
            chunks.append(chunk)
        return b"".join(chunks)

    def make_routes(kind: str, health_route: str, predict_route: str) -> None:
        async def health() -> Response:
            if kind not in predictors:
                return not_ready(kind)
            return JSONResponse({"status": "ready", **predictors[kind].describe()})

        async def predict(request: Request) -> Response:
            predictor = predictors.get(kind)
            if predictor is None:
                return not_ready(kind)
            try:
                try:
                    body = await asyncio.wait_for(read_body(request), spec.body_timeout_s)
                except asyncio.TimeoutError:
                    raise RequestError(f"request body not received within {spec.body_timeout_s:g} s; send it "
                                       "whole.", 408) from None
                try:
                    payload = json.loads(body)
                except RecursionError:
                    raise RequestError("request body nests JSON too deeply; send "
                                       '{"instances": [...], "parameters": {...}}.') from None
                except ValueError as exc:
                    raise RequestError(f"request body is not valid JSON ({exc}); send "
                                       '{"instances": [...], "parameters": {...}}.') from None
                if not isinstance(payload, dict) or "instances" not in payload:
                    raise RequestError('request body must be a JSON object with an "instances" list.')
                unknown = set(payload) - {"instances", "parameters"}
                if unknown:
                    raise RequestError(f"request body has unknown key(s) {', '.join(sorted(unknown))}; only "
                                       '"instances" and "parameters" are read.')
                instances = payload["instances"]
                if not isinstance(instances, list) or not instances:
                    raise RequestError('"instances" must be a non-empty list.')
                parameters = payload.get("parameters")
                if parameters is not None and not isinstance(parameters, dict):
                    raise RequestError('"parameters" must be a JSON object.')
                answer = await run_in_threadpool(_answer, predictor, instances, parameters)
            except RequestError as exc:
                return error(exc.status, str(exc))
            except Exception:
                log.exception("%s prediction failed", kind)
                return error(500, f"the {kind} model could not answer this request (an internal error, logged by "
                                  "the server); check the instances' values or report it.")
            return Response(answer, media_type="application/json")

        app.add_api_route(health_route, health, methods=["GET"])
        app.add_api_route(predict_route, predict, methods=["POST"])

    routes = spec.routes()
    for kind, (h, p) in routes.items():
        make_routes(kind, h, p)

    from starlette.exceptions import HTTPException as StarletteHTTPException

    served = ", ".join(f"{kind} (GET {h}, POST {p})" for kind, (h, p) in routes.items())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return error(404, f"no route {request.method} {request.url.path} on this server; it serves {served}.")
        if exc.status_code == 405:
            return error(405, f"{request.method} is not allowed on {request.url.path}; it serves {served}.")
        return error(exc.status_code, str(exc.detail))
    if len(routes) > 1:
        async def health_all() -> Response:
            for kind in spec.models:
                if kind not in predictors:
                    return not_ready(kind)
            return JSONResponse({"status": "ready", "models": [p.describe() for p in predictors.values()]})

        app.add_api_route(spec.health_route, health_all, methods=["GET"])
    app.state.predictors = predictors
    return app


# ---- process entry: env (Vertex AI contract) or the CLI's spec -------------------------------------------------------

SPEC_ENV = "FINOPS_SERVE_SPEC"


class ContainerSettings(BaseSettings):
    """The server's environment: Vertex AI's custom container contract (AIP_*) and the server's own FINOPS_*
    variables. Each field is read from the variable of its name in upper case; an empty variable counts as unset."""

    model_config = SettingsConfigDict(case_sensitive=False, env_ignore_empty=True, extra="ignore")

    aip_http_port: int = Field(DEFAULT_PORT, ge=1, le=65535)
    aip_health_route: str = Field("/health", pattern="^/")
    aip_predict_route: str = Field("/predict", pattern="^/")
    aip_storage_uri: str = ""  # the model's directory: a registry version directory, or gs://... (Vertex AI)
    finops_model: Literal["forecast", "anomaly", "labeler"] | None = None  # the kind this container must serve
    finops_registry: str = ""  # a local registry (compose, Kubernetes): FINOPS_MODEL's FINOPS_MODEL_ALIAS in it
    finops_model_alias: str = Field("champion", min_length=1)
    finops_max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1)
    finops_workers: int = Field(1, ge=1)
    finops_serve_spec: str = ""  # a ServerSpec as JSON: set by `finops-ml serve` for its worker processes
    # A history missing from a forecast or anomaly instance is read from this online feature view (series_latest of
    # `finops-ml featurestore sync`); FINOPS_FEATURE_STORE_ENDPOINT: its API host (default: the region's).
    finops_feature_view: str = Field("", pattern=f"^$|{FEATURE_VIEW.pattern.replace('?P<location>', '')}")
    finops_feature_store_endpoint: str = ""


def container_settings(environ: Mapping[str, str] | None = None) -> ContainerSettings:
    """The settings from the process environment (or from `environ`); a bad value is one sentence naming it."""
    try:
        if environ is None:
            return ContainerSettings()
        fields = ContainerSettings.model_fields
        return ContainerSettings.model_validate({k.lower(): v for k, v in environ.items()
                                                 if k.lower() in fields and v != ""})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise FinopsError(f"{str(err['loc'][0]).upper()}={err['input']!r} is invalid ({err['msg'].lower()}); "
                          "fix or unset it.") from None


def spec_from_env(environ: Mapping[str, str] | None = None) -> ServerSpec:
    """The server's spec: FINOPS_SERVE_SPEC (set by `finops-ml serve`), else the AIP_* variables of Vertex AI."""
    return _spec(container_settings(environ))


def _spec(env: ContainerSettings) -> ServerSpec:
    if env.finops_serve_spec:
        return ServerSpec.model_validate_json(env.finops_serve_spec)
    uri = env.aip_storage_uri
    if uri:
        model_dir = download_gcs(uri) if uri.startswith("gs://") else Path(uri)
        kind = kind_of(model_dir)
        if env.finops_model is not None and kind != env.finops_model:
            raise FinopsError(f"AIP_STORAGE_URI={uri} holds the {kind} model but FINOPS_MODEL={env.finops_model}; "
                              f"point AIP_STORAGE_URI at a {env.finops_model} model version or fix FINOPS_MODEL.")
    elif env.finops_registry:
        if env.finops_model is None:
            raise FinopsError(f"FINOPS_REGISTRY={env.finops_registry} is set without FINOPS_MODEL; set FINOPS_MODEL "
                              "to the model this container serves (forecast, anomaly or labeler).")
        kind = env.finops_model
        model_dir = resolve_registry(env.finops_registry, [kind], env.finops_model_alias)[kind]
    else:
        raise FinopsError("AIP_STORAGE_URI is not set; set it to the model's directory (a registry version "
                          "directory, or gs://bucket/path), or set FINOPS_REGISTRY and FINOPS_MODEL.")
    return ServerSpec(models={kind: str(model_dir)}, max_body_bytes=env.finops_max_body_bytes,
                      health_route=env.aip_health_route, predict_route=env.aip_predict_route,
                      feature_view=env.finops_feature_view,
                      feature_store_endpoint=env.finops_feature_store_endpoint)


def download_gcs(uri: str) -> Path:
    """Copy the model artifacts under a gs:// prefix to a local directory (what Vertex AI gives a container)."""
    from google.cloud import storage

    bucket_name, _, prefix = uri[len("gs://"):].partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    target = Path(tempfile.mkdtemp(prefix="finops-model-"))
    client = storage.Client()
    found = 0
    for blob in client.list_blobs(bucket_name, prefix=prefix):
        rel = blob.name[len(prefix):]
        if not rel or rel.endswith("/"):
            continue
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        blob.download_to_filename(str(target / rel))
        found += 1
    if not found:
        raise FinopsError(f"No model artifacts under {uri}; check AIP_STORAGE_URI.")
    return target


def app_from_env():
    """uvicorn factory (`finops_ml.serving.app:app_from_env`): one app per worker process."""
    return create_app(spec_from_env())


def run_server(spec: ServerSpec, host: str, port: int, workers: int = 1, log_level: str = "info") -> None:
    """Serve with uvicorn's production settings: uvloop + httptools, no access log, `workers` processes."""
    import uvicorn

    os.environ[SPEC_ENV] = spec.model_dump_json()
    uvicorn.run("finops_ml.serving.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                loop="uvloop", http="httptools", access_log=False, log_level=log_level,
                timeout_graceful_shutdown=5)


def main() -> None:
    """Container entry point: serve the model of AIP_STORAGE_URI on AIP_HTTP_PORT."""
    import sys

    try:
        env = container_settings()
        spec = _spec(env)
    except FinopsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    run_server(spec, "0.0.0.0", env.aip_http_port, env.finops_workers)

