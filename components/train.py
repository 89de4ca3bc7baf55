from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.image import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def train_forecast(daily_cost: Input[Dataset], config_json: str, model: Output[Model], evaluation: Output[Artifact],
                   metrics: Output[Metrics]):
    """Backtest linear / random forest / XGBoost, the naive forecasts and the ensemble of the two best on the
    daily cost as billed, evaluate the best on the holdout from rolling origins beside the naive baselines,
    refit, forecast daily and monthly with calibrated intervals, and check the budgets."""
    from finops_ml.config import Config
    from finops_ml.training.steps import loggable_metrics, train_forecast_step

    result = train_forecast_step(daily_cost.path, Config.from_json(config_json), model.path, evaluation.path)
    for key, value in loggable_metrics(result["metrics"]).items():  # incl. each budget's highest P(exceed) ahead
        metrics.log_metric(key, value)
    model.metadata["algorithm"] = result["metrics"].get("model", "not trained")


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def train_anomaly_detector(resource_daily_cost: Input[Dataset], resources: Input[Dataset], anomaly_labels: str,
                           anomaly_feedback: str, config_json: str, model: Output[Model],
                           evaluation: Output[Artifact], metrics: Output[Metrics],
                           confusion: Output[ClassificationMetrics]):
    """Label-free thresholds (alarm budgets; refined by users' feedback, replaced by ground truth on synthetic data);
    rises and drops, each with its dollar impact, % deviation and cause; evaluated by injection into the holdout."""
    from finops_ml.config import Config
    from finops_ml.training.steps import loggable_metrics, train_anomaly_step

    result = train_anomaly_step(resource_daily_cost.path, resources.path, anomaly_labels, anomaly_feedback,
                                Config.from_json(config_json), model.path, evaluation.path)
    m = result["metrics"]
    for key, value in loggable_metrics(m).items():  # incl. evaluation_injected_*: the gate's injected anomalies
        metrics.log_metric(key, value)
    if "confusion" in m:  # holdout cells of the evidence used: truth x predicted
        confusion.log_confusion_matrix(["normal", "anomaly"], m["confusion"])


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def train_labeler(resources: Input[Dataset], resource_truth: str, config_json: str, model: Output[Model],
                  evaluation: Output[Artifact], metrics: Output[Metrics],
                  owner_confusion: Output[ClassificationMetrics],
                  cost_center_confusion: Output[ClassificationMetrics],
                  plant_confusion: Output[ClassificationMetrics]):
    """TF-IDF + logistic regression per label; confident predictions applied, the rest to review. Raises
    InsufficientData when a label is carried by too few resources to learn and measure it."""
    import json
    import os

    from finops_ml.config import Config
    from finops_ml.training.steps import loggable_metrics, train_labeler_step

    result = train_labeler_step(resources.path, resource_truth, Config.from_json(config_json), model.path,
                                evaluation.path)
    for key, value in loggable_metrics(result["metrics"]).items():  # incl. baseline_*: on the same folds
        metrics.log_metric(key, value)
    path = os.path.join(evaluation.path, "confusion.json")
    confusion = json.load(open(path)) if os.path.exists(path) else {}
    for target, artifact in (("owner", owner_confusion), ("cost_center", cost_center_confusion),
                             ("plant", plant_confusion)):
        if target in confusion:  # held-out labelled resources: truth x predicted
            artifact.log_confusion_matrix(confusion[target]["labels"], confusion[target]["matrix"])
