"""The forecaster on synthetic series whose future is known."""

import numpy as np
import pandas as pd
import pytest

from finops_ml.config import BudgetConfig
from finops_ml.models import budget as B
from finops_ml.models import forecast as F

pytestmark = pytest.mark.unit


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


@pytest.mark.parametrize("model", ["linear", "random_forest", pytest.param("xgboost", marks=pytest.mark.slow)])
def test_each_model_forecasts_a_regular_series_closely(model):
    daily = _daily()
    result = F.train_and_evaluate(daily, [model], holdout_months=3, horizon_months=3, backtest_origins=1,
                                  interval=0.8, seed=1)
    m = result["metrics"]
    assert m["model"] == model
    assert m["forecast_accuracy"] > 0.95, m
    h = result["holdout"]
    assert (h.lo <= h.forecast).all() and (h.forecast <= h.hi).all()


def test_forecast_covers_exactly_the_next_months_for_every_series():
    daily = _daily(days=396)  # ends 2026-01-31
    result = F.train_and_evaluate(daily, ["linear"], 3, 3, 1, 0.8, 1)
    fc = result["forecast"]
    assert sorted(fc.month.unique()) == ["2026-02", "2026-03", "2026-04"]
    assert len(fc) == 3 * 6
    assert (fc.lo <= fc.forecast).all() and (fc.forecast <= fc.hi).all()


@pytest.mark.slow
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


@pytest.fixture(scope="module")
def two_models():
    """Two candidates and their ensemble on 396 days (ends 2026-01-31), with an organisation budget that the
    forecast must cross, one it must not, and one for a project the data does not hold."""
    budgets = [BudgetConfig(name="tight", monthly_usd=20000.0), BudgetConfig(name="loose", monthly_usd=1e6),
               BudgetConfig(name="ghost", scope={"project_id": "p9"}, monthly_usd=10.0),
               BudgetConfig(name="bq-p1", scope={"service": "BigQuery", "project_id": "p1"}, monthly_usd=1.0)]
    return F.train_and_evaluate(_daily(days=396), ["linear", "xgboost"], 3, 3, 2, 0.8, 1, budgets=budgets)


@pytest.mark.slow
def test_daily_and_monthly_horizons_with_monotone_intervals(two_models):
    r = two_models
    daily, monthly = r["forecast_daily"], r["forecast_monthly"]
    assert daily.day.min() == pd.Timestamp("2026-02-01") and daily.day.max() == pd.Timestamp("2026-04-30")
    assert len(daily) == 6 * 89 and daily.groupby(["service", "project_id"]).size().eq(89).all()
    assert (daily.lo <= daily.yhat).all() and (daily.yhat <= daily.hi).all() and (daily.lo >= 0).all()
    assert set(monthly.level) == {"series", "service", "project", "total"}
    assert monthly.groupby("level").size().to_dict() == {"series": 18, "service": 6, "project": 9, "total": 3}
    assert (monthly.lo <= monthly.forecast).all() and (monthly.forecast <= monthly.hi).all()
    # Every level adds up to the same monthly total as the daily forecast.
    per_month = daily.assign(month=daily.day.dt.strftime("%Y-%m")).groupby("month").yhat.sum()
    for level, g in monthly.groupby("level"):
        np.testing.assert_allclose(g.groupby("month").forecast.sum().to_numpy(), per_month.to_numpy(), rtol=1e-9)
    # A total's interval is relatively narrower than its parts' (errors partly cancel).
    width = (monthly.hi - monthly.lo) / monthly.forecast
    assert width[monthly.level == "total"].mean() < width[monthly.level == "series"].mean()
    # The ensemble was a candidate, and every candidate is scored on the holdout.
    m = r["metrics"]
    assert set(m["candidates"]) == {"linear", "xgboost", "ensemble"}
    assert m["forecast_accuracy"] == m["candidates"][m["model"]]["accuracy"]
    assert 0 < m["mase"] < 1  # a growing series: better than repeating the last week


def test_conformal_intervals_cover_what_they_claim_on_known_noise():
    """Forecast = the true mean; actual = mean x lognormal(0, sigma): 80% intervals must hold 80% of new draws."""
    rng = np.random.default_rng(3)
    days = pd.date_range("2026-01-01", periods=90, freq="D")

    def window(sigma):
        n = 200
        mean = np.repeat(rng.uniform(10, 100, n), 90)
        return pd.DataFrame({"service": np.repeat([f"s{i % 10}" for i in range(n)], 90),
                             "project_id": np.repeat([f"p{i}" for i in range(n)], 90), "day": np.tile(days, n),
                             "month": np.tile(days.strftime("%Y-%m"), n), "step": np.tile(days.month, n),
                             "forecast": mean, "actual": mean * rng.lognormal(0, sigma, n * 90)})

    cal = F.Calibration.from_windows([window(0.2) for _ in range(3)], 0.8)
    new = window(0.2)
    lo, hi = cal.daily_factors(new.step)
    covered = ((new.actual >= new.forecast * lo) & (new.actual <= new.forecast * hi)).mean()
    assert 0.78 < covered < 0.82
    np.testing.assert_allclose(np.log(hi[0]), 0.2 * 1.2816, rtol=0.05)  # the normal's 90% quantile
    levels = F.with_intervals(F.by_level(new), cal)
    series = levels[levels.level == "series"]
    assert 0.75 < ((series.actual >= series.lo) & (series.actual <= series.hi)).mean() < 0.85
    # Far wider noise in the new data is not covered: the test can fail.
    wide = window(0.6)
    lo, hi = cal.daily_factors(wide.step)
    assert ((wide.actual >= wide.forecast * lo) & (wide.actual <= wide.forecast * hi)).mean() < 0.5


def test_budget_crossing_day_and_probability_on_a_constructed_case():
    days = pd.date_range("2026-04-16", "2026-05-31", freq="D")
    fc = pd.DataFrame({"day": days, "service": "Compute Engine", "project_id": "p1", "yhat": 100.0})
    history = pd.DataFrame({"day": pd.date_range("2026-04-01", "2026-04-15"), "service": "Compute Engine",
                            "project_id": "p1", "net_cost": 100.0})  # 1,500 spent by April 15
    sigma = 0.1
    e = np.random.default_rng(0).normal(0, sigma, 4000)
    cal = {"series": {1: {"log_ratios": e, "lo_q": 0.9, "hi_q": 1.1}, 2: {"log_ratios": e, "lo_q": 0.9, "hi_q": 1.1}}}
    budgets = [BudgetConfig(name="b", scope={"service": "Compute Engine", "project_id": "p1"}, monthly_usd=2800.0,
                            alert_probability=0.6),
               BudgetConfig(name="unknown", scope={"project_id": "nope"}, monthly_usd=5.0)]
    out = B.budget_alerts(budgets, fc, history, cal, {"Compute Engine"}, {"p1"})
    april, may = out[(out.budget == "b") & (out.month == "2026-04")].iloc[0], out[(out.budget == "b")].iloc[1]
    assert april.actual_to_date_usd == 1500 and april.expected_usd == 3000  # 1,500 + 15 days x 100
    assert april.expected_cross_day == "2026-04-28"  # 1,500 + 13 x 100 = 2,800
    assert april.early_cross_day == "2026-04-27"  # at 110 a day: 1,500 + 12 x 110 = 2,820
    # P(1500 + 1500 e^x > 2800) = P(x > log(1300/1500)) = Phi(log(15/13) / sigma)
    from scipy.stats import norm
    assert april.p_exceed == pytest.approx(norm.cdf(np.log(15 / 13) / sigma), abs=0.03)
    assert april.alert
    assert may.expected_usd == 3100 and may.expected_cross_day == "2026-05-28"
    assert may.p_exceed == pytest.approx(norm.cdf(np.log(3100 / 2800) / sigma), abs=0.03)
    ghost = out[out.budget == "unknown"]
    assert len(ghost) == 2 and (ghost.expected_usd == 0).all() and (~ghost.alert).all()
    assert ghost.warning.str.contains("project 'nope' has no cost").all()


def test_budget_alerts_from_the_trained_forecast(two_models):
    alerts = two_models["budget_alerts"].set_index(["budget", "month"])
    assert len(alerts) == 4 * 3
    assert alerts.loc["tight"].alert.all() and (alerts.loc["tight"].p_exceed > 0.99).all()
    assert alerts.loc["tight"].expected_cross_day.notna().all()
    assert not alerts.loc["loose"].alert.any() and alerts.loc["loose"].expected_cross_day.isna().all()
    # The budget's expectation is the forecast at its level.
    total = two_models["forecast_monthly"].query("level == 'total'").set_index("month").forecast
    np.testing.assert_allclose(alerts.loc["loose"].expected_usd.to_numpy(), total.to_numpy(), atol=0.01)
    assert alerts.loc["ghost"].warning.str.contains("p9").all()
    assert alerts.loc["bq-p1"].expected_cross_day.eq(alerts.loc["bq-p1"].index.map(lambda m: f"{m}-01")).all()
    assert two_models["metrics"]["budget_alerts"] == 3 + 3
