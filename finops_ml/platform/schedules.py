"""Pipeline jobs on Vertex AI: `submit` (PipelineJob), and retraining schedules: a Vertex AI pipeline schedule, or a
Cloud Scheduler job that POSTs the same PipelineJob to the Vertex AI API with the scheduler's service account."""

from __future__ import annotations

import json
from pathlib import Path

from finops_ml.config import Config
from finops_ml.errors import FinopsError
from finops_ml.platform.gcp import anonymous, credentials_for, init_vertex, location, resource_labels

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


def parameter_values(cfg: Config) -> dict[str, str]:
    """The training pipeline's parameters for a run on Vertex AI: each step's config (`<step>_config`), the source;
    the registry is Vertex AI's, so no directory."""
    return {"source": cfg.pipeline.source, **cfg.step_parameters(), "registry_dir": "",
            "control_totals": cfg.pipeline.control_totals}


def _pipeline_job(cfg: Config, template: str | Path, job_id: str | None = None):
    from google.cloud import aiplatform

    return aiplatform.PipelineJob(
        display_name=cfg.pipeline.name, template_path=str(template), job_id=job_id,
        pipeline_root=cfg.pipeline.pipeline_root, parameter_values=parameter_values(cfg),
        # True would overwrite every task's caching option, the ingest's "never cached" too: caching on keeps the
        # compiled options, caching off turns them all off.
        enable_caching=None if cfg.pipeline.enable_caching else False, labels=resource_labels(cfg))


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


def vertex_host(cfg: Config) -> str:
    """The Vertex AI API's base URL (the regional host by default) that a Cloud Scheduler job calls."""
    endpoint = cfg.gcp.api_endpoint or f"{cfg.gcp.region}-aiplatform.googleapis.com"
    return endpoint if anonymous(endpoint) else f"https://{endpoint}"


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
        name=f"{location(cfg)}/jobs/{s.display_name}",
        description=f"Creates a {cfg.pipeline.name} pipeline job on Vertex AI",
        schedule=s.cron, time_zone=s.timezone,
        http_target=scheduler_v1.HttpTarget(
            uri=f"{vertex_host(cfg)}/v1/{location(cfg)}/pipelineJobs",
            http_method=scheduler_v1.HttpMethod.POST,
            headers={"Content-Type": "application/json"},
            body=json.dumps(body).encode(),
            oauth_token=scheduler_v1.OAuthToken(service_account_email=s.service_account, scope=CLOUD_PLATFORM_SCOPE)))
    created = scheduler_client(cfg).create_job(parent=location(cfg), job=scheduler_job)
    return {"backend": "cloud_scheduler", "name": created.name, "cron": f"{created.schedule} ({created.time_zone})"}


def list_schedules(cfg: Config) -> list[dict]:
    if cfg.schedule.backend == "vertex":
        from google.cloud import aiplatform

        init_vertex(cfg)
        return [{"name": sc.resource_name, "display_name": sc.display_name, "cron": sc.cron, "state": sc.state.name}
                for sc in aiplatform.PipelineJobSchedule.list()]
    return [{"name": j.name, "display_name": j.name.rsplit("/", 1)[-1], "cron": f"{j.schedule} ({j.time_zone})",
             "state": j.state.name} for j in scheduler_client(cfg).list_jobs(parent=location(cfg))]


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
        names = [j.name for j in client.list_jobs(parent=location(cfg)) if j.name.endswith(f"/jobs/{display_name}")]
        for name in names:
            client.delete_job(name=name)
    if not names:
        raise FinopsError(f"No {cfg.schedule.backend} schedule named {display_name} in {location(cfg)}; "
                          "`finops-ml schedule list` shows the existing ones.")
    return names
