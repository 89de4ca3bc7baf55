"""The quality benchmark's baselines and evaluation (benchmarks/baselines.py, benchmarks/model_quality.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks import baselines, model_quality
from finops_ml.config import load_config
from finops_ml.data.ingest import ingest
from finops_ml.data.warehouse import export_feature_view

pytestmark = pytest.mark.unit


def _cells(days=120, spike_day=100, seed=0):
    """Two cell series with weekly seasonality and noise; one spike (x3) in the first."""
    rng = np.random.default_rng(seed)
    day = pd.date_range("2025-01-01", periods=days, freq="D")
    rows = []
    for project in ("p1", "p2"):
        v = 100 * np.where(day.dayofweek >= 5, 0.7, 1.0) * rng.lognormal(0, 0.03, days)
        if project == "p1":
            v[spike_day] *= 3
        rows.append(pd.DataFrame({"day": day, "service": "Compute Engine", "project_id": project, "net_cost": v}))
    cells = pd.concat(rows, ignore_index=True)
    cells["truth"] = (cells.project_id == "p1") & (cells.day == day[spike_day])
    return cells


def test_rule_baselines_catch_an_obvious_spike():
    cells = _cells()
    keys, days, values = baselines.cell_grid(cells)
    assert values.shape == (2, 120)
    for flags in (baselines.rolling_zscore_flags(values), baselines.rule_flags(values), baselines.stl_flags(values)):
        assert flags[0, 100]
        assert flags.sum() <= 10  # the spike and few false alarms in 240 cell days
    assert not baselines.rule_flags(values)[:, :14].any()  # no trailing window yet: nothing to compare with


def test_anomaly_baselines_align_with_the_cells_and_use_only_training_labels():
    cells = _cells()
    cells["truth"] |= (cells.project_id == "p1") & (cells.day == cells.day.min() + pd.Timedelta(days=60))
    cells.loc[(cells.project_id == "p1") & (cells.day == cells.day.min() + pd.Timedelta(days=60)), "net_cost"] *= 3
    out = baselines.anomaly_baselines(cells.sample(frac=1.0, random_state=1), pd.Timestamp("2025-03-31"), seed=1)
    assert set(out) == {"rolling_zscore", "rolling_zscore_tuned", "rule_1.25x_mean_2std", "stl_robust_z",
                        "stl_robust_z_tuned", "isolation_forest"}
    shuffled = cells.sample(frac=1.0, random_state=1)
    for flags, _ in out.values():
        assert len(flags) == len(cells)
        assert flags[np.flatnonzero(shuffled.truth.to_numpy())].all()


def test_forecast_baselines_give_monthly_forecasts_with_intervals():
    pytest.importorskip("statsforecast")
    day = pd.date_range("2025-01-01", "2025-12-31", freq="D")
    daily = pd.DataFrame({"day": day, "service": "Compute Engine", "project_id": "p",
                          "net_cost": 100 * np.where(day.dayofweek >= 5, 0.5, 1.0)})
    out = baselines.forecast_baselines(daily, pd.Timestamp("2025-09-30"), 0.8, models=("seasonal_naive", "auto_ets"))
    naive, _ = out["seasonal_naive"]
    assert naive.month.tolist() == ["2025-10", "2025-11", "2025-12"]
    actual = daily[daily.day > "2025-09-30"].groupby(daily.day.dt.strftime("%Y-%m")).net_cost.sum().to_numpy()
    np.testing.assert_allclose(naive.forecast.to_numpy(), actual)  # a weekly pattern repeats exactly
    for fc, _ in out.values():
        assert (fc.lo <= fc.forecast + 1e-6).all() and (fc.forecast <= fc.hi + 1e-6).all()


def test_label_baselines():
    # the majority baselines (same project, overall) live in the library's evaluation: finops_ml.models.labeler
    known = pd.DataFrame({"resource_name": ["lyon-mes-vm-01", "lyon-mes-vm-02", "stg-mes-vm-01"],
                          "project_id": ["p1", "p1", "p2"], "owner": ["a", "a", "b"],
                          "cost_center": ["cc1", "cc1", "cc2"], "plant": ["lyon", "lyon", "stuttgart"]})
    asked = pd.DataFrame({"resource_name": ["stg-mes-vm-07", "qqq"], "project_id": ["p2", "p3"]})
    out = baselines.NearestNameLabeler().fit(known).predict(asked)
    assert out.plant_predicted[0] == "stuttgart" and out.plant_confidence[0] > 0.5 and out.plant_confidence[1] < 0.2


def test_seeds_and_summary():
    assert model_quality.parse_seeds("101-103,7") == [101, 102, 103, 7]
    df = pd.DataFrame({"model": ["a", "a", "b"], "f1": [0.5, 0.7, 0.9], "delay_days": [1.0, 3.0, 0.0],
                       "seconds": [1.0, 2.0, 3.0]})
    table = model_quality.summary(df, "anomaly")
    assert table.columns.tolist() == ["model", "f1 ↑", "delay_days ↓", "seconds ↓"]
    assert table.iloc[0].tolist() == ["a", "0.600 (0.500)", "2.000 (3.000)", "1.500"]


@pytest.fixture(scope="module")
def prepared(small_generated, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("quality")
    (d / "data").symlink_to(small_generated)
    ingest(str(small_generated / "events.jsonl"), d / "events", small_generated / "control_totals.csv")
    for view in ("daily_cost", "resource_daily_cost", "resources"):
        export_feature_view(view, d / "events" / "events.parquet", d / f"{view}.parquet")
    return d


@pytest.mark.slow
def test_labels_and_anomaly_are_evaluated_on_the_same_holdout_for_all(prepared, small_seed):
    cfg = load_config()
    rows = model_quality.eval_labels(prepared, cfg, small_seed)
    assert [r["model"] for r in rows] == ["project_majority", "majority_class", "nearest_name", "ours"]
    assert len({r["compliance_before"] for r in rows}) == 1
    for r in rows:  # correct-only compliance: a baseline's wrong labels do not raise it
        assert 0 <= r["acc_owner"] <= 1 and 0 <= r["compliance_after"] <= 1
    rows, cells = model_quality.eval_anomaly(prepared, cfg, small_seed)
    assert [r["model"] for r in rows] == ["rolling_zscore", "rolling_zscore_tuned", "rule_1.25x_mean_2std",
                                          "stl_robust_z", "stl_robust_z_tuned", "isolation_forest", "ours"]
    assert {"is_anomaly", "expected"} <= set(cells.columns)
    for r in rows:
        assert 0 <= r["f1"] <= 1 and 0 <= r["event_f1"] <= 1
        # recall per kind of the holdout's anomalies and per size bin, beside the overall recall
        kinds = [k for k in model_quality.KIND_COLUMNS if k in r and r[k] == r[k]]
        assert kinds and all(0 <= r[k] <= 1 for k in kinds)
