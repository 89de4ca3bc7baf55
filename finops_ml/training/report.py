"""The run's report: `summary.json` for machines, `report.html` (with plots) for people."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from finops_ml.fileio import atomic_path, read_json  # noqa: E402
from finops_ml.models.catalogue import ANOMALY, FORECAST, LABELER, MODELS  # noqa: E402

GATE_ORDER = tuple(gate for spec in MODELS.values() for gate in spec.gates)


def build_summary(ingest_summary: dict, evaluations: dict[str, dict]) -> dict:
    gates = {}
    for evaluation in evaluations.values():
        gates.update(evaluation["gates"])
    labeler = evaluations[LABELER]["metrics"]
    windows = [e["data_window"] for e in evaluations.values() if e.get("data_window")]
    return {
        "gates": {g: gates[g] for g in GATE_ORDER if g in gates},
        "all_gates_passed": all(g["passed"] for g in gates.values()),
        # a model the data could not train: its one-sentence reason (it has no metrics and is not registered)
        "not_trained": {name: e["not_trained_reason"] for name, e in evaluations.items() if not e.get("trained", True)},
        "label_compliance_before": labeler.get("label_compliance_before"),
        "rows": {"read": ingest_summary["read"], "ingested": ingest_summary["rows"],
                 "quarantined": ingest_summary["quarantined"], "duplicates": ingest_summary["duplicates"]},
        "reconciliation_diff": ingest_summary["reconciliation_diff"],
        "total_net_cost": ingest_summary["total_net_cost"],
        "metrics": {name: e["metrics"] for name, e in evaluations.items()},
        "data_window": ({"start": min(w["start"] for w in windows), "end": max(w["end"] for w in windows)}
                        if windows else None),
    }


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "<img src='data:image/png;base64," + base64.b64encode(buf.getvalue()).decode() + "'/>"


def _forecast_figure(d: Path) -> str:
    history, holdout_curve = pd.read_parquet(d / "history.parquet"), pd.read_parquet(d / "holdout_curve.parquet")
    future, levels = pd.read_parquet(d / "future_curve.parquet"), pd.read_parquet(d / "holdout_levels.parquet")
    fc = pd.read_parquet(d / "forecast_monthly.parquet")
    interval = read_json(d / "evaluation.json")["metrics"]["interval"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(14, 4))
    a.plot(history.day, history.actual, color="#333", lw=0.8, label="actual (daily net cost)")
    a.plot(holdout_curve.day, holdout_curve.forecast, color="#1f77b4", lw=1.2, label="holdout forecast")
    a.fill_between(holdout_curve.day, holdout_curve.lo, holdout_curve.hi, color="#1f77b4", alpha=0.2, lw=0)
    a.plot(future.day, future.forecast, color="#ff7f0e", lw=1.2, label="next months")
    a.fill_between(future.day, future.lo, future.hi, color="#ff7f0e", alpha=0.25, lw=0,
                   label=f"{interval:.0%} interval")
    a.set_title("Daily total cost: actuals and forecasts")
    a.legend(fontsize=8)
    monthly_actual = history.assign(month=history.day.dt.strftime("%Y-%m")).groupby("month").actual.sum()
    h = levels[levels.level == "total"].set_index("month")
    f = fc[fc.level == "total"].set_index("month")
    b.plot(monthly_actual.index, monthly_actual.values, "o-", color="#333", label="actual")
    b.errorbar(h.index, h.forecast, yerr=[h.forecast - h.lo, h.hi - h.forecast], fmt="s", color="#1f77b4",
               capsize=4, label="holdout forecast + interval")
    b.errorbar(f.index, f.forecast, yerr=[f.forecast - f.lo, f.hi - f.forecast], fmt="s", color="#ff7f0e",
               capsize=4, label="forecast + interval")
    b.tick_params(axis="x", rotation=60, labelsize=7)
    b.set_title("Monthly total cost")
    b.legend(fontsize=8)
    return _png(fig)


def _budget_section(d: Path, n: int = 4) -> str:
    """Monthly forecast vs each budget (the first n in a figure) and the table of all budget rows."""
    path = d / "budget_alerts.csv"
    if not path.exists():
        return ""
    alerts = pd.read_csv(path)
    if alerts.empty:
        return "<p>No budgets configured (config key <code>budgets</code>).</p>"
    names = list(dict.fromkeys(alerts.budget))[:n]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        b = alerts[alerts.budget == name]
        colors = ["#d62728" if x else "#2ca02c" for x in b.alert]
        ax.bar(b.month, b.expected_usd, color=colors, alpha=0.7)
        ax.errorbar(b.month, b.expected_usd, yerr=[b.expected_usd - b.lo_usd, b.hi_usd - b.expected_usd], fmt="none",
                    color="#333", capsize=4)
        ax.axhline(b.budget_usd.iloc[0], color="#333", ls="--", lw=1)
        for x, (y, p) in enumerate(zip(b.expected_usd, b.p_exceed)):
            ax.annotate(f"P={p:.0%}", (x, y), ha="center", va="bottom", fontsize=7)
        ax.set_title(f"{name}: forecast vs budget", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    rows = [[r.budget, r.service, r.project_id, r.month, f"{r.budget_usd:,.0f}", f"{r.expected_usd:,.0f}",
             f"{r.lo_usd:,.0f} – {r.hi_usd:,.0f}", f"{r.p_exceed:.0%}", "ALERT" if r.alert else "",
             r.expected_cross_day if isinstance(r.expected_cross_day, str) else "",
             r.early_cross_day if isinstance(r.early_cross_day, str) else "",
             r.warning if isinstance(r.warning, str) else ""] for r in alerts.itertuples()]
    header = ["budget", "service", "project", "month", "budget $", "expected $", "interval $", "P(exceed)", "alert",
              "expected crossing day", "crossing day at the interval's top", "warning"]
    return _png(fig) + _table(rows, header)


def _anomaly_figure(d: Path, n: int = 4) -> str:
    cells = pd.read_parquet(d / "cells.parquet")
    top = cells[cells.is_anomaly].groupby(["service", "project_id"]).impact.sum().nlargest(n).index
    fig, axes = plt.subplots(1, len(top), figsize=(4 * max(len(top), 1), 3.2), squeeze=False)
    for ax, (service, project) in zip(axes[0], top):
        s = cells[(cells.service == service) & (cells.project_id == project)]
        ax.plot(s.day, s.net_cost, color="#333", lw=0.7, label="net cost")
        ax.plot(s.day, s.expected, color="#2ca02c", lw=0.7, label="expected")
        ax.scatter(s.day[s.truth], s.net_cost[s.truth], marker="x", color="#9467bd", s=30, label="injected")
        ax.scatter(s.day[s.is_anomaly], s.net_cost[s.is_anomaly], facecolors="none", edgecolors="#d62728", s=40,
                   label="detected")
        ax.set_title(f"{service}\n{project}", fontsize=8)
        ax.tick_params(axis="x", rotation=60, labelsize=6)
    axes[0][0].legend(fontsize=7)
    return _png(fig)


def _anomaly_causes(d: Path, n: int = 15) -> str:
    """The largest anomalies with their dollar impact and cause, as an alert would name them."""
    path = d / "anomalies.csv"
    if not path.exists():
        return ""
    found = pd.read_csv(path).nlargest(n, "impact")
    rows = [[r.day, r.service, r.project_id, f"{r.net_cost:,.2f}", f"{r.expected:,.2f}", f"{r.impact:,.2f}",
             r.cause_resource, r.cause_sku, _fmt(r.cause_share), r.cause_owner, r.anomaly_id]
            for r in found.itertuples()]
    return (f"<h3>Largest anomalies and their causes ({len(pd.read_csv(path))} in all: {path.name})</h3>"
            + _table(rows, ["day", "service", "project", "actual $", "expected $", "impact $", "resource", "SKU",
                            "share of excess", "owner", "id"]))


def _labels_figure(metrics: dict, backtest: dict) -> str:
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3))
    a.bar(["before", "after"], [metrics["label_compliance_before"], metrics["label_compliance_after"]],
          color=["#aaa", "#2ca02c"])
    a.set_ylim(0, 1)
    a.set_title("Label compliance (share of cost correctly labelled)")
    b.bar(list(backtest), list(backtest.values()), color="#1f77b4")
    b.set_ylim(min(backtest.values(), default=1.0) - 0.05, 1)
    b.set_title("Forecast models: backtest accuracy (1 - WAPE)")
    return _png(fig)


def _table(rows: list[list], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_report(summary: dict, eval_dirs: dict[str, Path], html_path: str | Path) -> None:
    gate_rows = [[g, _fmt(v["value"]), v["threshold"], "PASS" if v["passed"] else "FAIL"]
                 for g, v in summary["gates"].items()]
    metric_rows = [[m, k, _fmt(v)] for m, ms in summary["metrics"].items() for k, v in ms.items()
                   if not isinstance(v, (dict, list))]
    confusion_path = eval_dirs[LABELER] / "confusion.json"
    confusion = json.loads(confusion_path.read_text()) if confusion_path.exists() else {}
    not_trained = summary.get("not_trained", {})

    def section(name: str, render) -> str:
        if name in not_trained:
            return f"<p><b>{html.escape(name)} not trained:</b> {html.escape(not_trained[name])}</p>"
        return render()

    window = summary["data_window"] or {"start": "?", "end": "?"}
    conf_html = "".join(
        f"<h3>Confusion matrix: {t}</h3>" + _table([[lab, *row] for lab, row in zip(c["labels"], c["matrix"])],
                                                   ["true \\ predicted", *c["labels"]])
        for t, c in confusion.items() if t != "owner")
    body = f"""
<h1>finops-ml training run</h1>
<p>Data window {window['start']} to {window['end']}; rows ingested
{summary['rows']['ingested']}, quarantined {summary['rows']['quarantined']}, duplicates {summary['rows']['duplicates']};
reconciliation difference {summary['reconciliation_diff']}.</p>
<h2>Gates</h2>{_table(gate_rows, ['gate', 'value', 'threshold', 'result'])}
<h2>Forecast</h2>{section(FORECAST, lambda: _forecast_figure(eval_dirs[FORECAST]))}
<h2>Budgets: forecast spend per month, P(spend &gt; budget), when it is crossed</h2>
{section(FORECAST, lambda: _budget_section(eval_dirs[FORECAST]))}
<h2>Anomalies (holdout and training windows)</h2>{section(ANOMALY, lambda: _anomaly_figure(eval_dirs[ANOMALY]))}
{section(ANOMALY, lambda: _anomaly_causes(eval_dirs[ANOMALY]))}
<h2>Labels and model comparison</h2>
{section(LABELER, lambda: _labels_figure(summary['metrics'][LABELER],
                                         summary['metrics'][FORECAST].get('backtest_accuracy') or {}))}
{conf_html}
<h2>All metrics (held-out data)</h2>{_table(metric_rows, ['model', 'metric', 'value'])}
"""
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>finops-ml report</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}img{max-width:100%}</style></head><body>"
            + body + "</body></html>")
    with atomic_path(html_path) as tmp:
        tmp.write_text(page)
