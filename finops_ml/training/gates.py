"""Evaluation gates: metrics computed on held-out data compared with thresholds from the config."""

from __future__ import annotations

from finops_ml.config import Config
from finops_ml.models.catalogue import MODELS

MODEL_GATES = {spec.name: spec.gates for spec in MODELS.values()}


def threshold(cfg: Config, gate: str) -> float:
    if gate.startswith("label_accuracy_"):
        return cfg.gates.label_accuracy
    if gate == "forecast_interval_coverage" and cfg.gates.forecast_interval_coverage is None:
        return round(cfg.forecast.interval - 0.05, 6)
    return getattr(cfg.gates, gate)


def check(model_name: str, metrics: dict, cfg: Config) -> dict[str, dict]:
    """Each gate of a model: value, threshold, passed (a missing or NaN metric fails)."""
    results = {}
    for gate in MODEL_GATES[model_name]:
        if gate.startswith("label_accuracy_") and gate.removeprefix("label_accuracy_") not in cfg.labeler.targets:
            continue
        value = metrics.get(gate)
        limit = threshold(cfg, gate)
        passed = value is not None and value == value and value >= limit
        results[gate] = {"value": value, "threshold": limit, "passed": bool(passed)}
    return results


def passed(model_name: str, metrics: dict, cfg: Config) -> bool:
    return all(g["passed"] for g in check(model_name, metrics, cfg).values())
