"""Google Cloud plumbing shared by the Vertex AI modules: what each command needs from the config, credentials,
the aiplatform SDK's set-up, Cloud Storage uploads, labels.

Transport: REST everywhere (what the tests exercise against a recording server is what runs). An endpoint given as
`http://...` is a loopback recorder/emulator: the clients then use anonymous credentials, so a real token is never
sent over plain http. Otherwise Application Default Credentials (the pipeline runner's service account on Vertex).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from finops_ml.config import Config
from finops_ml.errors import FinopsError

# What each command needs from the config (see `validate`).
NEEDS = {
    "submit": ("gcp", "pipeline", "registry", "deploy"),
    "schedule": ("gcp", "pipeline", "registry", "deploy", "schedule"),
    "gcp": ("gcp",),
    "registry": ("gcp", "registry_storage", "deploy"),
    "featurestore": ("gcp", "bigquery_source"),
}


def validate(cfg: Config, source: str | Path, command: str) -> None:
    """Raise one FinopsError naming the config file and key when `cfg` lacks a value `command` needs. The values'
    formats were checked when the config was loaded (finops_ml.config): here only what the local world leaves empty."""

    def missing(key: str, fix: str) -> FinopsError:
        return FinopsError(f"Config file {source}: key '{key}' is missing; {fix}.")

    needs = NEEDS[command]
    g, p, d, s = cfg.gcp, cfg.pipeline, cfg.deploy, cfg.schedule
    if not g.project:
        raise missing("gcp.project", "set the id of the GCP project to run in")
    if not g.region:
        raise missing("gcp.region", "set the region to run in, such as europe-west1")
    if "pipeline" in needs:
        if not p.pipeline_root:
            raise missing("pipeline.pipeline_root", "set a gs://BUCKET/PATH where Vertex AI writes the runs' artifacts")
        if not g.service_account:
            raise missing("gcp.service_account", "set the pipeline runner's service account email")
        if not p.image:
            raise missing("pipeline.image", "set the pipeline image built from deploy/Dockerfile.pipeline "
                                            "(REGION-docker.pkg.dev/PROJECT/REPO/NAME:TAG)")
        if not p.source:
            raise missing("pipeline.source", "set the BigQuery billing export (bq://PROJECT.DATASET.TABLE) or a "
                                             "kafka:// topic")
    if "registry" in needs and cfg.registry.backend != "vertex":
        raise FinopsError(f"Config file {source}: key 'registry.backend' is 'local'; set it to vertex: a local "
                          "registry would vanish with the job's container.")
    if "registry_storage" in needs and not (g.staging_bucket or p.pipeline_root):
        raise missing("gcp.staging_bucket", "set a gs:// prefix for the models' artifacts (or pipeline.pipeline_root)")
    if "deploy" in needs and d.enabled and not d.serving_image:
        raise missing("deploy.serving_image", "set the serving image built from deploy/Dockerfile.serving")
    if "bigquery_source" in needs and not p.source.startswith("bq://"):
        fix = ("set the BigQuery billing export (bq://PROJECT.DATASET.TABLE): the feature store reads the feature "
               "views as BigQuery views over it")
        if not p.source:
            raise missing("pipeline.source", fix)
        raise FinopsError(f"Config file {source}: key 'pipeline.source' is '{p.source}', not a BigQuery table; {fix}.")
    if "schedule" in needs and s.backend == "cloud_scheduler" and not s.service_account:
        raise missing("schedule.service_account", "set the service account Cloud Scheduler calls the Vertex AI API as")


def anonymous(endpoint: str) -> bool:
    return endpoint.startswith("http://")


def credentials_for(endpoint: str):
    """Anonymous credentials for a plain-http (loopback) endpoint, else None: Application Default Credentials."""
    if anonymous(endpoint):
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


def location(cfg: Config) -> str:
    return f"projects/{cfg.gcp.project}/locations/{cfg.gcp.region}"


def storage_client(cfg: Config):
    """A GCS client; honours STORAGE_EMULATOR_HOST (then with anonymous credentials)."""
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


def download_dir(cfg: Config, gs_prefix: str, local_dir: str | Path) -> list[Path]:
    """Download every object under `gs_prefix` (gs://bucket/path) into `local_dir`, keeping the relative paths."""
    bucket_name, _, prefix = gs_prefix.removeprefix("gs://").partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    client = storage_client(cfg)
    paths = []
    for blob in client.list_blobs(bucket_name, prefix=prefix):
        relative = blob.name[len(prefix):]
        if not relative or relative.endswith("/"):
            continue
        path = Path(local_dir) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        blob.download_to_filename(str(path))
        paths.append(path)
    if not paths:
        raise FinopsError(f"Nothing is stored under {gs_prefix}; the model's artifacts are missing from Cloud Storage.")
    return paths


def label_value(value: str) -> str:
    """A string made into a valid GCP label value (lowercase, [a-z0-9_-], 63 characters at most)."""
    return re.sub(r"[^a-z0-9_-]", "-", str(value).lower())[:63]


def resource_labels(cfg: Config, **extra: str) -> dict[str, str]:
    """The labels of every resource we create: app, environment, the config's gcp.labels, then `extra`."""
    labels = {"app": "finops-ml", "environment": cfg.environment, **cfg.gcp.labels}
    labels.update({k: label_value(v) for k, v in extra.items() if v})
    return labels
