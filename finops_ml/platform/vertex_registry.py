"""The Vertex AI Model Registry behind the `ModelRegistry` interface.

Each registered model is a new version of one parent model per model name (`parent_model=`), with the alias
`champion` (it moves: Vertex AI removes an alias from the version that had it) or `challenger`, labels with the data
window, run id and config digest, the artifacts uploaded to GCS first, the serving container (image, AIP routes,
port) and its held-out metrics imported as a ModelEvaluation. The champion is decided as locally
(`compare_with_champion`): its stored evaluation when measured on the same holdout, else re-scored from its
artifacts; the champion's own data window and config digest are not uploaded again.
"""

from __future__ import annotations

import math
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from finops_ml.config import Config
from finops_ml.errors import FinopsError
from finops_ml.models.catalogue import ANOMALY, MODELS, PRIMARY_METRIC
from finops_ml.platform.gcp import download_dir, init_vertex, label_value, resource_labels, upload_dir
from finops_ml.platform.registry import ModelRegistry, Rescorer, compare_with_champion

# The serving container contract (Vertex AI sets AIP_HTTP_PORT / AIP_PREDICT_ROUTE / AIP_HEALTH_ROUTE from these).
SERVING_PORT = 8080
PREDICT_ROUTE = "/predict"
HEALTH_ROUTE = "/health"
# Which evaluation schema the imported metrics are filed under, per model (from the catalogue).
METRICS_SCHEMA = {spec.name: spec.evaluation_schema for spec in MODELS.values()}


def _numbers(metrics: dict) -> dict:
    """The finite numbers (and nested dicts of them) of a metrics dict: what a protobuf Struct can hold faithfully."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out[key] = _numbers(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


class VertexRegistry(ModelRegistry):
    """The Vertex AI Model Registry of the config's project and region."""

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

    def _evaluation_metrics(self, parent, version_id: str) -> dict | None:
        """The metrics of the version's latest imported evaluation (None: it has none)."""
        from google.cloud import aiplatform

        model = aiplatform.Model(parent.resource_name, version=str(version_id))
        evaluations = model.list_model_evaluations()
        if not evaluations:
            return None
        return dict(max(evaluations, key=lambda e: e.create_time).metrics)

    def entry(self, name: str, version: int | str) -> dict:
        """The version's labels (run id, config digest, data window; as GCP label values) and stored metrics."""
        from google.cloud import aiplatform

        parent = self.parent(name)
        if isinstance(version, str) and not version.isdigit():
            version = self.aliases(name).get(version, version)
        if parent is None or str(version) not in {v.version_id for v in self._versions(parent)}:
            raise FinopsError(f"Model {name} has no version or alias {version} in the Vertex AI Model Registry of "
                              f"{self.cfg.gcp.project} ({self.cfg.gcp.region}); check the name and version.")
        model = aiplatform.Model(parent.resource_name, version=str(version))
        labels = dict(model.labels or {})
        window = {"start": labels.get("data_start", ""), "end": labels.get("data_end", ""),
                  **({"digest": labels["data_digest"]} if labels.get("data_digest") else {})}
        return {"name": name, "version": int(version), "resource_name": model.resource_name,
                "run_id": labels.get("run_id", ""), "config_digest": labels.get("config_digest", ""),
                "data_window": window,
                "holdout": {"start": labels.get("holdout_start", ""), "end": labels.get("holdout_end", "")},
                "metrics": _numbers(self._evaluation_metrics(parent, str(version)) or {}),
                "primary_metric": PRIMARY_METRIC.get(name), "artifact_uri": model.uri,
                "aliases": list(model.version_aliases)}

    def model_dir(self, name: str, alias_or_version: str | int, into: str | Path) -> Path:
        """Download a version's artifacts (its artifact URI on GCS) into the directory INTO; returns INTO."""
        download_dir(self.cfg, self.entry(name, alias_or_version)["artifact_uri"], into)
        return Path(into)

    def _rescore(self, name: str, version: int, rescore: Rescorer) -> dict:
        with tempfile.TemporaryDirectory(prefix=f"{name}-v{version}-") as tmp:
            return rescore(self.model_dir(name, version, tmp))

    def register(self, name: str, model_dir: str | Path, metrics: dict, config_digest: str, data_window: dict,
                 run_id: str = "", rescore: Rescorer | None = None) -> dict:
        """Upload a new version; `champion` when not worse than the champion on the same holdout, else `challenger`."""
        from google.cloud import aiplatform

        primary = PRIMARY_METRIC.get(name)
        value = metrics.get(primary) if primary else None
        parent = self.parent(name)
        champion = None
        if parent is not None:
            found = [v for v in self._versions(parent) if "champion" in v.version_aliases]
            champion = self.entry(name, int(found[0].version_id)) if found else None
        comparison = compare_with_champion(
            name, metrics, config_digest, data_window, champion,
            (lambda: self._rescore(name, champion["version"], rescore)) if rescore and champion else None)
        if comparison["duplicate"]:
            return self.not_registered(champion, comparison)
        is_champion = comparison["wins"]
        holdout = comparison["holdout"]

        stamp = run_id or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        staging = (self.cfg.gcp.staging_bucket or f"{self.cfg.pipeline.pipeline_root.rstrip('/')}/models").rstrip("/")
        artifact_uri = f"{staging}/{name}/{label_value(stamp)}"
        upload_dir(self.cfg, model_dir, artifact_uri)
        alias = "champion" if is_champion else "challenger"
        labels = resource_labels(self.cfg, model=name, run_id=run_id, config_digest=config_digest,
                                 data_start=data_window.get("start", ""), data_end=data_window.get("end", ""),
                                 data_digest=data_window.get("digest", ""),
                                 holdout_start=holdout["start"], holdout_end=holdout["end"])
        d = self.cfg.deploy
        model = aiplatform.Model.upload(
            display_name=name,
            parent_model=parent.resource_name if parent is not None else None,
            is_default_version=is_champion or parent is None,
            version_aliases=[alias],
            version_description=f"run {run_id}; {primary} {value}; data {data_window.get('start')}.."
                                f"{data_window.get('end')}",
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
                "data_window": data_window, "holdout": holdout, "artifact_uri": artifact_uri,
                "champion_when_registered": is_champion, "comparison": comparison, "registered": True,
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
        aliases = ["champion", "default"]
        if "challenger" in versions[int(version)].version_aliases:
            aliases.append("-challenger")
        parent.versioning_registry.add_version_aliases(new_aliases=aliases, version=str(version))
        return {"name": name, "version": int(version), "resource_name": parent.resource_name}
