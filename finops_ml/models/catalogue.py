"""The model catalogue: the one place that lists the models, their gates, primary metric and evaluation schema.

Adding a model means one `ModelSpec` here, its training step, and its predictor in `finops_ml.serving.predictors`.
Nothing here imports a model's code: the estimator is named by its import path and loaded on demand.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

_SCHEMA = "gs://google-cloud-aiplatform/schema/modelevaluation/{}_metrics_1.0.0.yaml"


@dataclass(frozen=True)
class ModelSpec:
    kind: str  # short name: CLI flags, serving routes, pipeline task names
    name: str  # registry name (local registry directory, Vertex AI parent model display name)
    estimator: str  # "module:Class[,module:Class]": the classes a fitted model stored as model.joblib may have
    gates: tuple[str, ...]  # metrics compared with the config's thresholds (finops_ml.training.gates)
    primary_metric: str  # decides champion / challenger, higher is better
    evaluation_schema: str  # the Vertex AI ModelEvaluation schema the metrics are filed under

    def estimator_classes(self) -> tuple[type, ...]:
        classes = []
        for path in self.estimator.split(","):
            module, _, cls = path.partition(":")
            classes.append(getattr(importlib.import_module(module), cls))
        return tuple(classes)


MODELS: dict[str, ModelSpec] = {
    spec.kind: spec
    for spec in (
        ModelSpec("forecast", "cost-forecast",
                  "finops_ml.models.forecast:CostForecaster,finops_ml.models.forecast:EnsembleForecaster",
                  ("forecast_accuracy", "forecast_interval_coverage"),
                  "forecast_accuracy", _SCHEMA.format("forecasting")),
        ModelSpec("anomaly", "cost-anomaly", "finops_ml.models.anomaly:CostAnomalyDetector", ("anomaly_f1",),
                  "anomaly_f1", _SCHEMA.format("classification")),
        ModelSpec("labeler", "resource-labeler", "finops_ml.models.labeler:ResourceLabeler",
                  ("label_accuracy_owner", "label_accuracy_cost_center", "label_accuracy_plant",
                   "label_compliance_after", "label_applied_precision"),
                  "label_accuracy_min", _SCHEMA.format("classification")),
    )
}
MODEL_NAMES: tuple[str, ...] = tuple(spec.name for spec in MODELS.values())
# Which stored metric decides champion / challenger, per registry name (higher is better).
PRIMARY_METRIC: dict[str, str] = {spec.name: spec.primary_metric for spec in MODELS.values()}
FORECAST, ANOMALY, LABELER = (MODELS[k].name for k in ("forecast", "anomaly", "labeler"))


def by_name(name: str) -> ModelSpec:
    """The spec of a registry name such as `cost-anomaly`."""
    for spec in MODELS.values():
        if spec.name == name:
            return spec
    raise KeyError(f"{name!r} is not a finops-ml model; the models are {', '.join(MODEL_NAMES)}")
