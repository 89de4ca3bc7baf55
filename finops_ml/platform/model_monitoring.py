"""Vertex AI Model Monitoring on the deployed endpoints where it applies.

Vertex AI Model Monitoring (a ModelDeploymentMonitoringJob per endpoint) samples the requests an endpoint serves and
computes, per request field, the drift between monitoring windows (and skew against a training table). It analyses
flat fields: the labeler's instances (finops_ml.serving.schemas.LabelerInstance: strings) are such; the forecast's and
the anomaly detector's carry their cost history as arrays, which it does not summarise, so their drift is measured by
the pipeline's own monitoring (finops_ml.training.monitoring) on every run, not here.

On each deployment of a monitored model the job of its endpoint (`<endpoint display name>-monitoring`) is created,
or updated so that its objectives cover the deployed models now on the endpoint (a job names deployed model ids).
The request fields are described by an analysis instance schema uploaded next to the models
(STAGING/<model>/monitoring-instance-schema.yaml). Skew is not configured: it needs the training data as a BigQuery
table or a GCS file, while the pipeline keeps it as feature views; the pipeline's PSI against the champion's
reference is that comparison.
"""

from __future__ import annotations

from finops_ml.config import Config
from finops_ml.models.catalogue import LABELER
from finops_ml.platform.gcp import resource_labels, storage_client

# model -> the flat request fields Vertex AI Model Monitoring watches (all strings: categorical features)
VERTEX_MONITORED: dict[str, tuple[str, ...]] = {
    LABELER: ("service", "project_id", "region", "env", "workload"),
}


def job_display_name(cfg: Config, name: str) -> str:
    from finops_ml.platform.deploy import endpoint_display_name

    return f"{endpoint_display_name(cfg, name)}-monitoring"


def instance_schema(fields: tuple[str, ...]) -> str:
    """The analysis instance schema (OpenAPI object, YAML) of the monitored fields."""
    lines = ["type: object", "properties:"]
    lines += [f"  {f}:\n    type: string" for f in fields]
    lines += ["required:"] + [f"- {f}" for f in fields[:1]]
    return "\n".join(lines) + "\n"


def _upload_schema(cfg: Config, artifact_uri: str, text: str) -> str:
    """Upload the schema beside the model's versions: STAGING/NAME/monitoring-instance-schema.yaml."""
    uri = f"{artifact_uri.rstrip('/').rsplit('/', 1)[0]}/monitoring-instance-schema.yaml"
    bucket, _, path = uri.removeprefix("gs://").partition("/")
    storage_client(cfg).bucket(bucket).blob(path).upload_from_string(text, content_type="application/x-yaml")
    return uri


def configure_endpoint_monitoring(cfg: Config, name: str, endpoint, artifact_uri: str) -> dict:
    """Create or update the monitoring job of NAME's endpoint (an aiplatform.Endpoint as it is now; `artifact_uri`:
    the deployed version's, gs://STAGING/NAME/STAMP); returns what was done."""
    m = cfg.monitoring
    if not m.vertex_enabled:
        return {"configured": False, "reason": "monitoring.vertex_enabled is false"}
    if name not in VERTEX_MONITORED:
        return {"configured": False, "reason": f"{name}'s requests carry arrays (cost history), which Vertex AI Model "
                                               "Monitoring does not analyse; the pipeline's monitoring covers it"}
    from google.cloud import aiplatform
    from google.cloud.aiplatform import model_monitoring

    fields = VERTEX_MONITORED[name]
    schema_uri = _upload_schema(cfg, artifact_uri, instance_schema(fields))
    settings = dict(
        objective_configs=model_monitoring.ObjectiveConfig(
            drift_detection_config=model_monitoring.DriftDetectionConfig(
                drift_thresholds={f: m.vertex_drift_threshold for f in fields})),
        logging_sampling_strategy=model_monitoring.RandomSampleConfig(sample_rate=m.vertex_sample_rate),
        schedule_config=model_monitoring.ScheduleConfig(monitor_interval=m.vertex_interval_hours),
        alert_config=model_monitoring.EmailAlertConfig(user_emails=list(m.vertex_alert_emails), enable_logging=True),
    )
    display = job_display_name(cfg, name)
    found = aiplatform.ModelDeploymentMonitoringJob.list(filter=f'display_name="{display}"')
    if found:
        job = found[0].update(**settings)
        action = "updated"
    else:
        job = aiplatform.ModelDeploymentMonitoringJob.create(
            endpoint=endpoint, display_name=display, analysis_instance_schema_uri=schema_uri,
            labels=resource_labels(cfg, model=name), **settings)
        action = "created"
    return {"configured": True, "action": action, "job": job.resource_name, "fields": list(fields),
            "drift_threshold": m.vertex_drift_threshold, "sample_rate": m.vertex_sample_rate,
            "interval_hours": m.vertex_interval_hours, "schema": schema_uri,
            "deployed_models": [d.id for d in endpoint.gca_resource.deployed_models]}
