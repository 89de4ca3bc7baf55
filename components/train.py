from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.image import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def train_forecast(daily_cost: Input[Dataset], anomaly_evaluation: Input[Artifact], config_json: str,
                   model: Output[Model], evaluation: Output[Artifact], metrics: Output[Metrics]):
    """Backtest linear / random forest / XGBoost, the naive forecasts and the ensemble of the two best on the
    anomaly-adjusted history, evaluate the best on the holdout from rolling origins beside the naive baselines,
    refit, forecast daily and monthly with calibrated intervals, and check the budgets."""
    import math

    from finops_ml.config import Config
    from finops_ml.training.steps import train_forecast_step

    result = train_forecast_step(daily_cost.path, anomaly_evaluation.path, Config.from_json(config_json), model.path,
                                 evaluation.path)
    m = result["metrics"]
    logged = {key: m[key] for key in ("forecast_accuracy", "forecast_accuracy_project", "forecast_accuracy_series",
                                      "seasonal_naive_accuracy", "naive_accuracy", "mape", "mase", "interval_coverage",
                                      "forecast_interval_coverage", "interval_coverage_daily", "budget_alerts")}
    logged.update({f"baseline_{name}": value for name, value in m["baselines"].items()})
    # per budget, the highest chance of overspending ahead
    logged.update({key: value for key, value in m.items() if key.startswith("budget_p_exceed_")})
    for key, value in logged.items():
        if value is not None and math.isfinite(value):  # NaN/inf would make executor_output.json invalid JSON
            metrics.log_metric(key, value)
    model.metadata["algorithm"] = result["metrics"]["model"]


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def train_anomaly_detector(resource_daily_cost: Input[Dataset], resources: Input[Dataset], anomaly_labels: str,
                           anomaly_feedback: str, config_json: str, model: Output[Model],
                           evaluation: Output[Artifact], metrics: Output[Metrics],
                           confusion: Output[ClassificationMetrics]):
    """Isolation Forest on robust features; threshold from the training window's labels (and users' feedback);
    each anomaly with its dollar impact and cause."""
    import math

    from finops_ml.config import Config
    from finops_ml.training.steps import train_anomaly_step

    result = train_anomaly_step(resource_daily_cost.path, resources.path, anomaly_labels, anomaly_feedback,
                                Config.from_json(config_json), model.path, evaluation.path)
    for key in ("anomaly_f1", "precision", "recall", "event_f1", "mean_detection_delay_days"):
        value = result["metrics"][key]  # the delay is NaN when no anomalous event was detected
        if value is not None and math.isfinite(value):  # NaN would make executor_output.json invalid JSON
            metrics.log_metric(key, value)
    m = result["metrics"]
    confusion.log_confusion_matrix(["normal", "anomaly"], m["confusion"])  # holdout cells: truth x predicted


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def train_labeler(resources: Input[Dataset], resource_truth: str, config_json: str, model: Output[Model],
                  evaluation: Output[Artifact], metrics: Output[Metrics],
                  owner_confusion: Output[ClassificationMetrics],
                  cost_center_confusion: Output[ClassificationMetrics],
                  plant_confusion: Output[ClassificationMetrics]):
    """TF-IDF + logistic regression per label; confident predictions applied, the rest to review."""
    import json
    import os

    from finops_ml.config import Config
    from finops_ml.training.steps import train_labeler_step

    result = train_labeler_step(resources.path, resource_truth, Config.from_json(config_json), model.path,
                                evaluation.path)
    for key, value in result["metrics"].items():
        if isinstance(value, (int, float)) and value == value:
            metrics.log_metric(key, value)
    confusion = json.load(open(os.path.join(evaluation.path, "confusion.json")))
    for target, artifact in (("owner", owner_confusion), ("cost_center", cost_center_confusion),
                             ("plant", plant_confusion)):
        if target in confusion:  # held-out labelled resources: truth x predicted
            artifact.log_confusion_matrix(confusion[target]["labels"], confusion[target]["matrix"])
