"""The dashboard (OUT/report.html), its incidents and value report, and `finops-ml dashboard`: built from the
pipeline's steps run in-process on the small generated organisation, then opened in headless Chromium."""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from finops_ml.config import Config, load_config
from finops_ml.errors import FinopsError
from finops_ml.fileio import read_json
from finops_ml.models.catalogue import ANOMALY, FORECAST, LABELER
from finops_ml.training import steps
from finops_ml.training.dashboard import usd
from finops_ml.training.incidents import incidents, owner_address
from finops_ml.training.report import build_summary, build_value, write_dashboard

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ["overview", "spend", "forecast", "budgets", "anomalies", "labels", "models", "value", "gates"]


# ---- incidents and owners (no model) ------------------------------------------------------------------------------

def _cells(rows):
    frame = pd.DataFrame(rows, columns=["day", "service", "project_id", "is_anomaly", "direction", "net_cost",
                                        "expected", "impact", "cause_resource", "cause_owner", "anomaly_id"])
    frame["day"] = pd.to_datetime(frame["day"])
    return frame


@pytest.mark.unit
def test_consecutive_days_of_one_cell_and_cause_are_one_incident():
    a = ("Compute Engine", "p1")
    cells = _cells([
        ("2026-01-01", *a, True, "up", 30, 10, 20, "vm-1", "s_hoffmann_at_acme-industrial_com", "x1"),
        ("2026-01-02", *a, True, "up", 40, 10, 30, "vm-1", "s_hoffmann_at_acme-industrial_com", "x2"),
        ("2026-01-03", *a, True, "up", 20, 10, 10, "vm-1", "s_hoffmann_at_acme-industrial_com", "x3"),
        ("2026-01-04", *a, False, "up", 10, 10, 0, None, None, None),
        ("2026-01-05", *a, True, "up", 30, 10, 20, "vm-1", None, "x5"),  # a gap: a new incident
        ("2026-01-05", "BigQuery", "p1", True, "down", 0, 8, -8, "bq", None, "y5"),  # open at the data's end
    ])
    feedback = pd.DataFrame({"anomaly_id": ["x2", "x1"], "verdict": ["unexpected", "expected"],
                             "marked_at": ["2026-01-07", "2026-01-06"]})
    found = incidents(cells, feedback)
    assert len(found) == 3
    first = found.iloc[0]
    assert (first.start, first.end, first.days, first.impact_usd) == ("2026-01-01", "2026-01-03", 3, 60.0)
    assert first.pct_deviation == 200.0 and first.status == "closed" and first.verdict == "unexpected"
    assert first.owner == "s.hoffmann@acme-industrial.com" and first.anomaly_ids == ["x1", "x2", "x3"]
    assert set(found.status) == {"closed", "open"} and found.iloc[-1].impact_usd == -8.0


@pytest.mark.unit
@pytest.mark.parametrize("label, shown", [("s_hoffmann_at_acme-industrial_com", "s.hoffmann@acme-industrial.com"),
                                          ("platform-team", "platform-team"), (None, None), ("", None)])
def test_owner_labels_are_shown_as_the_addresses_they_encode(label, shown):
    assert owner_address(label) == shown


@pytest.mark.unit
def test_value_config_is_validated_with_the_key_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("value:\n  stream_alert_days: 3\n  batch_alert_days: 1\n")
    with pytest.raises(FinopsError, match=r"bad.yaml: key 'value.batch_alert_days' is invalid: 1 is below"):
        load_config(path)
    path.write_text("value:\n  opex: [{name: x, monthly_usd: -1}]\n")
    with pytest.raises(FinopsError, match=r"key 'value.opex.0.monthly_usd' is invalid"):
        load_config(path)
    assert load_config(ROOT / "configs" / "local.yaml").value.opex  # the shipped config has OPEX lines


@pytest.mark.unit
def test_the_dashboard_server_refuses_a_bad_port_and_a_missing_dashboard(tmp_path):
    from finops_cli.dashboard import make_server

    with pytest.raises(FinopsError, match="--port 70000 is not a TCP port"):
        make_server(tmp_path, port=70000)
    with pytest.raises(FinopsError, match=r"holds no dashboard .*finops-ml run --out"):
        make_server(tmp_path, port=0)


# ---- a small run, in-process ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_run(small_generated, tmp_path_factory) -> SimpleNamespace:
    base = tmp_path_factory.mktemp("dashboard")
    shipped = load_config(ROOT / "configs" / "local.yaml")
    cfg = Config(seed=7, forecast={"candidates": ["linear"], "holdout_months": 2, "horizon_months": 2,
                                   "backtest_origins": 1}, anomaly={"injection_draws": 1},
                 budgets=shipped.budgets, value=shipped.value)
    events, feats = base / "events", base / "features"
    feats.mkdir()
    steps.ingest_step(str(small_generated / "events.jsonl"), str(small_generated / "control_totals.csv"), str(events))
    paths = {n: str(feats / f"{n}.parquet") for n in ("daily_cost", "resource_daily_cost", "resources")}
    steps.features_step(str(events), paths["daily_cost"], paths["resource_daily_cost"], paths["resources"])
    dirs = {name: base / name / "evaluation" for name in (FORECAST, ANOMALY, LABELER)}
    steps.train_anomaly_step(paths["resource_daily_cost"], paths["resources"],
                             str(small_generated / "truth" / "anomaly_cells.csv"), "", cfg,
                             str(base / ANOMALY / "model"), str(dirs[ANOMALY]))
    steps.train_forecast_step(paths["daily_cost"], cfg, str(base / FORECAST / "model"), str(dirs[FORECAST]))
    steps.train_labeler_step(paths["resources"], str(small_generated / "truth" / "resources.csv"), cfg,
                             str(base / LABELER / "model"), str(dirs[LABELER]))
    evaluations = {name: read_json(d / "evaluation.json") for name, d in dirs.items()}
    summary = build_summary(read_json(events / "ingest_summary.json"), evaluations, dirs)
    summary.update(run_id="local-test-run", config_digest=cfg.digest(), seed=7,
                   registered=[{"name": FORECAST, "version": 1, "aliases": ["champion", "latest"]}])
    value = build_value(summary, dirs, cfg.value)
    out = base / "out"
    out.mkdir()
    write_dashboard(summary, dirs, out / "report.html", value)
    (out / "summary.json").write_text(json.dumps(summary))
    (out / "value.json").write_text(json.dumps(value))
    return SimpleNamespace(out=out, dirs=dirs, summary=json.loads((out / "summary.json").read_text()), value=value,
                           cfg=cfg)


@pytest.mark.unit
@pytest.mark.slow
def test_summary_holds_the_budget_rows_intervals_and_incidents(small_run):
    s = small_run.summary
    alerts = pd.read_csv(small_run.dirs[FORECAST] / "budget_alerts.csv")
    assert [(b["budget"], b["month"], b["expected_usd"]) for b in s["budgets"]] == list(
        zip(alerts.budget, alerts.month, alerts.expected_usd))
    assert all(b["lo_usd"] <= b["expected_usd"] <= b["hi_usd"] for b in s["budgets"])
    assert all(f["lo"] < f["forecast"] < f["hi"] for f in s["forecast_total"])  # two-sided, never lo == point
    cells = pd.read_parquet(small_run.dirs[ANOMALY] / "cells.parquet")
    inc = s["anomaly_incidents"]
    assert sum(i["days"] for i in inc) == int(cells.is_anomaly.sum()) and len(inc) <= int(cells.is_anomaly.sum())
    assert round(sum(i["impact_usd"] for i in inc), 0) == round(cells.loc[cells.is_anomaly, "impact"].sum(), 0)
    assert all("_at_" not in (i["owner"] or "") for i in inc)


@pytest.mark.unit
@pytest.mark.slow
def test_value_report_names_the_source_of_every_figure(small_run):
    v = small_run.value
    figures = [f for area in ("anomalies", "labelling", "forecast", "cost", "roi") for f in v[area].values()
               if isinstance(f, dict)]
    assert figures and all(set(f) == {"value", "unit", "source"} and f["source"] for f in figures)
    assert v["anomalies"]["incidents"]["value"] == len(small_run.summary["anomaly_incidents"])
    assert v["cost"]["opex_usd_per_month"]["value"] == sum(line.monthly_usd for line in small_run.cfg.value.opex)
    lab = small_run.summary["metrics"][LABELER]
    assert v["labelling"]["compliance_gained"]["value"] == pytest.approx(
        lab["label_compliance_after"] - lab["label_compliance_before"], abs=1e-4)
    assert v["labelling"]["hours_saved"]["value"] == pytest.approx(
        v["labelling"]["resources_labelled"]["value"] * small_run.cfg.value.minutes_per_resource / 60, abs=0.01)
    html = (small_run.out / "report.html").read_text()
    assert "<script src=" not in html and html.count("<link ") == 1  # offline: plotly.js inlined, no fetch
    assert html.count("Plotly.newPlot") >= 5


# ---- in a real browser --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def page(small_run):
    """The dashboard served by `finops-ml dashboard`'s server on 127.0.0.1, open in headless Chromium. No browser
    is a failure with the fix (apt-get install -y chromium), not a skip."""
    from finops_cli.dashboard import make_server
    from testsupport.browser import browser

    server = make_server(small_run.out, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with browser() as b:
            p = b.new_page(viewport={"width": 1400, "height": 1000})
            errors = []
            p.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            p.on("pageerror", lambda e: errors.append(str(e)))
            p.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            p.wait_for_selector("#plot-forecast .main-svg")
            yield SimpleNamespace(page=p, errors=errors, port=server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _table(page, table_id: str) -> list[list[str]]:
    return page.eval_on_selector_all(f"#{table_id} tr", "rows => rows.slice(1).map(r => "
                                     "Array.from(r.cells).map(c => c.innerText.trim()))")


@pytest.mark.browser
@pytest.mark.slow
def test_the_page_loads_offline_with_every_section_and_no_console_error(page):
    assert page.errors == []
    for section in SECTIONS:
        assert page.page.is_visible(f"section#{section}"), section
    assert "local-test-run" in page.page.inner_text("#run-metadata")
    assert "cost-forecast v1" in page.page.inner_text("#run-metadata")


@pytest.mark.browser
@pytest.mark.slow
def test_a_plot_shows_a_dollar_value_on_hover_and_zooms_on_dates(page):
    p = page.page
    p.locator("#plot-forecast").scroll_into_view_if_needed()
    box = p.locator("#plot-forecast .nsewdrag").first.bounding_box()
    p.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    # "x unified" hover: one box (a legend in the hover layer) with each trace's value on that day
    p.wait_for_selector("#plot-forecast .hoverlayer .legend, #plot-forecast .hoverlayer .hovertext", timeout=5000)
    assert "$" in p.eval_on_selector("#plot-forecast .hoverlayer", "n => n.textContent")
    before = p.evaluate("document.getElementById('plot-forecast').layout.xaxis.range.slice()")
    p.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    p.mouse.down()
    p.mouse.move(box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.5, steps=5)
    p.mouse.up()
    p.wait_for_function(f"JSON.stringify(document.getElementById('plot-forecast').layout.xaxis.range) != "
                        f"'{json.dumps(before, separators=(',', ':'))}'", timeout=5000)
    after = p.evaluate("document.getElementById('plot-forecast').layout.xaxis.range")
    assert pd.Timestamp(after[0]) > pd.Timestamp(before[0]) and pd.Timestamp(after[1]) < pd.Timestamp(before[1])


@pytest.mark.browser
@pytest.mark.slow
def test_the_tables_on_the_page_agree_with_summary_json(page, small_run):
    s = small_run.summary
    budgets = _table(page.page, "budget-table")
    assert [(r[0], r[2], r[4], r[5]) for r in budgets] == [
        (b["budget"], b["month"], usd(b["expected_usd"]), f"{usd(b['lo_usd'])} – {usd(b['hi_usd'])}")
        for b in s["budgets"]]
    assert all(r[7] in ("on track", "at risk", "over budget") for r in budgets)
    months = _table(page.page, "forecast-months")
    assert months == [[f["month"], usd(f["forecast"]), usd(f["lo"]), usd(f["hi"])] for f in s["forecast_total"]]
    shown = _table(page.page, "incident-table")
    assert [(r[0], r[1], int(r[2]), r[5]) for r in shown] == [
        (i["incident_id"], i["start"], i["days"], usd(i["impact_usd"], 2)) for i in s["anomaly_incidents"][:100]]
    served = page.page.evaluate("fetch('/summary.json').then(r => r.text())")  # metrics may hold NaN: text
    assert '"run_id": "local-test-run"' in served


@pytest.mark.unit
@pytest.mark.slow
def test_incidents_of_a_detector_that_failed_its_gate_say_so(small_run, tmp_path):
    def page(passed: bool) -> str:
        summary = copy.deepcopy(small_run.summary)
        summary["gates"]["anomaly_f1"].update(value=0.448, threshold=0.85, passed=passed)
        write_dashboard(summary, small_run.dirs, tmp_path / "report.html", small_run.value)
        return (tmp_path / "report.html").read_text()

    failed = page(False)
    assert 'id="incident-gate"' in failed and "F1 0.448 &lt; 0.85" in failed
    assert 'id="incident-gate"' not in page(True)
