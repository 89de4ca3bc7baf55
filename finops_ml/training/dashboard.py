"""The FinOps dashboard (OUT/report.html): one self-contained page a person keeps open, offline.

Interactive plots are Plotly figures; plotly.js is inlined once per page (no CDN), the page is a Jinja2 template
(templates/dashboard.html.j2). Every number in a table comes from the run's summary (summary.json): the budget
rows, the forecast's monthly intervals and the anomaly incidents are put into the summary by `summary_tables` and
the page renders them, so the two agree by construction (tests/test_dashboard.py checks it in a browser).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from jinja2 import Environment, PackageLoader, select_autoescape
from plotly.colors import qualitative
from plotly.offline import get_plotlyjs

from finops_ml.fileio import atomic_path, read_json
from finops_ml.models.catalogue import ANOMALY, FORECAST, LABELER
from finops_ml.training.incidents import incidents as merge_incidents
from finops_ml.training.incidents import owner_address

LABELS = ("owner", "cost_center", "plant")
PALETTE = [*qualitative.D3, *qualitative.Pastel]  # 20 distinct colours: one per service


# ---- the tables that go into summary.json ---------------------------------------------------------------------

def _records(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records", date_format="iso"))


def read_feedback_file(path: str | Path | None) -> pd.DataFrame | None:
    if not path or not Path(path).exists():
        return None
    from finops_ml.models.anomaly import read_feedback

    return read_feedback(path)


def summary_tables(eval_dirs: dict[str, Path], feedback: pd.DataFrame | None = None) -> dict:
    """Budget rows, the forecast's monthly totals with their interval, and the anomaly incidents."""
    out: dict = {}
    fdir, adir = eval_dirs.get(FORECAST), eval_dirs.get(ANOMALY)
    if fdir is not None and (fdir / "budget_alerts.csv").exists():
        alerts = pd.read_csv(fdir / "budget_alerts.csv").astype(object)
        out["budgets"] = _records(alerts.where(alerts.notna(), None))
    if fdir is not None and (fdir / "forecast_monthly.parquet").exists():
        fc = pd.read_parquet(fdir / "forecast_monthly.parquet")
        total = fc[fc.level == "total"][["month", "forecast", "lo", "hi"]].round(2)
        out["forecast_total"] = _records(total)
    if adir is not None and (adir / "cells.parquet").exists():
        inc = merge_incidents(pd.read_parquet(adir / "cells.parquet"), feedback)
        out["anomaly_incidents"] = _records(inc)
    return out


# ---- formatting ---------------------------------------------------------------------------------------------------

def usd(value, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    sign = "-" if value < 0 else ""
    return f"{sign}${abs(value):,.{digits}f}"


def pct(value, digits: int = 0) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def _layout(fig: go.Figure, title: str, y_title: str = "USD", height: int = 340) -> go.Figure:
    fig.update_layout(title={"text": title, "font": {"size": 14}}, height=height, margin=dict(l=60, r=20, t=40, b=40),
                      hovermode="x unified", legend=dict(orientation="h", y=-0.18), template="plotly_white")
    fig.update_yaxes(title_text=y_title, tickprefix="$" if y_title.startswith("USD") else None, tickformat=",.0f"
                     if y_title.startswith("USD") else None)
    return fig


def _div(fig: go.Figure, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


# ---- the figures ---------------------------------------------------------------------------------------------------

def _forecast_figure(fdir: Path) -> str:
    history, hold = pd.read_parquet(fdir / "history.parquet"), pd.read_parquet(fdir / "holdout_curve.parquet")
    future = pd.read_parquet(fdir / "future_curve.parquet")
    interval = read_json(fdir / "evaluation.json")["metrics"].get("interval", 0.8)
    fig = go.Figure()
    for frame, name, color in ((hold, "holdout forecast", "#1f77b4"), (future, "forecast", "#ff7f0e")):
        fig.add_trace(go.Scatter(x=frame.day, y=frame.hi, line=dict(width=0), showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=frame.day, y=frame.lo, fill="tonexty", line=dict(width=0), fillcolor=color,
                                 opacity=0.25, name=f"{name}: {interval:.0%} interval", hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=frame.day, y=frame.forecast, name=name, line=dict(color=color, width=1.5),
                                 hovertemplate="%{y:$,.0f}"))
    fig.add_trace(go.Scatter(x=history.day, y=history.actual, name="actual", line=dict(color="#333", width=1),
                             hovertemplate="%{y:$,.0f}"))
    _layout(fig, "Daily net cost, whole organisation: actuals, holdout forecast and the next months", height=380)
    fig.update_xaxes(rangeslider=dict(visible=True, thickness=0.06), tickformat="%d %b %Y", nticks=12)
    return _div(fig, "plot-forecast")


def _spend_by(cells: pd.DataFrame, labelled: pd.DataFrame | None) -> dict[str, str]:
    cells = cells.assign(month=pd.to_datetime(cells.day).dt.strftime("%Y-%m"))
    figs = {}
    by_service = cells.groupby(["month", "service"], as_index=False).net_cost.sum()
    fig = go.Figure()
    for i, (service, g) in enumerate(by_service.groupby("service")):
        fig.add_trace(go.Bar(x=g.month, y=g.net_cost, name=service, marker_color=PALETTE[i % len(PALETTE)],
                             hovertemplate=service + ": %{y:$,.0f}<extra></extra>"))
    _layout(fig, "Monthly net cost by service", height=380).update_layout(barmode="stack")
    fig.update_xaxes(title_text="invoice month", type="category")
    figs["service"] = _div(fig, "plot-spend-service")
    total = cells.net_cost.sum()
    by_project = cells.groupby("project_id").net_cost.sum().sort_values().tail(15)
    fig = go.Figure(go.Bar(x=by_project.values, y=by_project.index, orientation="h", marker_color="#1f77b4",
                           hovertemplate="%{y}: %{x:$,.0f}<extra></extra>"))
    _layout(fig, f"Top projects, whole window (total {usd(total)})", height=420).update_xaxes(
        title_text="USD", tickprefix="$", tickformat=",.0f")
    fig.update_yaxes(title_text=None, tickprefix=None)
    figs["project"] = _div(fig, "plot-spend-project")
    if labelled is not None:
        for label in ("plant", "cost_center"):
            s = labelled.assign(**{label: labelled[label].fillna("(unlabelled)")}).groupby(label).net_cost.sum()
            s = s.sort_values()
            fig = go.Figure(go.Bar(x=s.values, y=s.index, orientation="h", marker_color="#2ca02c",
                                   hovertemplate="%{y}: %{x:$,.0f}<extra></extra>"))
            _layout(fig, f"Net cost by {label} label (after auto-labelling)", height=320).update_xaxes(
                title_text="USD", tickprefix="$", tickformat=",.0f")
            fig.update_yaxes(title_text=None, tickprefix=None)
            figs[label] = _div(fig, f"plot-spend-{label}")
    return figs


def _scope(frame: pd.DataFrame, row: dict) -> pd.DataFrame:
    mask = pd.Series(True, index=frame.index)
    if row["service"] != "ALL":
        mask &= frame.service == row["service"]
    if row["project_id"] != "ALL":
        mask &= frame.project_id == row["project_id"]
    return frame[mask]


def burn_down(budget_rows: list[dict], daily_fc: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Per budget, for its first forecast month: day, cumulative actual (month to date), cumulative forecast and
    its cone. The cone is the budget row's own interval spread over the month (lo/hi at its last day = lo_usd /
    hi_usd of the row), so the plot and the budget table agree."""
    frames = []
    for name in dict.fromkeys(r["budget"] for r in budget_rows):
        row = [r for r in budget_rows if r["budget"] == name][0]
        fc = _scope(daily_fc, row)
        fc = fc[pd.to_datetime(fc.day).dt.strftime("%Y-%m") == row["month"]].groupby("day").yhat.sum().sort_index()
        already = row["actual_to_date_usd"] or 0.0
        remaining = row["expected_usd"] - already
        lo_f = (row["lo_usd"] - already) / remaining if remaining > 0 else 1.0
        hi_f = (row["hi_usd"] - already) / remaining if remaining > 0 else 1.0
        cum = fc.cumsum() * (remaining / fc.sum() if fc.sum() > 0 else 1.0)
        f = pd.DataFrame({"budget": name, "month": row["month"], "day": pd.to_datetime(cum.index),
                          "forecast": already + cum.values, "lo": already + cum.values * lo_f,
                          "hi": already + cum.values * hi_f, "budget_usd": row["budget_usd"]})
        scoped = _scope(cells, row)
        month_days = pd.to_datetime(scoped.day).dt.strftime("%Y-%m") == row["month"]
        actual = scoped[month_days].groupby("day").net_cost.sum().cumsum()
        f["actual"] = pd.Series(actual.values, index=pd.to_datetime(actual.index)).reindex(f.day).to_numpy()
        frames.append(f)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _burn_down_figures(burn: pd.DataFrame, cells: pd.DataFrame, budget_rows: list[dict]) -> list[dict]:
    out = []
    for i, (name, b) in enumerate(burn.groupby("budget", sort=False)):
        row = [r for r in budget_rows if r["budget"] == name][0]
        fig = go.Figure()
        fig.add_trace(go.Scatter(x=b.day, y=b.hi, line=dict(width=0), showlegend=False, hoverinfo="skip"))
        fig.add_trace(go.Scatter(x=b.day, y=b.lo, fill="tonexty", line=dict(width=0), fillcolor="rgba(255,127,14,.25)",
                                 name="forecast interval", hovertemplate="low %{y:$,.0f}"))
        fig.add_trace(go.Scatter(x=b.day, y=b.forecast, name="cumulative forecast", line=dict(color="#ff7f0e"),
                                 hovertemplate="%{y:$,.0f}"))
        if b.actual.notna().any():
            fig.add_trace(go.Scatter(x=b.day, y=b.actual, name="cumulative actual", line=dict(color="#333"),
                                     hovertemplate="%{y:$,.0f}"))
        prev = pd.Timestamp(row["month"] + "-01") - pd.offsets.MonthBegin(1)
        scoped = _scope(cells, row)
        last = scoped[pd.to_datetime(scoped.day).dt.to_period("M") == prev.to_period("M")]
        last = last.groupby("day").net_cost.sum().cumsum()
        if len(last):
            shifted = pd.to_datetime(last.index) + pd.DateOffset(months=1)
            fig.add_trace(go.Scatter(x=shifted, y=last.values, name=f"{prev:%b %Y} actual (same day)",
                                     line=dict(color="#999", dash="dot"), hovertemplate="%{y:$,.0f}"))
        fig.add_trace(go.Scatter(x=[b.day.min(), b.day.max()], y=[row["budget_usd"]] * 2, name="budget",
                                 line=dict(color="#d62728", dash="dash"), hovertemplate="%{y:$,.0f}"))
        _layout(fig, f"{name}: burn-down, {row['month']}", height=300)
        fig.update_xaxes(tickformat="%d %b", nticks=8)
        out.append({"name": name, "div": _div(fig, f"plot-burn-{i}")})
    return out


def _incident_figure(cells: pd.DataFrame, incidents: list[dict], n: int = 4) -> str:
    fig = go.Figure()
    shown = []
    for inc in incidents:
        key = (inc["service"], inc["project_id"])
        if key not in shown:
            shown.append(key)
        if len(shown) == n:
            break
    for i, (service, project) in enumerate(shown):
        s = cells[(cells.service == service) & (cells.project_id == project)].sort_values("day")
        color = PALETTE[i % len(PALETTE)]
        label = f"{service} / {project}"
        fig.add_trace(go.Scatter(x=s.day, y=s.net_cost, name=label, line=dict(color=color, width=1),
                                 hovertemplate="%{y:$,.2f}"))
        fig.add_trace(go.Scatter(x=s.day, y=s.expected, name=f"expected ({service})", visible="legendonly",
                                 line=dict(color=color, width=1, dash="dot"), hovertemplate="%{y:$,.2f}"))
        a = s[s.is_anomaly]
        fig.add_trace(go.Scatter(x=a.day, y=a.net_cost, mode="markers", name=f"anomalous days ({service})",
                                 marker=dict(color="#d62728", size=7, symbol="circle-open", line=dict(width=2)),
                                 hovertemplate="%{y:$,.2f}"))
    _layout(fig, "Daily net cost of the cells with the largest incidents (red circles: anomalous days)", height=420)
    fig.update_layout(legend=dict(orientation="v", x=1.01, y=1, font={"size": 11}))  # beside: below is the slider
    fig.update_xaxes(rangeslider=dict(visible=True, thickness=0.06), tickformat="%d %b %Y", nticks=12)
    return _div(fig, "plot-incidents")


# ---- the page -----------------------------------------------------------------------------------------------------

def _month_to_date(cells: pd.DataFrame) -> dict:
    """Spend of the data's last month up to its last day vs the month before up to the same day of month."""
    days = pd.to_datetime(cells.day)
    end = days.max()
    this = cells[(days.dt.year == end.year) & (days.dt.month == end.month)]
    prev_start = pd.Timestamp(end.year, end.month, 1) - pd.offsets.MonthBegin(1)
    prev = cells[(days >= prev_start) & (days < pd.Timestamp(end.year, end.month, 1))]
    prev_days = pd.to_datetime(prev.day)
    prev_mtd = prev[prev_days.dt.day <= end.day]
    key = ["service", "project_id"]
    movers = (this.groupby(key).net_cost.sum().rename("this").to_frame()
              .join(prev_mtd.groupby(key).net_cost.sum().rename("prev"), how="outer").fillna(0.0))
    movers["change"] = movers["this"] - movers["prev"]
    movers["pct"] = movers["change"] / movers["prev"].where(movers["prev"] > 0)
    top = movers.reindex(movers["change"].abs().sort_values(ascending=False).index).head(10).reset_index()
    return {"month": f"{end:%B %Y}", "to_day": int(end.day), "prev_month": f"{prev_start:%B %Y}",
            "this": float(this.net_cost.sum()), "prev_same_days": float(prev_mtd.net_cost.sum()),
            "prev_full": float(prev.net_cost.sum()), "movers": top.to_dict(orient="records")}


def _unlabelled(labelled: pd.DataFrame) -> dict:
    missing = labelled[[c for c in LABELS if c in labelled]].isna().any(axis=1) | (
        labelled[[f"{c}_applied" for c in LABELS if f"{c}_applied" in labelled]].any(axis=1))
    raw = labelled[missing].copy()
    raw["owner_shown"] = [owner_address(o) or "(unknown)" for o in raw.get("owner", pd.Series(index=raw.index))]
    by_project = raw.groupby("project_id").net_cost.sum().sort_values(ascending=False).head(15)
    by_owner = raw.groupby("owner_shown").net_cost.sum().sort_values(ascending=False).head(15)
    return {"total": float(raw.net_cost.sum()), "resources": int(len(raw)),
            "share": float(raw.net_cost.sum() / labelled.net_cost.sum()) if labelled.net_cost.sum() else None,
            "by_project": list(by_project.items()), "by_owner": list(by_owner.items())}


def _model_rows(summary: dict) -> list[dict]:
    m = summary["metrics"].get(FORECAST, {})
    rows = []
    for name, c in (m.get("candidates") or {}).items():
        rows.append({"model": name, "backtest": c.get("backtest_accuracy"), "holdout": c.get("accuracy"),
                     "coverage": c.get("interval_coverage"), "chosen": name == m.get("model"), "kind": "candidate"})
    known = {r["model"] for r in rows}
    for name, acc in (m.get("baselines") or {}).items():
        if name not in known:
            rows.append({"model": name, "backtest": None, "holdout": acc, "coverage": None, "chosen": False,
                         "kind": "naive baseline"})
        else:
            for r in rows:
                if r["model"] == name:
                    r["kind"] = "naive baseline (also a candidate)"
    return rows


def dashboard_context(summary: dict, eval_dirs: dict[str, Path], value: dict | None = None) -> dict:
    not_trained = summary.get("not_trained", {})
    fdir, adir, ldir = (eval_dirs.get(k) for k in (FORECAST, ANOMALY, LABELER))
    cells = pd.read_parquet(adir / "cells.parquet") if adir and (adir / "cells.parquet").exists() else None
    labelled = pd.read_parquet(ldir / "labelled.parquet") if ldir and (ldir / "labelled.parquet").exists() else None
    review = pd.read_csv(ldir / "review_list.csv") if ldir and (ldir / "review_list.csv").exists() else None
    ctx: dict = {"summary": summary, "not_trained": not_trained, "value": value, "plots": {}}
    budgets = summary.get("budgets") or []
    for row in budgets:
        over = row["expected_usd"] > row["budget_usd"]
        row["status"] = ("over budget" if over else "at risk" if row["alert"] else "on track")
        row["why"] = (f"expected {usd(row['expected_usd'])} {'above' if over else 'under'} budget "
                      f"{usd(row['budget_usd'])}; P(exceed) {row['p_exceed']:.0%} "
                      f"{'≥' if row['alert'] else '<'} alert threshold {row['alert_probability']:.0%}")
    ctx["budgets"] = budgets
    if fdir and FORECAST not in not_trained:
        ctx["plots"]["forecast"] = _forecast_figure(fdir)
        if budgets and cells is not None:
            daily_fc = pd.read_parquet(fdir / "forecast_daily.parquet")
            ctx["burn_down"] = _burn_down_figures(burn_down(budgets, daily_fc, cells), cells, budgets)
    if cells is not None:
        ctx["plots"].update({f"spend_{k}": v for k, v in _spend_by(cells, labelled).items()})
        ctx["mtd"] = _month_to_date(cells)
        if summary.get("anomaly_incidents"):
            ctx["plots"]["incidents"] = _incident_figure(cells, summary["anomaly_incidents"])
    if labelled is not None:
        ctx["unlabelled"] = _unlabelled(labelled)
    if review is not None:
        ctx["review"] = review.sort_values("confidence").to_dict(orient="records")
    ctx["models"] = _model_rows(summary)
    ctx["incidents"] = summary.get("anomaly_incidents") or []
    ctx["metric_rows"] = [(m, k, v) for m, ms in summary["metrics"].items() for k, v in ms.items()
                          if not isinstance(v, (dict, list))]
    return ctx


def _env() -> Environment:
    env = Environment(loader=PackageLoader("finops_ml.training", "templates"), autoescape=select_autoescape(),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(usd=usd, pct=pct, address=owner_address)
    return env


def render_dashboard(summary: dict, eval_dirs: dict[str, Path], value: dict | None = None) -> str:
    ctx = dashboard_context(summary, {k: Path(v) for k, v in eval_dirs.items()}, value)
    return _env().get_template("dashboard.html.j2").render(plotlyjs=get_plotlyjs(), **ctx)


def write_dashboard(summary: dict, eval_dirs: dict[str, Path], html_path: str | Path, value: dict | None = None
                    ) -> None:
    page = render_dashboard(summary, eval_dirs, value)
    with atomic_path(html_path) as tmp:
        tmp.write_text(page, encoding="utf-8")
