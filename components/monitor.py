from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from components.image import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def monitor_models(daily_cost: Input[Dataset], resource_daily_cost: Input[Dataset], resources: Input[Dataset],
                   registry_dir: str, config_json: str, run_id: str, monitoring: Output[Artifact],
                   metrics: Output[Metrics]):
    """This run's features and scores against each champion's training reference: PSI per feature, the anomaly
    alarm rate, the forecast's recent interval coverage (drift_* metrics); drift alerts through the stream's
    channels."""
    from finops_ml.config import Config
    from finops_ml.training.monitoring import kfp_metrics
    from finops_ml.training.steps import monitor_step

    section = monitor_step(daily_cost.path, resource_daily_cost.path, resources.path, registry_dir,
                           Config.from_json(config_json), run_id, monitoring.path)
    for key, value in kfp_metrics(section).items():
        metrics.log_metric(key, value)
