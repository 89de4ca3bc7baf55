from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.image import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def build_features(events: Input[Dataset], daily_cost: Output[Dataset], resource_daily_cost: Output[Dataset],
                   resources: Output[Dataset]):
    """Run the feature views of feature_defs/ over the events table (or in BigQuery for a BigQuery source)."""
    from finops_ml.training.steps import features_step

    print(features_step(events.path, daily_cost.path, resource_daily_cost.path, resources.path))
