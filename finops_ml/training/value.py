"""The value report: the business case of the platform from one measured run (OUT/value.json, the dashboard's
"Value" section).

Every figure is a dict {value, unit, source}: `source` names the run's field it was computed from (a file of the
run and its column, a metric of summary.json) or the config key (`value.*`) it assumes, so that a reader can
trace it. What is measured:

- anomalies: the $ impact of the incidents found, and how many days before the monthly bill review (value.
  bill_review_day of the next month) and before a daily batch detector (value.batch_alert_days) they were
  raised; the $ of upward incidents that accrued after their alert and before that review is what acting on the
  alert saves (only the days the data shows: an incident is not assumed to go on);
- labelling: resources the labeler labelled x value.minutes_per_resource, and the label compliance gained;
- forecast: the holdout's absolute error in $ against the naive plan's (seasonal naive) on the same cells;
- cost: the OPEX lines of value.opex; ROI over a year and payback in months.
"""

from __future__ import annotations

import math

import pandas as pd

from finops_ml.config import ValueConfig


def _fig(value, unit: str, source: str) -> dict:
    if isinstance(value, float):
        value = round(value, 4 if unit in ("share of cost", "ratio") else 2) if math.isfinite(value) else None
    return {"value": value, "unit": unit, "source": source}


def anomaly_value(incidents: pd.DataFrame, cells_days: pd.Series, cfg: ValueConfig) -> dict:
    """Days earlier than the bill review and than a batch detector, and the $ an alert lets a team save."""
    if incidents.empty:
        months = 0.0
    else:
        days = pd.to_datetime(cells_days)
        months = max((days.max() - days.min()).days + 1, 1) / 30.4375
    up = incidents[incidents["direction"] == "up"] if len(incidents) else incidents
    earlier, avoidable = [], 0.0
    for inc in incidents.itertuples():
        start = pd.Timestamp(inc.start)
        raised = start + pd.Timedelta(days=cfg.stream_alert_days)
        review = (start + pd.offsets.MonthBegin(1)) + pd.Timedelta(days=cfg.bill_review_day - 1)
        earlier.append((review - raised).days)
        if inc.direction == "up" and inc.days > 1:
            # the incident's average daily excess on the days after the alert and up to the review
            after = max(0, min((pd.Timestamp(inc.end) - raised).days, (review - raised).days))
            avoidable += inc.impact_usd / inc.days * min(after, inc.days - 1)
    src = "OUT/summary.json anomaly_incidents (cells.parquet: is_anomaly, merged into incidents)"
    return {
        "incidents": _fig(int(len(incidents)), "incidents", src),
        "impact_up_usd": _fig(float(up["impact_usd"].sum()) if len(up) else 0.0, "USD",
                              src + ": impact_usd of direction up"),
        "impact_down_usd": _fig(float(incidents.loc[incidents["direction"] == "down", "impact_usd"].sum())
                                if len(incidents) else 0.0, "USD", src + ": impact_usd of direction down"),
        "days_earlier_than_bill_review": _fig(float(pd.Series(earlier).median()) if earlier else None, "days (median)",
                                              src + ": start + value.stream_alert_days vs value.bill_review_day "
                                              "of the next month"),
        "days_earlier_than_batch": _fig(float(cfg.batch_alert_days - cfg.stream_alert_days), "days",
                                        "value.batch_alert_days - value.stream_alert_days"),
        "avoidable_usd": _fig(avoidable, "USD", src + ": impact_usd per day of up incidents, days after the alert "
                              "up to the bill review"),
        "avoidable_usd_per_month": _fig(avoidable / months if months else 0.0, "USD/month",
                                        "avoidable_usd / months of anomaly_cells (cells.parquet day range)"),
        "months_scored": _fig(months, "months", "cells.parquet: day range / 30.44"),
    }


def labelling_value(labeler_metrics: dict, resources_labelled: int, cfg: ValueConfig) -> dict:
    hours = resources_labelled * cfg.minutes_per_resource / 60.0
    before, after = labeler_metrics.get("label_compliance_before"), labeler_metrics.get("label_compliance_after")
    return {
        "resources_labelled": _fig(int(resources_labelled), "resources",
                                   "labelled.parquet: resources with any *_applied true"),
        "hours_saved": _fig(hours, "hours", "resources_labelled x value.minutes_per_resource / 60"),
        "usd_saved": _fig(hours * cfg.hourly_rate_usd, "USD (one-off)", "hours_saved x value.hourly_rate_usd"),
        "compliance_before": _fig(before, "share of cost", "summary.json metrics.resource-labeler."
                                  "label_compliance_before"),
        "compliance_after": _fig(after, "share of cost", "summary.json metrics.resource-labeler."
                                 "label_compliance_after"),
        "compliance_gained": _fig(after - before if before is not None and after is not None else None,
                                  "share of cost", "label_compliance_after - label_compliance_before"),
    }


def forecast_value(holdout: pd.DataFrame | None, forecast_metrics: dict) -> dict:
    """The holdout's absolute error in $ (service x month cells) of the model and of the naive plans."""
    if holdout is None or holdout.empty or "actual" not in holdout:
        return {}
    actual = float(holdout["actual"].abs().sum())
    model = float((holdout["actual"] - holdout["forecast"]).abs().sum())
    months = holdout.groupby([c for c in ("origin", "month") if c in holdout]).ngroups or 1
    out = {"holdout_actual_usd": _fig(actual, "USD", "forecast holdout.parquet: sum |actual| (service x month)"),
           "model_error_usd": _fig(model, "USD", "holdout.parquet: sum |actual - forecast|"),
           "model_error_usd_per_month": _fig(model / months, "USD/month", f"model_error_usd / {months} "
                                             "holdout months")}
    for name, accuracy in (forecast_metrics.get("baselines") or {}).items():
        naive = (1.0 - accuracy) * actual  # accuracy = 1 - WAPE on the same cells
        out[f"{name}_error_usd"] = _fig(naive, "USD", f"(1 - summary.json metrics.cost-forecast.baselines.{name})"
                                        " x holdout_actual_usd")
        out[f"saved_vs_{name}_usd_per_month"] = _fig((naive - model) / months, "USD/month",
                                                     f"({name}_error_usd - model_error_usd) / {months}")
    return out


def value_report(summary: dict, incidents: pd.DataFrame, cells_days: pd.Series, holdout: pd.DataFrame | None,
                 resources_labelled: int, cfg: ValueConfig) -> dict:
    metrics = summary.get("metrics", {})
    anomalies = anomaly_value(incidents, cells_days, cfg)
    labels = labelling_value(metrics.get("resource-labeler", {}), resources_labelled, cfg)
    fc = forecast_value(holdout, metrics.get("cost-forecast", {}))
    opex = sum(line.monthly_usd for line in cfg.opex)
    monthly = anomalies["avoidable_usd_per_month"]["value"] or 0.0
    one_off = labels["usd_saved"]["value"] or 0.0
    year_cost = 12 * opex + cfg.setup_usd
    year_benefit = 12 * monthly + one_off
    net = monthly - opex
    remaining = cfg.setup_usd - one_off
    payback = 0.0 if remaining <= 0 else (remaining / net if net > 0 else None)
    return {
        "run_id": summary.get("run_id"),
        "data_window": summary.get("data_window"),
        "anomalies": anomalies,
        "labelling": labels,
        "forecast": fc,
        "cost": {
            "opex_lines": [{"name": line.name, "monthly_usd": line.monthly_usd} for line in cfg.opex],
            "opex_usd_per_month": _fig(float(opex), "USD/month", "sum of value.opex[].monthly_usd"),
            "setup_usd": _fig(float(cfg.setup_usd), "USD (one-off)", "value.setup_usd"),
        },
        "roi": {
            "benefit_usd_per_month": _fig(monthly, "USD/month", "anomalies.avoidable_usd_per_month (the forecast's "
                                          "$ error is shown, not counted: its worth depends on what is planned "
                                          "with it)"),
            "net_usd_per_month": _fig(net, "USD/month", "benefit_usd_per_month - opex_usd_per_month"),
            "first_year_roi": _fig((year_benefit - year_cost) / year_cost if year_cost else None, "ratio",
                                   "(12 x benefit_usd_per_month + labelling.usd_saved - 12 x opex - setup_usd) / "
                                   "(12 x opex + setup_usd)"),
            "payback_months": _fig(payback, "months", "(setup_usd - labelling.usd_saved) / net_usd_per_month; "
                                   "null: never at this rate"),
        },
    }
