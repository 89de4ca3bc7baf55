"""Typed configuration loaded from `configs/*.yaml`; a wrong key or value names the file and the key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from finops_ml.errors import FinopsError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GeneratorConfig(_Strict):
    start: str = "2025-08-01"
    months: int = Field(15, ge=6, le=60)
    plants: int = Field(5, ge=1, le=12)
    resources_per_project: int = Field(20, ge=2, le=2000)
    unlabelled_share: float = Field(0.2, ge=0.0, le=0.9)
    anomaly_share: float = Field(0.1, ge=0.0, le=0.5)
    # An injected anomaly makes a daily cell "anomalous" in the ground truth when it adds at least this
    # share of the cell's expected cost: the first days of a slow drift are not yet a cost anomaly.
    material_share: float = Field(0.25, gt=0.0, le=5.0)
    # Organisation shape (the defaults reproduce the demo organisation draw for draw):
    migration_span: float = Field(0.55, gt=0.0, le=1.0)  # share of the history over which plants' migration waves start
    late_resource_share: float = Field(0.25, ge=0.0, le=1.0)  # share of plant resources arriving at a random later day
    noise_sigma: float = Field(0.06, ge=0.0, le=1.0)  # lognormal daily noise of each SKU series


class ForecastConfig(_Strict):
    holdout_months: int = Field(3, ge=1, le=12)
    horizon_months: int = Field(3, ge=1, le=12)
    # The naive forecasts (naive_last_month, seasonal_naive) are always candidates too, and baselines.
    candidates: list[Literal["linear", "random_forest", "xgboost", "naive_last_month", "seasonal_naive"]] = [
        "linear", "random_forest", "xgboost"]
    interval: float = Field(0.8, gt=0.0, lt=1.0)
    backtest_origins: int = Field(3, ge=1, le=12)


class BudgetScope(_Strict):
    """What a budget covers: one service, one project, both, or (neither) the whole organisation."""

    service: str | None = None
    project_id: str | None = None


class BudgetConfig(_Strict):
    """A monthly budget in US dollars; an alert is raised when P(month's spend > budget) >= alert_probability."""

    name: str = Field(min_length=1)
    scope: BudgetScope = BudgetScope()
    monthly_usd: float = Field(gt=0.0)
    alert_probability: float = Field(0.5, gt=0.0, lt=1.0)


class AnomalyConfig(_Strict):
    holdout_months: int = Field(3, ge=1, le=12)
    window_days: int = Field(28, ge=7, le=120)
    n_estimators: int = Field(200, ge=10, le=2000)


class LabelerConfig(_Strict):
    targets: list[Literal["owner", "cost_center", "plant"]] = ["owner", "cost_center", "plant"]
    confidence_threshold: float = Field(0.6, ge=0.0, le=1.0)
    test_share: float = Field(0.25, gt=0.0, lt=1.0)
    # > 0: raise the applying threshold per label until cross-validated precision reaches this (0: off).
    target_precision: float = Field(0.0, ge=0.0, le=1.0)


class GatesConfig(_Strict):
    forecast_accuracy: float = Field(0.90, ge=0.0, le=1.0)
    # Holdout coverage of the nominal forecast interval at service x month; None: forecast.interval - 0.05.
    forecast_interval_coverage: float | None = Field(None, ge=0.0, le=1.0)
    anomaly_f1: float = Field(0.85, ge=0.0, le=1.0)
    label_accuracy: float = Field(0.90, ge=0.0, le=1.0)
    label_compliance_after: float = Field(0.95, ge=0.0, le=1.0)


class RegistryConfig(_Strict):
    # A directory; relative paths are taken relative to the run's output directory.
    path: str = "registry"
    # Where the pipeline registers and deploys: the directory registry, or the Vertex AI Model Registry + endpoints.
    backend: Literal["local", "vertex"] = "local"


class PipelineConfig(_Strict):
    name: str = "finops-ml-training"
    pipeline_root: str = ""
    # What `finops-ml submit` / `schedule` send: the components' image, the billing source, caching.
    image: str = ""
    source: str = ""
    control_totals: str = ""
    enable_caching: bool = True


class GcpConfig(_Strict):
    """Where the production path runs (see README "Production on Vertex AI"); no secret ever goes here."""
    project: str = ""
    region: str = "europe-west1"
    # The Vertex AI API endpoint (default: REGION-aiplatform.googleapis.com); a regional or private (PSC) endpoint,
    # or http://127.0.0.1:PORT for a loopback recorder (plain http: anonymous credentials, never a real token).
    api_endpoint: str = ""
    scheduler_api_endpoint: str = ""  # the Cloud Scheduler API endpoint, the same way
    service_account: str = ""  # the pipeline runner's service account
    network: str = ""  # projects/NUMBER/global/networks/NAME (VPC peering of the pipeline job), optional
    labels: dict[str, str] = {}
    staging_bucket: str = ""  # gs:// prefix for model artifacts; default: PIPELINE_ROOT/models


class DeployConfig(_Strict):
    """Deployment of a new champion: one endpoint per model, canary traffic, the newest N versions kept."""
    enabled: bool = True
    endpoint_display_name: str = "finops-ml"  # endpoint of a model: <this>-<model name>
    canary_percent: int = Field(10, ge=1, le=100)
    keep_versions: int = Field(2, ge=1, le=10)
    serving_image: str = ""
    machine_type: str = "n2-standard-2"
    min_replicas: int = Field(1, ge=1, le=100)
    max_replicas: int = Field(2, ge=1, le=100)
    service_account: str = ""  # the serving container's service account


class ScheduleConfig(_Strict):
    """Retraining schedule: a Vertex AI pipeline schedule, or a Cloud Scheduler job that creates the pipeline job."""
    backend: Literal["vertex", "cloud_scheduler"] = "vertex"
    display_name: str = "finops-ml-training-weekly"
    cron: str = "0 3 * * 1"
    timezone: str = "Europe/Paris"
    max_concurrent_runs: int = Field(1, ge=1, le=10)
    service_account: str = ""  # Cloud Scheduler's caller identity (OAuth token for the Vertex AI API)


class ServingConfig(_Strict):
    # `finops-ml serve` defaults; in a container the AIP_* and FINOPS_* variables decide (finops_ml/serving.py).
    alias: str = "champion"
    max_body_bytes: int = Field(1_500_000, ge=1_000, le=100_000_000)  # Vertex AI's own limit is 1.5 MB
    workers: int = Field(1, ge=1, le=64)


class StreamConfig(_Strict):
    """`finops-ml stream`: the billing topic in, alerts and dead letters out, Slack / email when configured."""

    bootstrap: str = "127.0.0.1:9092"
    topic: str = "billing-events"
    alerts_topic: str = "cost-anomalies"
    dead_letter_topic: str = "billing-events-dlq"
    group: str = "finops-ml-stream"
    # Registry holding the detector (cost-anomaly, alias or version); relative to the working directory.
    registry: str = "out/registry"
    model_version: str = "champion"
    # Snapshots of the detector state with the offsets they cover, and the alert outbox (pending deliveries).
    state_dir: str = "out/stream-state"
    lateness_days: int = Field(1, ge=0, le=31)
    checkpoint_interval_s: float = Field(5.0, gt=0.0, le=3600.0)
    # A consumer that misses heartbeats this long is dropped from the group; a join takes a part of it.
    session_timeout_ms: int = Field(10000, ge=1000, le=300000)
    metrics_port: int = Field(9108, ge=0, le=65535)  # 0: pick a free port; the chosen port is logged
    # Delivery to people. The secrets are read from the environment variables named here, never from this file.
    slack_webhook_env: str = "FINOPS_SLACK_WEBHOOK_URL"
    smtp_host: str = ""  # empty: no email
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_starttls: bool = False
    smtp_user: str = ""
    smtp_password_env: str = "FINOPS_SMTP_PASSWORD"
    email_from: str = "finops-ml@localhost"
    email_to: list[str] = []
    alert_link: str = ""  # e.g. https://finops.example.com/anomalies/{anomaly_id}
    retry_attempts: int = Field(4, ge=1, le=20)
    retry_backoff_s: float = Field(0.5, gt=0.0, le=60.0)
    retry_backoff_max_s: float = Field(8.0, gt=0.0, le=600.0)
    delivery_timeout_s: float = Field(5.0, gt=0.0, le=120.0)
    drain_timeout_s: float = Field(10.0, ge=0.0, le=600.0)


class Config(_Strict):
    environment: Literal["local", "dev", "prod"] = "local"
    seed: int = 42
    generator: GeneratorConfig = GeneratorConfig()
    forecast: ForecastConfig = ForecastConfig()
    anomaly: AnomalyConfig = AnomalyConfig()
    labeler: LabelerConfig = LabelerConfig()
    gates: GatesConfig = GatesConfig()
    registry: RegistryConfig = RegistryConfig()
    pipeline: PipelineConfig = PipelineConfig()
    gcp: GcpConfig = GcpConfig()
    deploy: DeployConfig = DeployConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    serving: ServingConfig = ServingConfig()
    stream: StreamConfig = StreamConfig()
    budgets: list[BudgetConfig] = []

    @field_validator("budgets")
    @classmethod
    def _unique_budget_names(cls, budgets: list[BudgetConfig]) -> list[BudgetConfig]:
        names = [b.name for b in budgets]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"budget names must be unique, {', '.join(duplicates)} appears more than once")
        return budgets

    def digest(self) -> str:
        """A short hash of the configuration, stored with every registered model."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> "Config":
        return cls.model_validate(json.loads(text))


def load_config(path: str | Path | None = None) -> Config:
    """Load and validate a YAML config; with no path, `configs/local.yaml` (or the built-in defaults)."""
    if path is None:
        path = CONFIG_DIR / "local.yaml"
        if not path.exists():
            return Config()
    path = Path(path)
    if not path.exists():
        raise FinopsError(f"Config file {path} does not exist; pass an existing file with --config.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise FinopsError(f"Config file {path} is not valid YAML ({exc.__class__.__name__}); fix its syntax.") from None
    if not isinstance(raw, dict):
        raise FinopsError(f"Config file {path} must hold a mapping of keys at its top level.")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            raise FinopsError(f"Config file {path}: unknown key '{key}'; remove it or check its spelling.") from None
        raise FinopsError(f"Config file {path}: key '{key}' is invalid: {err['msg']}.") from None
