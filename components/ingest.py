from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components.image import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def ingest_events(source: str, control_totals: str, events: Output[Dataset], metrics: Output[Metrics]):
    """Validate, quarantine, dedupe and reconcile billing events into the events table."""
    from finops_ml.training.steps import ingest_step

    summary = ingest_step(source, control_totals, events.path)
    for key in ("rows", "quarantined", "duplicates", "total_net_cost"):
        metrics.log_metric(key, summary[key])
    if summary["reconciliation_diff"] is not None:
        metrics.log_metric("reconciliation_diff", summary["reconciliation_diff"])
