"""The forecaster on synthetic series whose future is known."""

import numpy as np
import pandas as pd
import pytest

from finops_ml.models import forecast as F


def _daily(days=400, services=("Compute Engine", "BigQuery"), projects=("p1", "p2", "p3"), growth=0.01, seed=0):
    rng = np.random.default_rng(seed)
    idx = pd.date_range("2025-01-01", periods=days, freq="D")
    rows = []
    for i, s in enumerate(services):
        for j, p in enumerate(projects):
            base = 50.0 * (i + 1) * (j + 1)
            weekly = np.where(idx.dayofweek >= 5, 0.7, 1.0)
            trend = (1 + growth) ** (np.arange(days) / 30.4)
            y = base * weekly * trend * rng.lognormal(0, 0.03, days)
            rows.append(pd.DataFrame({"day": idx, "service": s, "project_id": p, "net_cost": y}))
    return pd.concat(rows, ignore_index=True)


@pytest.mark.parametrize("model", ["linear", "random_forest", "xgboost"])
def test_each_model_forecasts_a_regular_series_closely(model):
    daily = _daily()
    result = F.train_and_evaluate(daily, [model], holdout_months=3, horizon_months=3, backtest_origins=1,
                                  interval=0.8, seed=1)
    m = result["metrics"]
    assert m["model"] == model
    assert m["forecast_accuracy"] > 0.95, m
    assert 0 < m["interval_ratio"][0] <= 1 <= m["interval_ratio"][1]


def test_forecast_covers_exactly_the_next_months_for_every_series():
    daily = _daily(days=396)  # ends 2026-01-31
    result = F.train_and_evaluate(daily, ["linear"], 3, 3, 1, 0.8, 1)
    fc = result["forecast"]
    assert sorted(fc.month.unique()) == ["2026-02", "2026-03", "2026-04"]
    assert len(fc) == 3 * 6
    assert (fc.lo <= fc.forecast).all() and (fc.forecast <= fc.hi).all()


def test_growth_is_extrapolated_not_flattened():
    daily = _daily(growth=0.05)
    result = F.train_and_evaluate(daily, ["xgboost"], 3, 3, 1, 0.8, 1)
    h = result["holdout"]
    assert abs(h.forecast.sum() / h.actual.sum() - 1) < 0.05


def test_adjust_for_anomalies_replaces_only_flagged_cells():
    daily = _daily(days=60)
    day = daily.day.iloc[10]
    cells = daily.assign(expected=1.0, is_anomaly=False)
    cells.loc[(cells.day == day) & (cells.service == "BigQuery") & (cells.project_id == "p2"), "is_anomaly"] = True
    out = F.adjust_for_anomalies(daily, cells)
    changed = out.net_cost.to_numpy() != daily.net_cost.to_numpy()
    assert changed.sum() == 1
    assert out.loc[changed, "net_cost"].iloc[0] == 1.0
    pd.testing.assert_frame_equal(F.adjust_for_anomalies(daily, None), daily.assign(day=pd.to_datetime(daily.day)))


def test_a_transient_rise_flagged_as_anomaly_is_not_extrapolated():
    daily = _daily(growth=0.0)
    panel = F.SeriesPanel.from_daily(daily)
    cutoff = panel.days[F.month_end_index(panel.days, 3)]  # the last day the holdout model sees
    rise = (daily.day > cutoff - pd.Timedelta(days=20)) & (daily.day <= cutoff) & (daily.project_id == "p3")
    raised = daily.assign(net_cost=np.where(rise, daily.net_cost * 2.5, daily.net_cost))
    flagged = raised.assign(expected=daily.net_cost, is_anomaly=rise)
    plain = F.train_and_evaluate(raised, ["linear"], 3, 3, 1, 0.8, 1)["metrics"]["forecast_accuracy"]
    adjusted = F.train_and_evaluate(raised, ["linear"], 3, 3, 1, 0.8, 1, flagged)["metrics"]["forecast_accuracy"]
    assert adjusted > plain + 0.05
    assert adjusted > 0.95


def test_too_little_history_is_a_clear_error():
    with pytest.raises(ValueError, match="not enough history"):
        F.CostForecaster("linear", 1, 93).fit(F.SeriesPanel.from_daily(_daily(days=100)))
