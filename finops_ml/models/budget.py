"""Budget alerts: for each budget and forecast month, the expected spend, P(spend > budget) and the day the
cumulative spend is expected to cross the budget.

The predictive distribution of a month's spend is the point forecast at the budget's level (one series, a
service, a project or the whole organisation) times exp(E), E the forecast's calibrated distribution of log
ratios actual / forecast at that level and horizon month (`finops_ml.models.forecast.Calibration`, whose median
is 0). The expected spend is its median, the interval its quantiles and P(exceed) its tail: one distribution, so
an expected spend under the budget always comes with P(exceed) < 50%.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

ALL = "ALL"  # the aggregated dimension in the forecast's totals (service or project_id)
COLUMNS = ["budget", "service", "project_id", "month", "budget_usd", "actual_to_date_usd", "expected_usd", "lo_usd",
           "hi_usd", "p_exceed", "alert_probability", "alert", "expected_cross_day", "early_cross_day", "warning"]


def level_of(service: str | None, project_id: str | None) -> str:
    if service and project_id:
        return "series"
    return "service" if service else "project" if project_id else "total"


def exceed_probability(forecast: float, budget: float, predictive, already: float = 0.0) -> float:
    """P(already + forecast * exp(E) > budget), E drawn from `predictive` (a forecast.Predictive)."""
    remaining = budget - already
    if remaining <= 0:
        return 1.0
    if forecast <= 0:
        return 0.0
    return float(predictive.sf(np.log(remaining / forecast))[()])


def _cross_day(days: pd.Series, daily: np.ndarray, already: float, budget: float) -> str | None:
    crossed = np.nonzero(already + np.cumsum(daily) >= budget)[0]
    return str(pd.Timestamp(days.iloc[crossed[0]]).date()) if len(crossed) else None


def budget_alerts(budgets: list, daily_forecast: pd.DataFrame, history: pd.DataFrame, calibration,
                  known_services: set[str], known_projects: set[str]) -> pd.DataFrame:
    """One row per (budget, forecast month).

    daily_forecast: day, service, project_id, yhat (the model's daily forecast for the days after the history's
    last day, before calibration); history: day, service, project_id, net_cost (the month-to-date actuals of a
    month the data ends inside); calibration: a forecast.Calibration (its `predictive(level, step)` and
    `interval`); known_services / known_projects: what the data holds.
    A budget whose service or project has no cost in the data gets rows with a warning, not an error.
    """
    rows = []
    if daily_forecast.empty:
        return pd.DataFrame(columns=COLUMNS)
    fc = daily_forecast.assign(day=pd.to_datetime(daily_forecast["day"]))
    fc["month"] = fc["day"].dt.strftime("%Y-%m")
    hist = history.assign(day=pd.to_datetime(history["day"]))
    hist["month"] = hist["day"].dt.strftime("%Y-%m")
    months = sorted(fc["month"].unique())
    alpha = (1.0 - calibration.interval) / 2.0
    for b in budgets:
        service, project = b.scope.service, b.scope.project_id
        warnings = []
        if service and service not in known_services:
            warnings.append(f"service '{service}' has no cost in the data")
        if project and project not in known_projects:
            warnings.append(f"project '{project}' has no cost in the data")
        mask = np.ones(len(fc), bool)
        hmask = np.ones(len(hist), bool)
        if service:
            mask &= (fc["service"] == service).to_numpy()
            hmask &= (hist["service"] == service).to_numpy()
        if project:
            mask &= (fc["project_id"] == project).to_numpy()
            hmask &= (hist["project_id"] == project).to_numpy()
        scoped = fc[mask].groupby("day", as_index=False)["yhat"].sum()
        scoped["month"] = scoped["day"].dt.strftime("%Y-%m")
        level = level_of(service, project)
        for h, month in enumerate(months, start=1):
            predictive = calibration.predictive(level, h)
            lo_f, hi_f = np.exp(predictive.quantile([alpha, 1.0 - alpha]))
            in_month = scoped[scoped["month"] == month]
            already = float(hist.loc[hmask & (hist["month"] == month).to_numpy(), "net_cost"].sum())
            forecast = float(in_month["yhat"].sum())
            p = exceed_probability(forecast, b.monthly_usd, predictive, already)
            path = in_month["yhat"].to_numpy()
            rows.append({
                "budget": b.name, "service": service or ALL, "project_id": project or ALL, "month": month,
                "budget_usd": b.monthly_usd, "actual_to_date_usd": round(already, 2),
                "expected_usd": round(already + forecast, 2), "lo_usd": round(already + forecast * lo_f, 2),
                "hi_usd": round(already + forecast * hi_f, 2), "p_exceed": round(p, 4),
                "alert_probability": b.alert_probability, "alert": bool(p >= b.alert_probability),
                "expected_cross_day": _cross_day(in_month["day"], path, already, b.monthly_usd),
                # The day the spend crosses the budget if it runs at the interval's upper bound.
                "early_cross_day": _cross_day(in_month["day"], path * hi_f, already, b.monthly_usd),
                "warning": "; ".join(warnings) + ("; its forecast is $0" if warnings else ""),
            })
    return pd.DataFrame(rows, columns=COLUMNS)
