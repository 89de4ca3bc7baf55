"""The monitor component on the KFP local runner: drift_* KFP Metrics and the monitoring artifact, against a champion
registry, on a world noisier than the champion's (tests/test_monitoring.py holds the library's tests).
No `from __future__ import annotations` here: KFP reads the pipeline's annotations as types, not strings.
"""
import json
import math
from pathlib import Path
from typing import NamedTuple

import pytest
from kfp import dsl, local
from kfp.dsl import Artifact, Dataset, Metrics

from components.monitor import monitor_models
from finops_ml.config import Config
from finops_ml.synthetic.generator import generate
from finops_ml.training import steps
from testsupport.registry import SMALL, train_small_registry

pytestmark = [pytest.mark.kfp, pytest.mark.slow]


class _Monitor(NamedTuple):
    monitoring: Artifact
    metrics: Metrics


@dsl.pipeline
def monitor_from(daily_cost_uri: str, resource_daily_cost_uri: str, resources_uri: str, registry_dir: str,
                 config_json: str) -> _Monitor:
    daily = dsl.importer(artifact_uri=daily_cost_uri, artifact_class=Dataset)
    resource_daily = dsl.importer(artifact_uri=resource_daily_cost_uri, artifact_class=Dataset)
    resources = dsl.importer(artifact_uri=resources_uri, artifact_class=Dataset)
    task = monitor_models(daily_cost=daily.output, resource_daily_cost=resource_daily.output,
                          resources=resources.output, registry_dir=registry_dir, config_json=config_json,
                          run_id="kfp-run")
    return _Monitor(monitoring=task.outputs["monitoring"], metrics=task.outputs["metrics"])


def test_the_monitor_component_logs_drift_metrics_against_the_champion(tmp_path):
    champion = train_small_registry(tmp_path / "champion")
    cfg = Config.model_validate({**SMALL, "generator": {**SMALL["generator"], "noise_sigma": 0.3}})
    generate(cfg.generator, cfg.seed, tmp_path / "noisy")
    steps.ingest_step(str(tmp_path / "noisy" / "events.jsonl"), "", str(tmp_path / "events"))
    paths = [str(tmp_path / f"{name}.parquet") for name in ("daily_cost", "resource_daily_cost", "resources")]
    steps.features_step(str(tmp_path / "events"), *paths)

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "pipeline_root"))
    run = monitor_from(daily_cost_uri=paths[0], resource_daily_cost_uri=paths[1], resources_uri=paths[2],
                       registry_dir=str(champion["registry"]), config_json=Config().for_step("monitor"))
    section = json.loads((Path(run.outputs["monitoring"].path) / "monitoring.json").read_text())
    metrics = run.outputs["metrics"].metadata
    assert section["drift"] and metrics["drift_checks_failed"] == len(section["drifted"]) > 0
    assert metrics["drift_anomaly_log_ratio_to_28d_median_psi"] > 0.2
    assert metrics["drift_anomaly_alarm_rate_ratio"] > 2.0
    assert all(k.startswith("drift_") and math.isfinite(v) for k, v in metrics.items())
