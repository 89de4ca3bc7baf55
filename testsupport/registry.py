"""A small local registry of the three models, trained by the pipeline's own steps (tests and benchmarks)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

# 11 months: the forecast's 3 holdout months, one backtest origin and its 56 days of history.
SMALL = {"generator": {"months": 11, "plants": 1, "resources_per_project": 3},
         "forecast": {"candidates": ["linear"], "backtest_origins": 1},
         "anomaly": {"n_estimators": 50, "injection_draws": 1}}


def train_small_registry(root: Path, overrides: dict | None = None) -> dict:
    """Generate a small organisation under ROOT, train the three models on it and register them (whatever the gates
    say) in ROOT/registry. Returns {"registry": path, "dirs": {kind: version dir}, and the three feature views as
    DataFrames: "daily_cost", "resource_daily_cost", "resources"}."""
    from finops_ml.config import Config
    from finops_ml.models.catalogue import MODELS
    from finops_ml.platform.registry import LocalRegistry
    from finops_ml.serving import predictors
    from finops_ml.synthetic.generator import generate
    from finops_ml.training import steps

    root = Path(root)
    cfg = Config.model_validate(overrides or SMALL)
    generated = root / "generated"
    generate(cfg.generator, cfg.seed, generated)
    steps.ingest_step(str(generated / "events.jsonl"), "", str(root / "events"))
    paths = {name: str(root / f"{name}.parquet") for name in ("daily_cost", "resource_daily_cost", "resources")}
    steps.features_step(str(root / "events"), paths["daily_cost"], paths["resource_daily_cost"], paths["resources"])
    truth = generated / "truth"
    steps.train_anomaly_step(paths["resource_daily_cost"], paths["resources"], str(truth / "anomaly_cells.csv"), "",
                             cfg, str(root / "m_anomaly"), str(root / "e_anomaly"))
    steps.train_forecast_step(paths["daily_cost"], cfg, str(root / "m_forecast"), str(root / "e_forecast"))
    steps.train_labeler_step(paths["resources"], str(truth / "resources.csv"), cfg, str(root / "m_labeler"),
                             str(root / "e_labeler"))
    registry = LocalRegistry(root / "registry")
    for kind, name in ((k, s.name) for k, s in MODELS.items()):
        evaluation = json.loads((root / f"e_{kind}" / "evaluation.json").read_text())
        registry.register(name, root / f"m_{kind}", evaluation["metrics"], cfg.digest(), evaluation["data_window"])
    return {"registry": root / "registry", "dirs": predictors.resolve_registry(root / "registry", list(MODELS)),
            **{k: pd.read_parquet(v) for k, v in paths.items()}}
