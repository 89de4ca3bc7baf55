"""The production path on Vertex AI, through the official clients (google-cloud-aiplatform, -storage, -scheduler).

- `VertexRegistry`: each registered model is a new version of one parent model per model name (`parent_model=`),
  with the alias `champion` (it moves: Vertex AI removes an alias from the version that had it) or `challenger`,
  labels with the data window, run id and config digest, the artifacts uploaded to GCS first, the serving container
  (image, AIP routes, port) and its held-out metrics imported as a ModelEvaluation. The champion is decided from the
  champion's stored evaluation: no re-evaluation.
- `deploy_vertex`: the endpoint `<deploy.endpoint_display_name>-<model>` is found by display name or created; a new
  champion is deployed with `deploy.canary_percent` of the traffic and the versions beyond the newest
  `deploy.keep_versions` are undeployed, their traffic going to the ones kept.
- `submit` / `create_schedule` / `list_schedules` / `delete_schedule`: PipelineJob, Vertex AI pipeline schedules, or
  a Cloud Scheduler job that POSTs the same PipelineJob to the Vertex AI API with the scheduler's service account.
- `validate`: what each command needs from the config, checked before any request is sent.

Transport: REST everywhere (what the tests exercise against a recording server is what runs). An endpoint given as
`http://...` is a loopback recorder/emulator: the clients then use anonymous credentials, so a real token is never
sent over plain http. Otherwise Application Default Credentials (the pipeline runner's service account on Vertex).
"""

from __future__ import annotations

import json
import math
import re
import zoneinfo
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from finops_ml.config import Config
from finops_ml.errors import FinopsError
from finops_ml.models.catalogue import ANOMALY, MODELS, PRIMARY_METRIC
from finops_ml.platform.registry import canary_split, keep_newest

# The serving container contract (Vertex AI sets AIP_HTTP_PORT / AIP_PREDICT_ROUTE / AIP_HEALTH_ROUTE from these).
SERVING_PORT = 8080
PREDICT_ROUTE = "/predict"
HEALTH_ROUTE = "/health"
# Which evaluation schema the imported metrics are filed under, per model (from the catalogue).
METRICS_SCHEMA = {spec.name: spec.evaluation_schema for spec in MODELS.values()}
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"

_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
_SERVICE_ACCOUNT = re.compile(r"^[a-z0-9-]+@[a-z0-9.-]+\.iam\.gserviceaccount\.com$"
                              r"|^[0-9]+-compute@developer\.gserviceaccount\.com$")
_NETWORK = re.compile(r"^projects/[^/\s]+/global/networks/[^/\s]+$")
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_IMAGE = re.compile(r"^[a-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+(:[\w.-]+|@sha256:[0-9a-f]{64})?$")

# What each command needs from the config (see `validate`).
NEEDS = {
    "submit": ("gcp", "pipeline", "registry", "deploy"),
    "schedule": ("gcp", "pipeline", "registry", "deploy", "schedule"),
    "gcp": ("gcp",),
    "registry": ("gcp", "registry_storage", "deploy"),
}


# ---------------------------------------------------------------------------------------------- validation
def validate(cfg: Config, source: str | Path, command: str) -> None:
    """Raise one FinopsError naming the config file and key when `cfg` lacks what `command` needs."""

    def bad(key: str, problem: str, fix: str) -> FinopsError:
        return FinopsError(f"Config file {source}: key '{key}' {problem}; {fix}.")

    needs = NEEDS[command]
    g, p, d, s = cfg.gcp, cfg.pipeline, cfg.deploy, cfg.schedule
    if not g.project:
        raise bad("gcp.project", "is missing", "set the id of the GCP project to run in")
    if not _PROJECT.match(g.project):
        raise bad("gcp.project", f"'{g.project}' is not a GCP project id",
                  "use the project's id (6-30 lowercase letters, digits, hyphens)")
    if not _REGION.match(g.region):
        raise bad("gcp.region", f"'{g.region}' is not a GCP region", "use a region such as europe-west1")
    for key in ("api_endpoint", "scheduler_api_endpoint"):
        value = getattr(g, key)
        if value and (re.search(r"\s", value) or value.startswith("https://") or "/" in value.removeprefix("http://")):
            raise bad(f"gcp.{key}", f"'{value}' is not an API endpoint",
                      "give a host name such as europe-west1-aiplatform.googleapis.com (or http://127.0.0.1:PORT for a "
                      "loopback recorder)")
    for key, value in g.labels.items():
        if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
            raise bad(f"gcp.labels.{key}", f"'{key}: {value}' is not a valid GCP label",
                      "use lowercase letters, digits, '_' and '-' (keys start with a letter, 63 characters at most)")
    if "pipeline" in needs:
        root = p.pipeline_root
        if not root:
            raise bad("pipeline.pipeline_root", "is missing",
                      "set a gs://BUCKET/PATH where Vertex AI writes the runs' artifacts")
        if not re.match(r"^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/.*)?$", root):
            raise bad("pipeline.pipeline_root", f"'{root}' is not a gs:// path", "set a gs://BUCKET/PATH")
        if not g.service_account:
            raise bad("gcp.service_account", "is missing", "set the pipeline runner's service account email")
        if not _SERVICE_ACCOUNT.match(g.service_account):
            raise bad("gcp.service_account", f"'{g.service_account}' is not a service account email",
                      "use NAME@PROJECT.iam.gserviceaccount.com")
        if g.network and not _NETWORK.match(g.network):
            raise bad("gcp.network", f"'{g.network}' is not a network name",
                      "use projects/PROJECT_NUMBER/global/networks/NAME")
        if not p.image or "PROJECT" in p.image or not _IMAGE.match(p.image):
            raise bad("pipeline.image", f"'{p.image}' is not a container image" if p.image else "is missing",
                      "set the pipeline image built from deploy/Dockerfile.pipeline "
                      "(REGION-docker.pkg.dev/PROJECT/REPO/NAME:TAG)")
        if not p.source.startswith(("bq://", "kafka://")):
            raise bad("pipeline.source", f"'{p.source}' cannot be read on Vertex AI" if p.source else "is missing",
                      "set the BigQuery billing export (bq://PROJECT.DATASET.TABLE) or a kafka:// topic")
    if "registry" in needs and cfg.registry.backend != "vertex":
        raise bad("registry.backend", "is 'local'",
                  "set it to vertex: a local registry would vanish with the job's container")
    if "registry_storage" in needs:
        if not (g.staging_bucket or p.pipeline_root).startswith("gs://"):
            raise bad("gcp.staging_bucket", "is missing",
                      "set a gs:// prefix for the models' artifacts (or pipeline.pipeline_root)")
    if "deploy" in needs and d.enabled:
        if not d.serving_image or "PROJECT" in d.serving_image or not _IMAGE.match(d.serving_image):
            raise bad("deploy.serving_image",
                      f"'{d.serving_image}' is not a container image" if d.serving_image else "is missing",
                      "set the serving image built from deploy/Dockerfile.serving")
        if d.service_account and not _SERVICE_ACCOUNT.match(d.service_account):
            raise bad("deploy.service_account", f"'{d.service_account}' is not a service account email",
                      "use NAME@PROJECT.iam.gserviceaccount.com")
        if d.min_replicas > d.max_replicas:
            raise bad("deploy.min_replicas", f"{d.min_replicas} is above deploy.max_replicas {d.max_replicas}",
                      "lower it")
    if "schedule" in needs:
        if len(s.cron.split()) != 5:
            raise bad("schedule.cron", f"'{s.cron}' is not a 5-field cron expression",
                      "use e.g. '0 3 * * 1' (minute hour day month weekday)")
        if s.timezone not in zoneinfo.available_timezones():
            raise bad("schedule.timezone", f"'{s.timezone}' is not an IANA time zone", "use e.g. Europe/Paris or UTC")
        if s.backend == "cloud_scheduler" and not _SERVICE_ACCOUNT.match(s.service_account):
            raise bad("schedule.service_account",
                      f"'{s.service_account}' is not a service account email" if s.service_account else "is missing",
                      "set the service account Cloud Scheduler calls the Vertex AI API as")


# ---------------------------------------------------------------------------------------------- clients
def _anonymous(endpoint: str) -> bool:
    return endpoint.startswith("http://")


def credentials_for(endpoint: str):
    """Anonymous credentials for a plain-http (loopback) endpoint, else None: Application Default Credentials."""
    if _anonymous(endpoint):
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()
    return None


def init_vertex(cfg: Config) -> None:
    """Point the aiplatform SDK at the config's project, region and endpoint (REST transport)."""
    from google.cloud import aiplatform

    kwargs: dict[str, Any] = {"project": cfg.gcp.project, "location": cfg.gcp.region, "api_transport": "rest"}
    if cfg.gcp.api_endpoint:
        kwargs["api_endpoint"] = cfg.gcp.api_endpoint
        kwargs["credentials"] = credentials_for(cfg.gcp.api_endpoint)
    aiplatform.init(**kwargs)


def storage_client(cfg: Config):
    """A GCS client; honours STORAGE_EMULATOR_HOST (then with anonymous credentials)."""
    import os

    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=cfg.gcp.project, credentials=AnonymousCredentials())
    return storage.Client(project=cfg.gcp.project)


def upload_dir(cfg: Config, local_dir: str | Path, gs_prefix: str) -> list[str]:
    """Upload every file under `local_dir` to `gs_prefix` (gs://bucket/path); returns the object URIs."""
    bucket_name, _, prefix = gs_prefix.removeprefix("gs://").partition("/")
    bucket = storage_client(cfg).bucket(bucket_name)
    uris = []
    for path in sorted(Path(local_dir).rglob("*")):
        if path.is_file():
            name = f"{prefix.rstrip('/')}/{path.relative_to(local_dir).as_posix()}".lstrip("/")
            bucket.blob(name).upload_from_filename(str(path))
            uris.append(f"gs://{bucket_name}/{name}")
    return uris


def label_value(value: str) -> str:
    """A string made into a valid GCP label value (lowercase, [a-z0-9_-], 63 characters at most)."""
    return re.sub(r"[^a-z0-9_-]", "-", str(value).lower())[:63]


def _labels(cfg: Config, **extra: str) -> dict[str, str]:
    labels = {"app": "finops-ml", "environment": cfg.environment, **cfg.gcp.labels}
    labels.update({k: label_value(v) for k, v in extra.items() if v})
    return labels


def _numbers(metrics: dict) -> dict:
    """The finite numbers (and nested dicts of them) of a metrics dict: what a protobuf Struct can hold faithfully."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out[key] = _numbers(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


# ---------------------------------------------------------------------------------------------- registry
class VertexRegistry:
    """The Vertex AI Model Registry with the LocalRegistry's contract (register / promote / versions / aliases)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        init_vertex(cfg)

    def parent(self, name: str):
        """The model whose versions are this model name's versions (found by display name), or None."""
        from google.cloud import aiplatform

        models = aiplatform.Model.list(filter=f'display_name="{name}"', order_by="create_time")
        return models[0] if models else None

    def _versions(self, parent) -> list:
        return parent.versioning_registry.list_versions()

    def versions(self, name: str) -> list[int]:
        parent = self.parent(name)
        return sorted(int(v.version_id) for v in self._versions(parent)) if parent else []

    def aliases(self, name: str) -> dict[str, int]:
        parent = self.parent(name)
        out: dict[str, int] = {}
        for v in self._versions(parent) if parent else []:
            for alias in v.version_aliases:
                out[alias] = int(v.version_id)
        return out

    def _stored_metric(self, parent, version_id: str, primary: str) -> float | None:
        from google.cloud import aiplatform

        model = aiplatform.Model(parent.resource_name, version=str(version_id))
        evaluations = model.list_model_evaluations()
        if not evaluations:
            return None
        latest = max(evaluations, key=lambda e: e.create_time)
        value = dict(latest.metrics).get(primary)
        return float(value) if value is not None else None

    def register(self, name: str, model_dir: str | Path, metrics: dict, config_digest: str, data_window: dict,
                 run_id: str = "") -> dict:
        """Upload a new version; `champion` when not worse than the champion's stored evaluation, else `challenger`."""
        from google.cloud import aiplatform

        primary = PRIMARY_METRIC.get(name)
        value = metrics.get(primary) if primary else None
        parent = self.parent(name)
        champion_value = None
        if parent is not None and primary:
            champion = [v for v in self._versions(parent) if "champion" in v.version_aliases]
            if champion:
                champion_value = self._stored_metric(parent, champion[0].version_id, primary)
        is_champion = champion_value is None or (value is not None and value >= champion_value)

        stamp = run_id or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        staging = (self.cfg.gcp.staging_bucket or f"{self.cfg.pipeline.pipeline_root.rstrip('/')}/models").rstrip("/")
        artifact_uri = f"{staging}/{name}/{label_value(stamp)}"
        upload_dir(self.cfg, model_dir, artifact_uri)
        alias = "champion" if is_champion else "challenger"
        labels = _labels(self.cfg, model=name, run_id=run_id, config_digest=config_digest,
                         data_start=data_window.get("start", ""), data_end=data_window.get("end", ""))
        d = self.cfg.deploy
        model = aiplatform.Model.upload(
            display_name=name,
            parent_model=parent.resource_name if parent is not None else None,
            is_default_version=is_champion or parent is None,
            version_aliases=[alias],
            version_description=(f"run {run_id}; {primary} {value}; "
                                 f"data {data_window.get('start')}..{data_window.get('end')}"),
            artifact_uri=artifact_uri,
            serving_container_image_uri=d.serving_image or None,
            serving_container_predict_route=PREDICT_ROUTE,
            serving_container_health_route=HEALTH_ROUTE,
            serving_container_ports=[SERVING_PORT],
            serving_container_environment_variables={"FINOPS_ML_MODEL": name},
            labels=labels,
            sync=True,
        )
        self._import_evaluation(model, name, metrics, run_id)
        return {"name": name, "version": int(model.version_id), "resource_name": model.resource_name,
                "run_id": run_id, "metrics": metrics, "primary_metric": primary, "config_digest": config_digest,
                "data_window": data_window, "artifact_uri": artifact_uri, "champion_when_registered": is_champion,
                "aliases": [alias]}

    def _import_evaluation(self, model, name: str, metrics: dict, run_id: str) -> None:
        """The held-out metrics as a ModelEvaluation of the version (ModelService.ImportModelEvaluation)."""
        from google.cloud.aiplatform_v1.types import ModelEvaluation
        from google.protobuf import struct_pb2

        struct = struct_pb2.Struct()
        struct.update(_numbers(metrics))
        evaluation = ModelEvaluation(display_name=f"{name}-heldout-{label_value(run_id) or 'manual'}",
                                     metrics_schema_uri=METRICS_SCHEMA.get(name, METRICS_SCHEMA[ANOMALY]),
                                     metrics=struct)
        model.api_client.import_model_evaluation(parent=model.versioned_resource_name, model_evaluation=evaluation)

    def promote(self, name: str, version: int) -> dict:
        """Move `champion` (and `default`, as on upload) to VERSION; Vertex AI takes them off the versions that had
        them. A person's decision: no metric comparison."""
        parent = self.parent(name)
        if parent is None:
            raise FinopsError(f"Model {name} is not in the Vertex AI Model Registry of {self.cfg.gcp.project} "
                              f"({self.cfg.gcp.region}); check the model name, project and region.")
        versions = {int(v.version_id): v for v in self._versions(parent)}
        if int(version) not in versions:
            known = ", ".join(f"v{v}" for v in sorted(versions)) or "none"
            raise FinopsError(f"Model {name} has no version {version} in the Vertex AI Model Registry (versions: "
                              f"{known}); pass one of its versions.")
        aliases = ["champion", "default"] + (["-challenger"] if "challenger" in versions[int(version)].version_aliases
                                             else [])
        parent.versioning_registry.add_version_aliases(new_aliases=aliases, version=str(version))
        return {"name": name, "version": int(version), "resource_name": parent.resource_name}


# ---------------------------------------------------------------------------------------------- deployment
def endpoint_display_name(cfg: Config, model_name: str) -> str:
    return f"{cfg.deploy.endpoint_display_name}-{model_name}"


def deploy_vertex(cfg: Config, name: str, version: int) -> dict:
    """Deploy VERSION of NAME to its endpoint with the canary split; undeploy versions beyond the newest N."""
    from google.cloud import aiplatform

    registry = VertexRegistry(cfg)
    parent = registry.parent(name)
    if parent is None:
        raise FinopsError(f"Model {name} is not in the Vertex AI Model Registry; register it before deploying.")
    model = aiplatform.Model(parent.resource_name, version=str(version))
    if "champion" not in model.version_aliases:
        return {"name": name, "version": int(version), "deployed": False,
                "reason": "not the champion: the endpoint keeps serving the champion"}
    display = endpoint_display_name(cfg, name)
    found = aiplatform.Endpoint.list(filter=f'display_name="{display}"')
    endpoint = found[0] if found else aiplatform.Endpoint.create(display_name=display, labels=_labels(cfg, model=name))
    d = cfg.deploy
    # The final split is computed first: the deploy request already gives no traffic to versions about to go.
    deployed = {m.id: int(m.model_version_id or 0) for m in endpoint.gca_resource.deployed_models}
    kept = keep_newest(canary_split(dict(endpoint.traffic_split), "0", d.canary_percent), d.keep_versions, "0",
                       key=lambda i: (deployed.get(i, 0), i))
    endpoint.deploy(model=model, deployed_model_display_name=f"{name}-v{version}",
                    traffic_split={i: kept.get(i, 0) for i in [*deployed, "0"]},
                    machine_type=d.machine_type, min_replica_count=d.min_replicas, max_replica_count=d.max_replicas,
                    service_account=d.service_account or None, sync=True)
    endpoint = aiplatform.Endpoint(endpoint.resource_name)  # as it is now
    (new_id,) = [m.id for m in endpoint.gca_resource.deployed_models if m.id not in deployed]
    deployed[new_id] = int(version)
    kept[new_id] = kept.pop("0")
    undeployed = []
    remaining = set(deployed)
    for dm_id in sorted(set(deployed) - set(kept), key=lambda i: deployed[i]):
        remaining.discard(dm_id)
        endpoint.undeploy(deployed_model_id=dm_id, traffic_split={i: kept.get(i, 0) for i in remaining}, sync=True)
        undeployed.append({"deployed_model_id": dm_id, "version": deployed[dm_id]})
    return {"name": name, "version": int(version), "deployed": True, "endpoint": endpoint.resource_name,
            "deployed_model_id": new_id, "traffic": {f"v{deployed[i]}": p for i, p in kept.items()},
            "undeployed": undeployed}


# ---------------------------------------------------------------------------------------------- pipeline jobs
def parameter_values(cfg: Config) -> dict[str, str]:
    """The training pipeline's parameters for a run on Vertex AI (the registry is Vertex AI's: no directory)."""
    return {"source": cfg.pipeline.source, "config_json": cfg.to_json(), "registry_dir": "",
            "control_totals": cfg.pipeline.control_totals}


def _pipeline_job(cfg: Config, template: str | Path, job_id: str | None = None):
    from google.cloud import aiplatform

    return aiplatform.PipelineJob(
        display_name=cfg.pipeline.name, template_path=str(template), job_id=job_id,
        pipeline_root=cfg.pipeline.pipeline_root, parameter_values=parameter_values(cfg),
        enable_caching=cfg.pipeline.enable_caching, labels=_labels(cfg))


def submit(cfg: Config, template: str | Path, job_id: str | None = None) -> dict:
    """Create the PipelineJob on Vertex AI (does not wait for it)."""
    init_vertex(cfg)
    job = _pipeline_job(cfg, template, job_id)
    job.submit(service_account=cfg.gcp.service_account, network=cfg.gcp.network or None)
    return {"name": job.resource_name, "state": job.gca_resource.state.name}


def scheduler_client(cfg: Config):
    from google.cloud import scheduler_v1

    endpoint = cfg.gcp.scheduler_api_endpoint
    options = {"api_endpoint": endpoint} if endpoint else None
    return scheduler_v1.CloudSchedulerClient(credentials=credentials_for(endpoint), client_options=options,
                                             transport="rest")


def _location(cfg: Config) -> str:
    return f"projects/{cfg.gcp.project}/locations/{cfg.gcp.region}"


def _vertex_host(cfg: Config) -> str:
    endpoint = cfg.gcp.api_endpoint or f"{cfg.gcp.region}-aiplatform.googleapis.com"
    return endpoint if _anonymous(endpoint) else f"https://{endpoint}"


def create_schedule(cfg: Config, template: str | Path) -> dict:
    """A Vertex AI pipeline schedule (cron with its time zone), or a Cloud Scheduler job creating the same job."""
    init_vertex(cfg)
    s = cfg.schedule
    job = _pipeline_job(cfg, template)
    if s.backend == "vertex":
        schedule = job.create_schedule(cron=f"TZ={s.timezone} {s.cron}", display_name=s.display_name,
                                       max_concurrent_run_count=s.max_concurrent_runs,
                                       service_account=cfg.gcp.service_account, network=cfg.gcp.network or None)
        return {"backend": "vertex", "name": schedule.resource_name, "cron": schedule.cron}
    from google.cloud import scheduler_v1

    body = job.to_dict()
    body.pop("name", None)  # each run gets its own id from Vertex AI
    body["serviceAccount"] = cfg.gcp.service_account
    if cfg.gcp.network:
        body["network"] = cfg.gcp.network
    scheduler_job = scheduler_v1.Job(
        name=f"{_location(cfg)}/jobs/{s.display_name}",
        description=f"Creates a {cfg.pipeline.name} pipeline job on Vertex AI",
        schedule=s.cron, time_zone=s.timezone,
        http_target=scheduler_v1.HttpTarget(
            uri=f"{_vertex_host(cfg)}/v1/{_location(cfg)}/pipelineJobs",
            http_method=scheduler_v1.HttpMethod.POST,
            headers={"Content-Type": "application/json"},
            body=json.dumps(body).encode(),
            oauth_token=scheduler_v1.OAuthToken(service_account_email=s.service_account, scope=CLOUD_PLATFORM_SCOPE)))
    created = scheduler_client(cfg).create_job(parent=_location(cfg), job=scheduler_job)
    return {"backend": "cloud_scheduler", "name": created.name, "cron": f"{created.schedule} ({created.time_zone})"}


def list_schedules(cfg: Config) -> list[dict]:
    if cfg.schedule.backend == "vertex":
        from google.cloud import aiplatform

        init_vertex(cfg)
        return [{"name": sc.resource_name, "display_name": sc.display_name, "cron": sc.cron, "state": sc.state.name}
                for sc in aiplatform.PipelineJobSchedule.list()]
    return [{"name": j.name, "display_name": j.name.rsplit("/", 1)[-1], "cron": f"{j.schedule} ({j.time_zone})",
             "state": j.state.name} for j in scheduler_client(cfg).list_jobs(parent=_location(cfg))]


def delete_schedule(cfg: Config, display_name: str) -> list[str]:
    """Delete the schedules (or the Cloud Scheduler job) with this display name; returns their resource names."""
    if cfg.schedule.backend == "vertex":
        from google.cloud import aiplatform

        init_vertex(cfg)
        found = [sc for sc in aiplatform.PipelineJobSchedule.list() if sc.display_name == display_name]
        for sc in found:
            sc.delete()
        names = [sc.resource_name for sc in found]
    else:
        client = scheduler_client(cfg)
        names = [j.name for j in client.list_jobs(parent=_location(cfg)) if j.name.endswith(f"/jobs/{display_name}")]
        for name in names:
            client.delete_job(name=name)
    if not names:
        raise FinopsError(f"No {cfg.schedule.backend} schedule named {display_name} in {_location(cfg)}; "
                          "`finops-ml schedule list` shows the existing ones.")
    return names

