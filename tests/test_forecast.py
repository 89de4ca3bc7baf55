"""The forecaster on synthetic series whose future is known."""

import re
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from finops_ml.config import BudgetConfig
from finops_ml.errors import InsufficientData
from finops_ml.models import budget as B
from finops_ml.models import forecast as F

FOCUS_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "focus-1.0-sample" / "focus_sample_1000.csv"

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
    # The naive forecasts and the ensemble (the model and last month repeated) are always candidates.
    bt = m["backtest_accuracy"]
    assert set(bt) == {model, "naive_last_month", "seasonal_naive", "ensemble"}
    assert m["ensemble_members"] == [model, "naive_last_month"]
    # the ensemble, unless a single candidate is clearly better on the backtest
    best_single = max(set(bt) - {"ensemble"}, key=bt.get)
    assert m["model"] == (best_single if bt[best_single] > bt["ensemble"] + F.SELECTION_MARGIN else "ensemble")
    assert m["candidates"][model]["accuracy"] > 0.95, m
    h = result["holdout"]
    assert (h.lo < h.forecast).all() and (h.forecast < h.hi).all()


def test_forecast_covers_exactly_the_next_months_for_every_series():
    daily = _daily(days=396)  # ends 2026-01-31
    result = F.train_and_evaluate(daily, ["linear"], 3, 3, 1, 0.8, 1)
    fc = result["forecast"]
    assert sorted(fc.month.unique()) == ["2026-02", "2026-03", "2026-04"]
    assert len(fc) == 3 * 6
    assert (fc.lo < fc.forecast).all() and (fc.forecast < fc.hi).all()


@pytest.mark.slow
def test_growth_is_extrapolated_not_flattened():
    daily = _daily(growth=0.05)
    result = F.train_and_evaluate(daily, ["xgboost"], 3, 3, 1, 0.8, 1)
    h = result["holdout"]
    assert abs(h.forecast.sum() / h.actual.sum() - 1) < 0.05
    assert result["metrics"]["candidates"]["xgboost"]["accuracy"] > result["metrics"]["baselines"][
        "naive_last_month"] + 0.03  # a month behind on 5% a month growth


def test_too_little_history_is_a_clear_error():
    with pytest.raises(InsufficientData, match="needs at least 150 days .* holds 100 days"):
        F.CostForecaster("linear", 1, 93).fit(F.SeriesPanel.from_daily(_daily(days=100)))
    needed = F.history_needed(3, 3)
    with pytest.raises(InsufficientData) as err:
        F.train_and_evaluate(_daily(days=250), ["linear"], 3, 3, 3, 0.8, 1)
    message = str(err.value)
    assert f"needs at least {needed} days of daily cost history" in message and "holds 250 days" in message
    assert message.endswith(".") and ". " not in message  # one sentence
    # One month (what a FOCUS sample holds) and no data at all: the same kind of answer, not a pandas error.
    with pytest.raises(InsufficientData, match="holds 30 days"):
        F.train_and_evaluate(_daily(days=30), ["linear"], 3, 3, 3, 0.8, 1)
    with pytest.raises(InsufficientData, match="holds none"):
        F.train_and_evaluate(_daily(days=30).iloc[:0], ["linear"], 3, 3, 3, 0.8, 1)


@pytest.mark.skipif(not FOCUS_SAMPLE.exists(), reason="the FOCUS sample is not in ../shared/data")
def test_the_one_month_focus_sample_says_how_much_history_the_forecast_needs(tmp_path):
    from finops_ml.config import Config
    from finops_ml.data.ingest import ingest
    from finops_ml.data.warehouse import export_feature_view
    from finops_ml.training.steps import train_forecast_step

    ingest(str(FOCUS_SAMPLE), tmp_path / "events")
    export_feature_view("daily_cost", tmp_path / "events" / "events.parquet", tmp_path / "daily.parquet")
    pattern = r"^The cost forecast needs at least \d+ days .* the data holds \d+ days \(\d{4}-\d\d-\d\d to .*\)\.$"
    result = train_forecast_step(str(tmp_path / "daily.parquet"), Config(), str(tmp_path / "m"), str(tmp_path / "e"))
    assert result["trained"] is False and result["passed"] is False  # the run carries on; nothing is registered
    assert re.match(pattern, result["not_trained_reason"]), result["not_trained_reason"]


@pytest.fixture(scope="module")
def two_models():
    """Two candidates and their ensemble on 396 days (ends 2026-01-31), with an organisation budget that the
    forecast must cross, one it must not, and one for a project the data does not hold."""
    budgets = [BudgetConfig(name="tight", monthly_usd=20000.0), BudgetConfig(name="loose", monthly_usd=1e6),
               BudgetConfig(name="ghost", scope={"project_id": "p9"}, monthly_usd=10.0),
               BudgetConfig(name="bq-p1", scope={"service": "BigQuery", "project_id": "p1"}, monthly_usd=1.0)]
    return F.train_and_evaluate(_daily(days=396), ["linear", "xgboost"], 3, 3, 2, 0.8, 1, budgets=budgets)


@pytest.mark.slow
def test_daily_and_monthly_horizons_with_two_sided_intervals(two_models):
    r = two_models
    daily, monthly = r["forecast_daily"], r["forecast_monthly"]
    assert daily.day.min() == pd.Timestamp("2026-02-01") and daily.day.max() == pd.Timestamp("2026-04-30")
    assert len(daily) == 6 * 89 and daily.groupby(["service", "project_id"]).size().eq(89).all()
    assert (daily.lo < daily.yhat).all() and (daily.yhat < daily.hi).all() and (daily.lo >= 0).all()
    assert set(monthly.level) == {"series", "service", "project", "total"}
    assert monthly.groupby("level").size().to_dict() == {"series": 18, "service": 6, "project": 9, "total": 3}
    assert (monthly.lo < monthly.forecast).all() and (monthly.forecast < monthly.hi).all()
    # Every level adds up to the same monthly total as the daily forecast.
    per_month = daily.assign(month=daily.day.dt.strftime("%Y-%m")).groupby("month").yhat.sum()
    for level, g in monthly.groupby("level"):
        np.testing.assert_allclose(g.groupby("month").forecast.sum().to_numpy(), per_month.to_numpy(), rtol=1e-9)
    # A total's interval is relatively narrower than its parts' (errors partly cancel).
    width = (monthly.hi - monthly.lo) / monthly.forecast
    assert width[monthly.level == "total"].mean() < width[monthly.level == "series"].mean()
    # The naive forecasts and the ensemble were candidates, and every candidate is scored on the holdout.
    m = r["metrics"]
    assert set(m["candidates"]) == {"linear", "xgboost", "naive_last_month", "seasonal_naive", "ensemble"}
    assert m["forecast_accuracy"] == m["candidates"][m["model"]]["accuracy"]
    assert 0 < m["mase"] < 1  # a growing series: better than repeating the last week
    # Rolling holdout origins: the cutoff and every later month end before the data's last month.
    assert m["holdout_origins"] == ["2025-10-31", "2025-11-30", "2025-12-31"]
    assert m["backtest_origins"] == ["2025-09-30", "2025-08-31"]  # the month ends before the cutoff
    levels = r["holdout_levels"]
    assert levels[levels.level == "service"].groupby("origin").month.nunique().to_dict() == {
        "2025-10-31": 3, "2025-11-30": 2, "2025-12-31": 1}
    # The gate's figures are those of these cells, and the baselines are scored on exactly the same cells.
    svc = levels[levels.level == "service"]
    assert m["forecast_accuracy"] == pytest.approx(1 - (svc.actual - svc.forecast).abs().sum() / svc.actual.sum())
    assert m["forecast_interval_coverage"] == pytest.approx(((svc.lo <= svc.actual) & (svc.actual <= svc.hi)).mean())
    assert set(m["baselines"]) == {"naive_last_month", "seasonal_naive"}
    assert m["baselines"] == m["baselines_by_level"]["service"]
    assert {"forecast_accuracy_project", "forecast_accuracy_series"} <= set(m)


def test_conformal_intervals_cover_what_they_claim_on_known_noise():
    """Forecast = the true median; actual = median x lognormal(0, sigma): 80% intervals must hold 80% of new
    draws, two-sided around the point."""
    rng = np.random.default_rng(3)
    days = pd.date_range("2026-01-01", periods=90, freq="D")

    def window(sigma):
        n = 200
        mean = np.repeat(rng.uniform(10, 100, n), 90)
        return pd.DataFrame({"origin": "2025-12-31", "service": np.repeat([f"s{i % 10}" for i in range(n)], 90),
                             "project_id": np.repeat([f"p{i}" for i in range(n)], 90), "day": np.tile(days, n),
                             "month": np.tile(days.strftime("%Y-%m"), n), "step": np.tile(days.month, n),
                             "forecast": mean, "actual": mean * rng.lognormal(0, sigma, n * 90)})

    cal = F.Calibration.from_windows([window(0.2) for _ in range(3)], 0.8)
    new = window(0.2)
    lo, hi = cal.factors("series", new.step, daily=True)
    assert (lo < 1).all() and (hi > 1).all()
    covered = ((new.actual >= new.forecast * lo) & (new.actual <= new.forecast * hi)).mean()
    assert 0.78 < covered < 0.82
    np.testing.assert_allclose(np.log(hi[0]), 0.2 * 1.2816, rtol=0.05)  # the normal's 90% quantile
    np.testing.assert_allclose(np.log(lo[0]), -0.2 * 1.2816, rtol=0.05)
    levels = F.with_intervals(F.by_level(new), cal)
    series = levels[levels.level == "series"]
    assert 0.75 < ((series.actual >= series.lo) & (series.actual <= series.hi)).mean() < 0.85
    # Far wider noise in the new data is not covered: the test can fail.
    wide = window(0.6)
    lo, hi = cal.factors("series", wide.step, daily=True)
    assert ((wide.actual >= wide.forecast * lo) & (wide.actual <= wide.forecast * hi)).mean() < 0.5


def test_intervals_are_two_sided_around_the_point_whatever_the_backtest_bias():
    """Backtest actuals all about 10% above the forecast used to give an interval starting at the point. The
    point is the median of the predictive distribution: the errors give the interval's spread, not its place."""
    rng = np.random.default_rng(0)
    cal = F.Calibration(0.8, {"service": {1: np.log(1.1) + rng.normal(0, 0.02, 50)}}, {})
    lo, hi = cal.factors("service", [1])
    assert lo[0] < 1.0 < hi[0]
    assert np.log(hi[0]) == pytest.approx(-np.log(lo[0]), rel=0.3) and np.log(hi[0]) < 0.05
    d = cal.predictive("service", 1)
    assert float(d.cdf(0.0)) == pytest.approx(0.5, abs=1e-9)
    assert d.cdf(np.log(hi))[0] - d.cdf(np.log(lo))[0] == pytest.approx(0.8, abs=1e-9)
    # A horizon with few errors (a total: one per window) pools the level's horizons, wider by sqrt(step).
    cal = F.Calibration(0.8, {"total": {1: rng.normal(0, 0.1, 9), 2: rng.normal(0, 0.1, 9)}}, {})
    lo1, hi1 = cal.factors("total", [1])
    lo3, hi3 = cal.factors("total", [3])
    assert np.log(hi3 / lo3)[0] == pytest.approx(np.sqrt(3) * np.log(hi1 / lo1)[0], rel=1e-6)


def _wednesdays(days=457, seed=0):
    """Costs only on Wednesdays at a constant level per series: a month's cost is its count of Wednesdays,
    which the last week repeated knows and a daily rate does not."""
    rng = np.random.default_rng(seed)
    idx = pd.date_range("2025-01-01", periods=days, freq="D")
    rows = [pd.DataFrame({"day": idx, "service": f"svc-{i}", "project_id": "p",
                          "net_cost": np.where(idx.dayofweek == 2, rng.uniform(50, 500), 0.0)
                          * rng.lognormal(0, 0.01, days)}) for i in range(6)]
    return pd.concat(rows, ignore_index=True)


def test_a_naive_forecast_is_selected_when_it_is_best_and_then_served(tmp_path):
    from finops_ml.serving import predictors, schemas

    result = F.train_and_evaluate(_wednesdays(), ["linear"], 3, 3, 2, 0.8, 1)
    m = result["metrics"]
    assert m["model"] == "seasonal_naive", m["backtest_accuracy"]
    assert m["backtest_accuracy"]["seasonal_naive"] > m["backtest_accuracy"]["ensemble"] + F.SELECTION_MARGIN
    assert m["forecast_accuracy"] > 0.97 and m["baselines"]["seasonal_naive"] > 0.97
    assert m["baselines"]["naive_last_month"] < m["forecast_accuracy"] - 0.02
    model = result["model"]
    assert isinstance(model, F.CostForecaster) and model.model == "seasonal_naive"
    # The stored naive model is served like any other.
    joblib.dump(model, tmp_path / "model.joblib")
    result["forecast"].to_csv(tmp_path / "forecast.csv", index=False)
    served = predictors.ForecastPredictor(tmp_path)
    panel = F.SeriesPanel.from_daily(_wednesdays())
    inst = schemas.ForecastInstance(service="svc-0", project_id="p", history=panel.values[0, -95:].tolist(),
                                    end_date=panel.days[-1].date())
    library = F.monthly(model.predict(panel, days=61), "forecast", by=("service", "project_id"))
    months = served.forecast_history(inst, 2)["months"]
    assert len(months) == 2
    for row in months:
        assert row["forecast"] == pytest.approx(library[("svc-0", "p", row["month"])], rel=1e-12)


def _cents_export(days=457, services=23, scale=1.0, seed=5):
    """Another export's shape: one project, 23 services costing a few cents a day (some billed only now and then),
    15 months, every series as long as the data."""
    rng = np.random.default_rng(seed)
    idx = pd.date_range("2025-04-01", periods=days, freq="D")
    t = np.arange(days)
    rows = []
    for i in range(services):
        base = rng.uniform(0.005, 0.08)
        trend = np.exp(rng.normal(0, 0.02) * t / 30.4)
        weekly = np.where(idx.dayofweek >= 5, rng.uniform(0.3, 1.0), 1.0)
        cost = base * trend * weekly * rng.lognormal(0, 0.15, days)
        if i % 5 == 0:  # billed on about half the days
            cost = np.where(rng.random(days) < 0.5, 0.0, 2 * cost)
        rows.append(pd.DataFrame({"day": idx, "service": f"Service {i:02d}", "project_id": "only-project",
                                  "net_cost": np.round(cost, 6) * scale}))
    return pd.concat(rows, ignore_index=True)


def test_an_export_of_cents_trains_and_evaluates_like_the_same_export_in_dollars():
    cents = _cents_export()
    assert len(cents) == 23 * 457 and cents.groupby("service").net_cost.mean().max() < 0.2
    small = F.train_and_evaluate(cents, ["xgboost"], 3, 3, 3, 0.8, 1)
    m = small["metrics"]
    assert len(m["backtest_origins"]) == 3 and len(m["holdout_origins"]) == 3
    assert m["forecast_accuracy"] > 0.85 and np.isfinite(m["forecast_interval_coverage"])
    assert m["forecast_accuracy"] >= max(m["baselines"].values()) - 0.03
    assert small["forecast"].service.nunique() == 23 and (small["forecast"].forecast > 0).all()
    # Nothing depends on the cost scale: 100,000 times the cost gives the same figures and scaled forecasts.
    big = F.train_and_evaluate(_cents_export(scale=1e5), ["xgboost"], 3, 3, 3, 0.8, 1)
    assert big["metrics"]["model"] == m["model"]
    for key in ("forecast_accuracy", "forecast_interval_coverage", "baselines"):
        assert big["metrics"][key] == pytest.approx(m[key], rel=1e-6), key
    np.testing.assert_allclose(big["forecast"].forecast, small["forecast"].forecast * 1e5, rtol=1e-6)


def test_holdout_coverage_is_near_nominal_on_series_with_known_noise():
    """Stationary series with lognormal monthly shocks and daily noise: the gate's metric, the holdout coverage
    of the 80% interval at service x month, lands near 80%."""
    rng = np.random.default_rng(11)
    idx = pd.date_range("2025-01-01", periods=457, freq="D")
    month = np.asarray(idx.year * 12 + idx.month)
    rows = []
    for i in range(40):
        shock = rng.lognormal(0, 0.08, month.max() - month.min() + 1)[month - month.min()]
        cost = rng.uniform(20, 200) * shock * rng.lognormal(0, 0.1, len(idx))
        rows.append(pd.DataFrame({"day": idx, "service": f"s{i}", "project_id": "p", "net_cost": cost}))
    m = F.train_and_evaluate(pd.concat(rows), ["linear"], 3, 3, 3, 0.8, 1)["metrics"]
    assert 0.70 <= m["forecast_interval_coverage"] <= 0.92, m["candidates"]


def test_budget_crossing_day_and_probability_on_a_constructed_case():
    days = pd.date_range("2026-04-16", "2026-05-31", freq="D")
    fc = pd.DataFrame({"day": days, "service": "Compute Engine", "project_id": "p1", "yhat": 100.0})
    history = pd.DataFrame({"day": pd.date_range("2026-04-01", "2026-04-15"), "service": "Compute Engine",
                            "project_id": "p1", "net_cost": 100.0})  # 1,500 spent by April 15
    sigma = 0.1
    e = np.random.default_rng(0).normal(0, sigma, 4000)
    cal = F.Calibration(0.8, {"series": {1: e, 2: e}}, {})
    budgets = [BudgetConfig(name="b", scope={"service": "Compute Engine", "project_id": "p1"}, monthly_usd=2790.0,
                            alert_probability=0.6),
               BudgetConfig(name="unknown", scope={"project_id": "nope"}, monthly_usd=5.0)]
    out = B.budget_alerts(budgets, fc, history, cal, {"Compute Engine"}, {"p1"})
    april, may = out[(out.budget == "b") & (out.month == "2026-04")].iloc[0], out[(out.budget == "b")].iloc[1]
    assert april.actual_to_date_usd == 1500
    assert april.expected_usd == 3000  # 1,500 + 15 days x 100
    assert april.expected_cross_day == "2026-04-28"  # 1,500 + 13 x 100 = 2,800 >= 2,790
    assert april.early_cross_day == "2026-04-27"  # at the 90% quantile, ~113 a day: 1,500 + 12 x 113 > 2,790
    assert april.lo_usd == pytest.approx(1500 + 1500 * np.exp(-1.2816 * sigma), rel=0.01)
    # P(1500 + 1500 e^x > 2790) = P(x > log(1290/1500)) = Phi(log(1500/1290) / sigma)
    from scipy.stats import norm
    assert april.p_exceed == pytest.approx(norm.cdf(np.log(1500 / 1290) / sigma), abs=0.03)
    assert april.alert
    assert may.expected_usd == 3100 and may.expected_cross_day == "2026-05-28"
    assert may.p_exceed == pytest.approx(norm.cdf(np.log(3100 / 2790) / sigma), abs=0.03)
    ghost = out[out.budget == "unknown"]
    assert len(ghost) == 2 and (ghost.expected_usd == 0).all() and (~ghost.alert).all()
    assert ghost.warning.str.contains("project 'nope' has no cost").all()


def test_budget_expected_spend_and_probability_come_from_one_distribution():
    """Skewed backtest errors (rare large overruns): smoothed as they were, they put P(exceed) above 50% for a
    budget above the expected spend ("expected 307k < budget 335k, P(exceed) 51%, ALERT"). From one distribution
    whose median is the expected spend, an expected spend under the budget always means P(exceed) < 50%."""
    rng = np.random.default_rng(1)
    skewed = rng.exponential(0.15, 60) - 0.05  # median about +0.05, mean +0.10
    cal = F.Calibration(0.8, {"total": {1: skewed}}, {})
    fc = pd.DataFrame({"day": pd.date_range("2026-06-01", "2026-06-30"), "service": "s", "project_id": "p",
                       "yhat": 10.0})  # a forecast of 300
    empty = pd.DataFrame(columns=["day", "service", "project_id", "net_cost"])
    budgets = [BudgetConfig(name=f"b{v}", monthly_usd=float(v), alert_probability=0.5) for v in range(250, 400, 5)]
    out = B.budget_alerts(budgets, fc, empty, cal, {"s"}, {"p"})
    assert (out.expected_usd == 300).all()
    assert (out.lo_usd < out.expected_usd).all() and (out.expected_usd < out.hi_usd).all()
    assert ((out.expected_usd < out.budget_usd) == (out.p_exceed < 0.5)).all()
    assert ((out.expected_usd > out.budget_usd) == (out.p_exceed > 0.5)).all()
    assert (out.alert == (out.p_exceed >= 0.5)).all()
    assert out.set_index("budget").p_exceed["b300"] == pytest.approx(0.5, abs=1e-6)
    # The skew still shows where it should: the interval reaches further above the forecast than below it.
    row = out.iloc[0]
    assert row.hi_usd - row.expected_usd > row.expected_usd - row.lo_usd


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
    # Each row's expected spend, interval, P(exceed) and alert agree with each other.
    a = two_models["budget_alerts"]
    assert (a.lo_usd <= a.expected_usd).all() and (a.expected_usd <= a.hi_usd).all()
    assert not ((a.expected_usd < a.budget_usd) & (a.p_exceed > 0.5)).any()
    assert not ((a.expected_usd > a.budget_usd) & (a.p_exceed < 0.5)).any()
    assert (a.alert == (a.p_exceed >= a.alert_probability)).all()


def test_holdout_score_reproduces_the_models_own_holdout_accuracy_and_scores_it_on_a_later_holdout():
    # Re-scoring a champion on a challenger's holdout goes through the very evaluation the challenger went through.
    daily = _daily(days=400)
    result = F.train_and_evaluate(daily, ["linear"], 3, 3, 1, 0.8, 1)
    m = result["metrics"]
    own = F.holdout_score(result["model"], daily, 3, 3, 1)
    assert own["forecast_accuracy"] == pytest.approx(m["forecast_accuracy"], abs=1e-12)
    assert (own["holdout_start"], own["holdout_end"]) == (m["holdout_start"], m["holdout_end"])
    later = F.holdout_score(result["model"], _daily(days=431), 3, 3, 1)
    assert later["holdout_end"] > m["holdout_end"] and 0.5 < later["forecast_accuracy"] <= 1.0
