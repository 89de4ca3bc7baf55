"""Typed configuration loaded from `configs/*.yaml`; a wrong key or value names the file and the key."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import zoneinfo
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from finops_ml.errors import FinopsError

# configs/ ships as the package finops_ml.configs (pyproject.toml), a directory in an editable install and in a wheel.
CONFIG_DIR = Path(str(files("finops_ml.configs")))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _format(pattern: str, problem: str, fix: str) -> AfterValidator:
    """A string that is empty (not set: the local world) or matches `pattern`; else "'VALUE' PROBLEM; FIX"."""
    regex = re.compile(pattern)

    def check(value: str) -> str:
        if value and not regex.match(value):
            raise ValueError(f"'{value}' {problem}; {fix}")
        return value

    return AfterValidator(check)


# The formats of Google Cloud names. Whether a command needs a value at all is checked by the command
# (finops_ml.platform.gcp.validate): the local world leaves them empty.
_SA_FIX = "use NAME@PROJECT.iam.gserviceaccount.com"
ServiceAccount = Annotated[str, _format(
    r"^[a-z0-9-]+@[a-z0-9.-]+\.iam\.gserviceaccount\.com$|^[0-9]+-compute@developer\.gserviceaccount\.com$",
    "is not a service account email", _SA_FIX)]
ContainerImage = Annotated[str, _format(
    r"^[a-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+(:[\w.-]+|@sha256:[0-9a-f]{64})?$", "is not a container image",
    "give REGION-docker.pkg.dev/PROJECT/REPO/NAME:TAG (built from deploy/Dockerfile.*)")]
ApiEndpoint = Annotated[str, _format(
    r"^(http://)?[^\s/]+$", "is not an API endpoint",
    "give a host name such as europe-west1-aiplatform.googleapis.com (or http://127.0.0.1:PORT for a loopback "
    "recorder)")]
GcsPath = Annotated[str, _format(r"^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/.*)?$", "is not a gs:// path",
                                 "set a gs://BUCKET/PATH")]


def _env_name(value: str) -> str:
    # The value is never echoed: a secret pasted here would land in logs and job parameters.
    if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", value):
        raise ValueError("must be the NAME of an environment variable (capital letters, digits and '_', such as "
                         "FINOPS_SLACK_WEBHOOK_URL), not a value; put the secret in that variable, never in a file")
    return value


def _ip_address(value: str) -> str:
    try:
        if value != "localhost":
            ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"'{value}' is not an IP address; use 127.0.0.1 (this machine) or 0.0.0.0 (all "
                         "interfaces)") from None
    return value


IPAddress = Annotated[str, AfterValidator(_ip_address)]
# Fields ending in `_env` hold the name of the environment variable that carries a secret.
EnvName = Annotated[str, AfterValidator(_env_name)]
_LABEL_FIX = "use lowercase letters, digits, '_' and '-' (keys start with a letter, 63 characters at most)"
LabelKey = Annotated[str, _format(r"^[a-z][a-z0-9_-]{0,62}$", "is not a valid GCP label key", _LABEL_FIX)]
LabelValue = Annotated[str, _format(r"^[a-z0-9_-]{0,63}$", "is not a valid GCP label value", _LABEL_FIX)]


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
    # Organisation shape (the defaults reproduce the easy organisation draw for draw):
    migration_span: float = Field(0.55, gt=0.0, le=1.0)  # share of the history over which plants' migration waves start
    late_resource_share: float = Field(0.25, ge=0.0, le=1.0)  # share of plant resources arriving at a random later day
    noise_sigma: float = Field(0.06, ge=0.0, le=1.0)  # lognormal daily noise of each SKU series
    # Anomalies (finops_ml.synthetic.injector): the share of the newer kinds (drops, runaway new resources, rises
    # spread over a service) beside spikes, level shifts, drifts and new SKUs; the size range as a multiple k of the
    # affected resource's own log-sigma (log-uniform); and the least $ change of a material (labelled) cell-day.
    new_anomaly_kinds_share: float = Field(0.3, ge=0.0, le=1.0)
    anomaly_sigma_multiple: tuple[float, float] = (3.0, 30.0)
    material_min_usd: float = Field(1.0, ge=0.0)
    # Realism (finops_ml.synthetic.realism; all off here, the `easy` shape; configs/local.yaml and the `realistic`
    # shape set them):
    usage_noise: Literal["lognormal", "by_kind"] = "lognormal"  # by_kind: heavy-tailed, log-sigma 0.05-0.4 by service
    normal_events: bool = False  # quarter ends, load tests, rightsizing, a price change, a decommissioned plant
    late_row_share: float = Field(0.0, ge=0.0, le=0.5)  # rows exported 1-5 days after their usage (0.01-0.05 real)
    label_error_share: float = Field(0.0, ge=0.0, le=0.3)  # carried labels with another value (5-10% in audits)
    label_variant_share: float = Field(0.0, ge=0.0, le=0.5)  # carried values spelt another way ("lyn", "cc4110")
    departed_owner_share: float = Field(0.0, ge=0.0, le=0.3)  # owner labels naming someone who left
    unlabelled_project_share: float = Field(0.0, ge=0.0, le=0.9)  # projects where no resource carries a label
    plant_holidays: bool = False  # plants' projects dip as on a weekend on their country's public holidays
    commitments: bool = False  # one-year CUDs on projects' compute that start (net drops) or expire (net rises)
    one_off_charges: bool = False  # the monthly support fee on the 1st, a commitment's upfront fee on its first day
    eur_billing_account: bool = False  # projects outside the Americas billed in EUR by a second billing account
    new_projects: int = Field(0, ge=0, le=10)  # projects created during the history, ramping up in their first weeks
    # hourly: 24 line items per (resource, SKU) and day, spread by the service's hourly profile in local time (the
    # detailed export is hourly; features sum the hours into days). 24x the rows: not in the realistic shape.
    export_granularity: Literal["daily", "hourly"] = "daily"

    @field_validator("anomaly_sigma_multiple")
    @classmethod
    def _sigma_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError("must be [low, high] with 0 < low <= high")
        return value


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
    # Evaluation by injection (finops_ml.models.anomaly_eval): `injection_draws` seeded copies of the holdout, each
    # with anomalies in `injection_cells_share` of its cells (at least one of each kind), sized as a multiple k of
    # each resource's own log-sigma (log-uniform in injection_sigma_multiple). A cell-day is labelled when the
    # injected change is at least `injection_material_share` of its expected cost and `injection_min_impact_usd`
    # (0 by default: scale-free, for exports whose daily costs are cents).
    injection_draws: int = Field(5, ge=1, le=100)
    injection_cells_share: float = Field(0.2, gt=0.0, le=1.0)
    injection_sigma_multiple: tuple[float, float] = (3.0, 30.0)
    injection_material_share: float = Field(0.25, gt=0.0, le=5.0)
    injection_min_impact_usd: float = Field(0.0, ge=0.0)
    # Cells flagged on the untouched holdout may be real anomalies of the data: left out of the injected scoring
    # while they are at most this share of its cells (a team reviews at most about 1 cell-day in 20); above it
    # they all count as false alarms (anomaly_eval's docstring).
    injection_max_clean_alarm_rate: float = Field(0.05, gt=0.0, le=1.0)
    # The detector's thresholds need no labels: per direction, the share of normal cells allowed to alarm (the
    # score's robust body extrapolated to it), or a fixed score threshold. Feedback verdicts refine the learnt ones;
    # the generator's truth replaces them (synthetic data only).
    alarm_budget_up: float = Field(0.002, gt=0.0, lt=0.5)
    alarm_budget_down: float = Field(0.002, gt=0.0, lt=0.5)
    threshold_up: float | None = Field(None, gt=0.0)
    threshold_down: float | None = Field(None, gt=0.0)
    # What is worth an alert: a deviation of at least this % of the cell's expected cost, and this $ impact (a
    # project's own minimum, else its service's, else the default).
    min_pct_deviation: float = Field(25.0, ge=0.0)
    min_impact_usd: float = Field(0.0, ge=0.0)
    min_impact_usd_by_service: dict[str, float] = {}
    min_impact_usd_by_project: dict[str, float] = {}
    # An always-on resource without cost is a drop for its first `stop_days` days (three alerts by default), then gone;
    # a new resource that grew `runaway_factor` times since its first days, at `runaway_rate` a day or faster, runs
    # away.
    stop_days: int = Field(3, ge=1, le=60)
    runaway_factor: float = Field(1.5, gt=1.0)
    runaway_rate: float = Field(0.10, gt=0.0)

    @field_validator("min_impact_usd_by_service", "min_impact_usd_by_project")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        bad = sorted(k for k, v in value.items() if not v >= 0)
        if bad:
            raise ValueError(f"minimum impacts must be 0 or more (see {', '.join(bad)})")
        return value

    @field_validator("injection_sigma_multiple")
    @classmethod
    def _sigma_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError("must be [low, high] with 0 < low <= high")
        return value


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
    # share of the labels confident enough to apply that are right, on held-out labelled resources (all labels pooled)
    label_applied_precision: float = Field(0.95, ge=0.0, le=1.0)


class RegistryConfig(_Strict):
    # A directory; relative paths are taken relative to the run's output directory.
    path: str = "registry"
    # Where the pipeline registers and deploys: the directory registry, or the Vertex AI Model Registry + endpoints.
    backend: Literal["local", "vertex"] = "local"


class PipelineConfig(_Strict):
    name: str = "finops-ml-training"
    pipeline_root: GcsPath = ""
    # What `finops-ml submit` / `schedule` send: the components' image, the billing source, caching.
    image: ContainerImage = ""
    source: Annotated[str, _format(r"^(bq|kafka)://", "cannot be read on Vertex AI",
                                   "set the BigQuery billing export (bq://PROJECT.DATASET.TABLE) or a kafka:// topic")
                      ] = ""
    control_totals: str = ""
    enable_caching: bool = True


class GcpConfig(_Strict):
    """Where the production path runs (see README "Production on Vertex AI"); no secret ever goes here."""
    project: Annotated[str, _format(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$", "is not a GCP project id",
                                    "use the project's id (6-30 lowercase letters, digits, hyphens)")] = ""
    region: Annotated[str, _format(r"^[a-z]+-[a-z]+[0-9]+$", "is not a GCP region", "use a region such as europe-west1")
                      ] = "europe-west1"
    # The Vertex AI API endpoint (default: REGION-aiplatform.googleapis.com); a regional or private (PSC) endpoint,
    # or http://127.0.0.1:PORT for a loopback recorder (plain http: anonymous credentials, never a real token).
    api_endpoint: ApiEndpoint = ""
    scheduler_api_endpoint: ApiEndpoint = ""  # the Cloud Scheduler API endpoint, the same way
    service_account: ServiceAccount = ""  # the pipeline runner's service account
    # VPC peering of the pipeline job, optional
    network: Annotated[str, _format(r"^projects/[^/\s]+/global/networks/[^/\s]+$", "is not a network name",
                                    "use projects/PROJECT_NUMBER/global/networks/NAME")] = ""
    labels: dict[LabelKey, LabelValue] = {}
    staging_bucket: GcsPath = ""  # gs:// prefix for model artifacts; default: PIPELINE_ROOT/models


class DeployConfig(_Strict):
    """Deployment of a new champion: one endpoint per model, canary traffic, the newest N versions kept."""
    enabled: bool = True
    endpoint_display_name: str = "finops-ml"  # endpoint of a model: <this>-<model name>
    canary_percent: int = Field(10, ge=1, le=100)
    keep_versions: int = Field(2, ge=1, le=10)
    serving_image: ContainerImage = ""
    machine_type: str = "n2-standard-2"
    min_replicas: int = Field(1, ge=1, le=100)
    max_replicas: int = Field(2, ge=1, le=100)
    service_account: ServiceAccount = ""  # the serving container's service account

    @field_validator("max_replicas")
    @classmethod
    def _not_below_min(cls, value: int, info) -> int:
        low = info.data.get("min_replicas")
        if low is not None and value < low:
            raise ValueError(f"{value} is below deploy.min_replicas {low}; raise it or lower deploy.min_replicas")
        return value


def _cron(value: str) -> str:
    if len(value.split()) != 5:
        raise ValueError(f"'{value}' is not a 5-field cron expression; use one such as '0 3 * * 1' (minute hour "
                         "day month weekday)")
    return value


def _time_zone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"'{value}' is not an IANA time zone; use one such as Europe/Paris or UTC") from None
    return value


Cron = Annotated[str, AfterValidator(_cron)]
TimeZone = Annotated[str, AfterValidator(_time_zone)]


class ScheduleConfig(_Strict):
    """Retraining schedule: a Vertex AI pipeline schedule, or a Cloud Scheduler job that creates the pipeline job."""
    backend: Literal["vertex", "cloud_scheduler"] = "vertex"
    display_name: str = "finops-ml-training-weekly"
    cron: Cron = "0 3 * * 1"
    timezone: TimeZone = "Europe/Paris"
    max_concurrent_runs: int = Field(1, ge=1, le=10)
    service_account: ServiceAccount = ""  # Cloud Scheduler's caller identity (OAuth token for the Vertex AI API)


_FS_ID = Annotated[str, _format(r"^[a-z_][a-z0-9_]{0,59}$", "is not a Feature Store id",
                                "use lowercase letters, digits and '_' (60 characters at most, not starting with a "
                                "digit)")]


class FeatureStoreConfig(_Strict):
    """`finops-ml featurestore sync` (finops_ml.platform.featurestore): the feature views of feature_defs/ as BigQuery
    views over the billing export (pipeline.source), a feature group over each, and one Bigtable online store with the
    feature views the prediction server reads (a series' latest history, a resource's latest features)."""

    # PROJECT.DATASET holding the BigQuery views (created in the billing export's location when missing);
    # empty: GCP_PROJECT.finops_features.
    bigquery_dataset: Annotated[str, _format(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]\.[A-Za-z0-9_]{1,1024}$",
                                             "is not a BigQuery dataset", "give PROJECT.DATASET")] = ""
    online_store: _FS_ID = "finops_ml"
    series_view: _FS_ID = "series_latest"  # per (service, project) series: the latest 91 days of daily net cost
    resource_view: _FS_ID = "resource_latest"  # per resource: the labeler's features and the labels it carries
    # Bigtable autoscaling of the online store (Vertex AI: max <= 10 x min, CPU target 10-80 %).
    min_nodes: int = Field(1, ge=1, le=100)
    max_nodes: int = Field(3, ge=1, le=1000)
    cpu_utilization_target: int = Field(50, ge=10, le=80)
    # When the online store re-reads the BigQuery views (a daily billing export: once a day after it lands).
    sync_cron: Cron = "0 6 * * *"
    sync_timezone: TimeZone = "UTC"

    @field_validator("max_nodes")
    @classmethod
    def _node_range(cls, value: int, info) -> int:
        low = info.data.get("min_nodes")
        if low is not None and not low <= value <= 10 * low:
            raise ValueError(f"{value} must be between featurestore.min_nodes ({low}) and 10 times it ({10 * low})")
        return value


class ServingConfig(_Strict):
    # `finops-ml serve` defaults; in a container the AIP_* and FINOPS_* variables decide
    # (finops_ml.serving.app.ContainerSettings).
    host: IPAddress = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
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
    # How often the stream looks up model_version (an alias) for a new champion, taken up without clearing its
    # state (0: never; the model loaded at start stays).
    model_check_interval_s: float = Field(60.0, ge=0.0, le=86400.0)
    # Snapshots of the detector state with the offsets they cover, and the alert outbox (pending deliveries).
    state_dir: str = "out/stream-state"
    # Days close on export time: usage day D closes once a row exported `lateness_days` after D's end arrives (the
    # Cloud Billing export delivers a day's rows up to ~29 h after it ends). A row of a closed day is late: its day
    # is re-judged for its cell if it is one of the last `rejudge_days` closed days (older: counted, not judged).
    lateness_days: int = Field(2, ge=0, le=31)
    rejudge_days: int = Field(35, ge=0, le=400)
    checkpoint_interval_s: float = Field(5.0, gt=0.0, le=3600.0)
    # A consumer that misses heartbeats this long is dropped from the group; a join takes a part of it.
    session_timeout_ms: int = Field(10000, ge=1000, le=300000)
    metrics_port: int = Field(9108, ge=0, le=65535)  # 0: pick a free port; the chosen port is logged
    # Interface of /metrics: this machine only by default; a pod sets 0.0.0.0 so that probes and scrapes reach it.
    metrics_address: IPAddress = "127.0.0.1"
    # Delivery to people. The secrets are read from the environment variables named here, never from this file.
    slack_webhook_env: EnvName = "FINOPS_SLACK_WEBHOOK_URL"
    smtp_host: str = ""  # empty: no email
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_starttls: bool = False
    smtp_user: str = ""
    smtp_password_env: EnvName = "FINOPS_SMTP_PASSWORD"
    email_from: str = "finops-ml@localhost"
    email_to: list[str] = []
    alert_link: str = ""  # e.g. https://finops.example.com/anomalies/{anomaly_id}
    retry_attempts: int = Field(4, ge=1, le=20)
    retry_backoff_s: float = Field(0.5, gt=0.0, le=60.0)
    retry_backoff_max_s: float = Field(8.0, gt=0.0, le=600.0)
    delivery_timeout_s: float = Field(5.0, gt=0.0, le=120.0)
    drain_timeout_s: float = Field(10.0, ge=0.0, le=600.0)
    until_end: bool = False  # stop at the end of the topic, closing the open days (backfills, tests, benchmarks)


class MonitoringConfig(_Strict):
    """Model monitoring (finops_ml.training.monitoring): each run against the champion's training reference."""

    enabled: bool = True
    # PSI of a feature at or above this is drift (rule of thumb: < 0.1 stable, 0.1-0.2 moderate, > 0.2 a real shift).
    psi_threshold: float = Field(0.2, gt=0.0, le=10.0)
    # Fewer values than this in the reference or this run's window: PSI is shown but judges nothing ("too few"):
    # over ten bins, a few dozen values move PSI past 0.2 by chance alone.
    min_values: int = Field(100, ge=1)
    # The champion detector's alarm rate on the run's latest window over its rate in training, at or above this.
    alarm_rate_ratio: float = Field(2.0, gt=1.0, le=100.0)
    # The champion forecast's interval coverage on the months closed since, this far below its backtest coverage.
    coverage_drop: float = Field(0.15, gt=0.0, le=1.0)
    # Drift alerts go through the stream's channels (stream.slack_webhook_env, stream.smtp_host); false: none.
    alert: bool = True
    # Vertex AI Model Monitoring on the deployed endpoints where it applies (finops_ml.platform.model_monitoring;
    # registry.backend vertex): drift of the request fields, each `vertex_interval_hours`, on a sample of requests.
    # Its statistic is Vertex's own (L-infinity distance for categorical fields, Jensen-Shannon for numbers);
    # 0.3 is Vertex's default threshold. Alerts by email to `vertex_alert_emails`, and to Cloud Logging.
    vertex_enabled: bool = True
    vertex_drift_threshold: float = Field(0.3, gt=0.0, le=1.0)
    vertex_sample_rate: float = Field(0.5, gt=0.0, le=1.0)
    vertex_interval_hours: int = Field(24, ge=1, le=168)
    vertex_alert_emails: list[str] = []


class OpexLine(_Strict):
    """One line of the platform's own monthly running cost (the value report's denominator)."""

    name: str = Field(min_length=1)
    monthly_usd: float = Field(ge=0.0, le=1_000_000.0)


class ValueConfig(_Strict):
    """The value report's assumptions (finops_ml.training.value): every figure it prints names its source, a run's
    field or one of these keys."""

    # Minutes a person takes to find and set owner, cost_center and plant on one unlabelled resource.
    minutes_per_resource: float = Field(10.0, gt=0.0, le=240.0)
    hourly_rate_usd: float = Field(80.0, gt=0.0, le=1000.0)  # loaded cost of an engineer's hour
    # The monthly bill is reviewed on this day of the month after the spend (the invoice closes on the 2nd-5th).
    bill_review_day: int = Field(10, ge=1, le=28)
    # Days from the end of an anomalous day to its alert: the stream's (it raises an open alert as the day's rows
    # arrive, up to ~1 day after it ends, and confirms it `stream.lateness_days` later), and a daily batch detector's
    # over the billing export (export latency + the next batch run).
    stream_alert_days: int = Field(1, ge=0, le=31)
    batch_alert_days: int = Field(2, ge=0, le=31)
    setup_usd: float = Field(0.0, ge=0.0)  # one-off cost of setting the platform up (counted in payback and ROI)
    opex: list[OpexLine] = []

    @field_validator("batch_alert_days")
    @classmethod
    def _batch_not_faster(cls, value: int, info) -> int:
        stream = info.data.get("stream_alert_days")
        if stream is not None and value < stream:
            raise ValueError(f"{value} is below value.stream_alert_days {stream}: a daily batch cannot alert before "
                             "the stream; raise it or lower value.stream_alert_days")
        return value


# Which top-level keys each pipeline step reads: a step receives these only (`Config.for_step`), so a change
# elsewhere (alerts, serving, schedule) neither changes its input (KFP cache) nor a model's config digest.
# The training steps are named by the catalogue's model kinds.
STEP_SECTIONS: dict[str, tuple[str, ...]] = {
    "forecast": ("seed", "forecast", "gates", "budgets"),
    "anomaly": ("seed", "anomaly", "gates"),
    "labeler": ("seed", "labeler", "gates"),
    # The Vertex AI registry uploads to gcp.staging_bucket or PIPELINE_ROOT/models, with the serving image and
    # the environment's labels.
    "register": ("environment", "registry", "gcp", "pipeline", "deploy"),
    "deploy": ("environment", "registry", "gcp", "deploy", "monitoring"),  # + Vertex AI Model Monitoring
    # model monitoring: the champion's reference from the registry, drift alerts through the stream's channels
    "monitor": ("environment", "monitoring", "registry", "gcp", "stream"),
    # the dashboard and value report (finops_ml.training.dashboard, .value)
    "report": ("value",),
}


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
    value: ValueConfig = ValueConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    featurestore: FeatureStoreConfig = FeatureStoreConfig()
    # The step a config was sent to (`from_json` of `for_step`'s document); None: the whole configuration.
    _step: str | None = PrivateAttr(None)

    def __getattribute__(self, name: str):
        # A step's config holds only its sections: reading another one is a missing entry in STEP_SECTIONS,
        # not a silent default.
        if name in _TOP_LEVEL:
            step = object.__getattribute__(self, "__pydantic_private__")["_step"]
            if step is not None and name not in STEP_SECTIONS[step]:
                raise FinopsError(f"The {step} step read the config key '{name}', which it is not sent; add it to "
                                  f"STEP_SECTIONS['{step}'] in finops_ml/config.py.")
        return object.__getattribute__(self, name)

    @field_validator("budgets")
    @classmethod
    def _unique_budget_names(cls, budgets: list[BudgetConfig]) -> list[BudgetConfig]:
        names = [b.name for b in budgets]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"budget names must be unique, {', '.join(duplicates)} appears more than once")
        return budgets

    def digest(self, step: str | None = None) -> str:
        """A short hash of the configuration; with `step` (a step's config: its own), of what that step is sent.
        A model stores the digest of its training step's config."""
        step = step or self._step
        text = self.for_step(step) if step else self.model_dump_json()
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def to_json(self) -> str:
        return self.model_dump_json()

    def for_step(self, step: str) -> str:
        """The JSON a pipeline step is sent: its name and the keys of STEP_SECTIONS[step], nothing else."""
        dump = self.model_dump(mode="json")
        return json.dumps({"step": step, "config": {key: dump[key] for key in STEP_SECTIONS[step]}},
                          sort_keys=True, separators=(",", ":"))

    def step_parameters(self) -> dict[str, str]:
        """The training pipeline's configuration parameters: `<step>_config` for each step of STEP_SECTIONS."""
        return {f"{step}_config": self.for_step(step) for step in STEP_SECTIONS}

    @classmethod
    def from_json(cls, text: str) -> "Config":
        """A whole configuration (`to_json`), or a step's (`for_step`): then only that step's keys can be read."""
        raw = json.loads(text)
        if set(raw) != {"step", "config"}:
            return cls.model_validate(raw)
        step = raw["step"]
        if step not in STEP_SECTIONS or not set(raw["config"]) <= set(STEP_SECTIONS[step]):
            raise FinopsError(f"The config sent to step {step!r} does not match STEP_SECTIONS; recompile the pipeline "
                              "with this version of finops-ml.")
        cfg = cls.model_validate(raw["config"])
        cfg._step = step
        return cfg

    def with_updates(self, where: str, **sections: dict) -> "Config":
        """A copy with some keys of some sections replaced, validated as a file's are (errors name `where`)."""
        raw = self.model_dump()
        for section, values in sections.items():
            raw[section] = {**raw[section], **values}
        try:
            return Config.model_validate(raw)
        except ValidationError as exc:
            raise _config_error(exc, where) from None

    def with_options(self, section: str, **options) -> "Config":
        """A copy with the command-line options given (not None) as keys of `section`, validated as a file's keys
        are: an option beyond a key's limits is one sentence naming the option and the key."""
        given = {key: value for key, value in options.items() if value is not None}
        if not given:
            return self
        where = " ".join(f"--{key.replace('_', '-')} {value}" for key, value in given.items())
        return self.with_updates(f"The option{'s' if len(given) > 1 else ''} {where}", **{section: given})


_TOP_LEVEL = frozenset(Config.model_fields)


def _config_error(exc: ValidationError, where: str) -> FinopsError:
    """The first error of a validation as one sentence naming `where` (the file) and the key."""
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"] if p != "[key]")  # a mapping's key is named like its value
    if err["type"] == "extra_forbidden":
        return FinopsError(f"{where}: unknown key '{key}'; remove it or check its spelling.")
    return FinopsError(f"{where}: key '{key}' is invalid: {err['msg'].removeprefix('Value error, ')}.")


def load_config(path: str | Path | None = None) -> Config:
    """Load and validate a YAML config; with no path, the packaged `configs/local.yaml`."""
    if path is None:
        path = CONFIG_DIR / "local.yaml"
        if not path.is_file():
            raise FinopsError(f"The default config {path} is not installed; reinstall finops-ml or pass --config.")
    path = Path(path)
    if not path.exists():
        raise FinopsError(f"Config file {path} does not exist; pass an existing file with --config.")
    if not path.is_file():
        raise FinopsError(f"Config file {path} is a folder, not a file; pass a YAML file with --config.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise FinopsError(f"Config file {path} is not a text file (not UTF-8); pass a YAML file with --config."
                          ) from None
    except OSError as exc:
        raise FinopsError(f"Config file {path} cannot be read ({exc.strerror}); pass a readable YAML file.") from None
    except yaml.YAMLError as exc:
        raise FinopsError(f"Config file {path} is not valid YAML ({exc.__class__.__name__}); fix its syntax.") from None
    if not isinstance(raw, dict):
        raise FinopsError(f"Config file {path} must hold a mapping of keys at its top level.")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise _config_error(exc, f"Config file {path}") from None
