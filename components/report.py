from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Output

from components.image import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def build_report(events: Input[Dataset], forecast_evaluation: Input[Artifact], anomaly_evaluation: Input[Artifact],
                 labeler_evaluation: Input[Artifact], config_json: str, report: Output[HTML],
                 summary: Output[Artifact], value: Output[Artifact], run_id: str = "", anomaly_feedback: str = "",
                 monitoring: Input[Artifact] = None):
    """The run's dashboard (HTML, interactive plots), summary JSON and value report, shown in the Vertex AI console."""
    import json
    import os
    from pathlib import Path

    from finops_ml.config import Config
    from finops_ml.fileio import read_json, strict
    from finops_ml.models.catalogue import ANOMALY, FORECAST, LABELER
    from finops_ml.training.report import build_summary, build_value, read_feedback_file, write_dashboard

    dirs = {FORECAST: Path(forecast_evaluation.path), ANOMALY: Path(anomaly_evaluation.path),
            LABELER: Path(labeler_evaluation.path)}
    evaluations = {name: read_json(d / "evaluation.json") for name, d in dirs.items()}
    result = build_summary(read_json(os.path.join(events.path, "ingest_summary.json")), evaluations, dirs,
                           read_feedback_file(anomaly_feedback))
    result["run_id"] = run_id or None
    # the monitor step's section (finops_ml.training.monitoring); None when the pipeline has no monitor step
    path = os.path.join(monitoring.path, "monitoring.json") if monitoring is not None else ""
    result["monitoring"] = read_json(path) if path and os.path.exists(path) else None
    worth = build_value(result, dirs, Config.from_json(config_json).value)
    write_dashboard(result, dirs, report.path, worth)
    with open(summary.path, "w") as f:
        json.dump(strict(result), f, indent=2)
    with open(value.path, "w") as f:
        json.dump(strict(worth), f, indent=2)
