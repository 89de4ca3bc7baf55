"""The real-time detector: the batch detector's decisions event by event, state that survives a restart, the cause
of each anomaly, and clear reasons for events it cannot judge."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from finops_ml.data.ingest import ingest
from finops_ml.data.warehouse import export_feature_view
from finops_ml.models.anomaly import CostAnomalyDetector
from finops_ml.models.realtime import InvalidEvent, RealtimeState, detect_anomaly_realtime

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def fitted(small_generated, tmp_path_factory):
    """The small organisation's views, a detector fitted without labels on its first months, the batch cells and
    sorted events."""
    work = tmp_path_factory.mktemp("realtime")
    ingest(str(small_generated / "events.jsonl"), work / "ingest", None)
    for view in ("resource_daily_cost", "resources"):
        export_feature_view(view, work / "ingest" / "events.parquet", work / f"{view}.parquet")
    daily = pd.read_parquet(work / "resource_daily_cost.parquet")
    daily["day"] = pd.to_datetime(daily["day"])
    resources = pd.read_parquet(work / "resources.parquet")
    detector = CostAnomalyDetector().fit(daily[daily.day < "2026-01-01"])
    cells = detector.score(daily, resources)
    events = [json.loads(line) for line in (small_generated / "events.jsonl").open()]
    events.sort(key=lambda e: e["usage_start_time"])  # the order a billing stream delivers them in
    return detector, cells, events


def _stream(events, state) -> dict[str, list[dict]]:
    raised: dict[str, list[dict]] = {}
    for e in events:
        for a in detect_anomaly_realtime(e, state):
            raised.setdefault(a["anomaly_id"], []).append(a)
    return raised


def _decided(raised: dict[str, list[dict]]) -> set[str]:
    return {k for k, v in raised.items() if v[-1]["status"] != "retracted"}


@pytest.mark.parametrize("order", ["usage", "export"])
def test_realtime_reaches_the_batch_decisions(fitted, order):
    detector, cells, events = fitted
    if order == "export":  # as a billing export delivers them: a day's rows come up to ~29 h after it ends
        events = sorted(events, key=lambda e: (e["export_time"], e["usage_start_time"]))
    state = RealtimeState.from_detector(detector, lateness_days=2)
    raised = _stream(events, state)
    assert state.counters["late_events"] == 0  # days close on export time: none closes before its last row
    for a in state.flush():
        raised.setdefault(a["anomaly_id"], []).append(a)
    batch = set(cells.loc[cells.is_anomaly, "anomaly_id"])
    by_id = cells.set_index("anomaly_id")
    assert len(batch) >= 10
    assert _decided(raised) == batch
    assert set(cells.loc[cells.is_anomaly, "direction"]) == {"up", "down"}  # rises and drops alike
    # Nearly every rise is raised by an event of its own day, before the day closes; a drop waits for the day.
    rises = {aid for aid in batch if by_id.loc[aid, "direction"] == "up"}
    opened = [aid for aid in rises if raised[aid][0]["status"] == "open"]
    assert len(opened) >= 0.8 * len(rises)
    assert state.counters["retracted"] <= 0.05 * len(batch)
    confirmed = {aid for aid, alerts in raised.items() for a in alerts if a["status"] == "confirmed"}
    assert confirmed == batch  # every anomaly confirmed once its day is complete, an open one too
    for aid in batch:
        final = raised[aid][-1]
        row = by_id.loc[aid]
        assert final["direction"] == row.direction
        if final["status"] == "confirmed":  # decided on the complete day: the batch's figures
            assert final["expected"] == pytest.approx(row.expected, rel=1e-6, abs=1e-4)
            assert final["impact"] == pytest.approx(row.impact, rel=1e-6, abs=1e-4)
            if final["pct_deviation"] is None:  # a cell expected at 0 (a runaway resource alone): no % deviation
                assert not math.isfinite(row.pct_deviation)
            else:
                assert final["pct_deviation"] == pytest.approx(row.pct_deviation, rel=1e-6, abs=1e-6)
            assert final["score"] == pytest.approx(row.score, rel=1e-6)
            assert final["threshold"] == detector.thresholds()[row.direction]
    drops = [raised[aid][-1] for aid in batch if by_id.loc[aid, "direction"] == "down"]
    assert drops and all(a["status"] == "confirmed" and a["impact"] < 0 for a in drops)  # drops wait for the day


def test_state_saved_and_restored_mid_stream_goes_on_identically(fitted, tmp_path):
    detector, _, events = fitted
    whole = RealtimeState.from_detector(detector)
    expected = _stream(events, whole)
    first = RealtimeState.from_detector(detector)
    half = len(events) // 2
    got = _stream(events[:half], first)
    first.save(tmp_path / "state.pkl")
    restored = RealtimeState.load(tmp_path / "state.pkl")
    for k, v in _stream(events[half:], restored).items():
        got.setdefault(k, []).extend(v)
    def statuses(alerts):
        return {k: [a["status"] for a in v] for k, v in alerts.items()}

    assert statuses(got) == statuses(expected)
    assert restored.counters == whole.counters


def test_a_state_of_an_older_format_is_refused_with_one_sentence(fitted, tmp_path):
    from finops_ml.errors import FinopsError

    state = RealtimeState.from_detector(fitted[0])
    state.version = 4  # cells without their last days' excess
    state.save(tmp_path / "old.pkl")
    with pytest.raises(FinopsError, match="has format version 4, and this finops-ml reads version 5 only.*move the "
                                          "state directory away"):
        RealtimeState.load(tmp_path / "old.pkl")


@pytest.mark.parametrize("lateness_days", [0, 2])
def test_reordered_and_late_rows_re_judge_their_day_and_reach_the_batch_anomalies(fitted, lateness_days):
    """Rows out of time order (blocks of the export shuffled; with lateness 0 every row is late): a row of a day
    already closed re-judges that day for its cell, publishing `confirmed` / `retracted` (each message key once),
    so that the last message of each anomaly id says what the batch detector decides."""
    import random

    from finops_ml.stream.alerts import alert_key

    detector, cells, events = fitted
    rnd = random.Random(7)
    events = sorted(events, key=lambda e: (e["export_time"], e["usage_start_time"]))
    block = len(events) // 40  # about 6 days of rows, shuffled: rows of closed days arrive after newer ones
    events = [e for i in range(0, len(events), block) for e in rnd.sample(events[i:i + block],
                                                                        len(events[i:i + block]))]
    state = RealtimeState.from_detector(detector, lateness_days=lateness_days)
    messages = [a for e in events for a in detect_anomaly_realtime(e, state)] + state.flush()
    assert state.counters["late_events"] > 0 and state.counters["rejudged_days"] > 0
    assert state.counters["too_late_events"] == 0
    keys = [alert_key(a) for a in messages]
    assert len(keys) == len(set(keys))  # each message once
    last = {a["anomaly_id"]: a["status"] for a in messages}
    batch = set(cells.loc[cells.is_anomaly, "anomaly_id"])
    assert {aid for aid, status in last.items() if status != "retracted"} == batch
    assert {aid for aid, status in last.items() if status == "confirmed"} == batch


def test_a_late_row_older_than_rejudge_days_is_counted_not_judged(fitted):
    detector, _, events = fitted
    events = sorted(events, key=lambda e: (e["export_time"], e["usage_start_time"]))
    state = RealtimeState.from_detector(detector, lateness_days=2, rejudge_days=3)
    half = len(events) // 2
    _stream(events[:half], state)
    day = max(e["usage_start_time"] for e in events[:half])[:10]
    old = [e for e in events[:half] if e["usage_start_time"][:10] < day][-1]  # a row of an older closed day
    import datetime as dt

    d = dt.date.fromisoformat(old["usage_start_time"][:10])
    if (dt.date.fromordinal(state.closed_through) - d).days < 3:
        old = events[0]
    assert detect_anomaly_realtime(old, state) == []
    assert state.late == "too_late" and state.counters["too_late_events"] == 1


def test_load_of_a_missing_or_corrupt_state_is_a_clear_error(tmp_path):
    from finops_ml.errors import FinopsError

    with pytest.raises(FinopsError, match="does not exist"):
        RealtimeState.load(tmp_path / "nope.pkl")
    (tmp_path / "bad.pkl").write_bytes(b"not a pickle")
    with pytest.raises(FinopsError, match="cannot be read"):
        RealtimeState.load(tmp_path / "bad.pkl")


def test_late_and_non_usage_events_are_counted_not_judged(fitted, billing_record):
    detector, _, events = fitted
    state = RealtimeState.from_detector(detector, lateness_days=2)
    _stream(events[:5000], state)
    late = billing_record(usage_start_time="2000-01-01T00:00:00Z")
    tax = billing_record(cost_type="tax", usage_start_time="2030-01-01T00:00:00Z")
    assert detect_anomaly_realtime(late, state) == []
    assert detect_anomaly_realtime(tax, state) == []
    assert state.counters["late_events"] == 1 and state.counters["too_late_events"] == 1  # before the kept days
    assert state.counters["skipped_events"] >= 1
    assert state.watermark < pd.Timestamp("2030-01-01").toordinal()  # a tax row does not move time


@pytest.mark.parametrize("change, reason", [
    ({"cost": "12.5"}, "cost"),
    ({"cost": float("nan")}, "cost"),
    ({"service": None}, "missing field|service"),
    ({"project": {"number": "1"}}, "missing field"),
    ({"usage_start_time": "yesterday"}, "not an ISO timestamp"),
    ({"currency_conversion_rate": 0}, "currency_conversion_rate"),
    ({"credits": [{"name": "x"}]}, "credits"),
])
def test_malformed_events_raise_invalid_event_with_the_reason(fitted, billing_record, change, reason):
    state = RealtimeState.from_detector(fitted[0])
    with pytest.raises(InvalidEvent, match=reason):
        detect_anomaly_realtime(billing_record(**change), state)
    assert state.counters["events"] == 0


def test_timestamps_with_offsets_are_read_as_their_utc_day(fitted, billing_record):
    state = RealtimeState.from_detector(fitted[0])
    detect_anomaly_realtime(billing_record(usage_start_time="2025-09-02T01:00:00+02:00"), state)
    assert list(state.days) == [pd.Timestamp("2025-09-01").toordinal()]


def test_cause_names_the_injected_resource_and_sku(small_generated, fitted):
    """Injected anomalies carry their resource and SKU in the ground truth: the detector must name them (the
    kinds where one established resource's cost rises; a spread rise has many, a drop falls, a runaway is new)."""
    _, cells, events = fitted
    anomalies = pd.read_csv(small_generated / "truth" / "anomalies.csv")
    anomalies = anomalies[anomalies.kind.isin(["spike", "level_shift", "drift", "new_sku"])]
    flagged = cells[cells.is_anomaly]
    checked = 0
    for a in anomalies.itertuples():
        hit = flagged[(flagged.service == a.service) & (flagged.project_id == a.project_id)
                      & (flagged.day >= a.start) & (flagged.day <= a.end)]
        if hit.empty:
            continue
        assert (hit.cause_resource == a.resource).mean() >= 0.8, a
        assert (hit.cause_sku == a.sku).mean() >= 0.8, a
        assert hit.cause_share.between(0.5, 1.5).all()
        assert (hit.impact > 0).all()
        checked += 1
    assert checked >= 5
    assert flagged.cause_owner.notna().mean() > 0.5  # labels of the resource, where it has them
    drops = pd.read_csv(small_generated / "truth" / "anomalies.csv").query("kind == 'drop'")
    found = 0
    for a in drops.itertuples():  # a drop names the resource that fell
        hit = flagged[(flagged.service == a.service) & (flagged.project_id == a.project_id)
                      & (flagged.day >= a.start) & (flagged.day <= a.end)]
        assert (hit.direction == "down").all() and (hit.impact < 0).all() and (hit.pct_deviation < 0).all()
        assert (hit.cause_resource == a.resource).all(), a
        found += len(hit) > 0
    assert found >= 1


def test_realtime_cause_matches_the_batch_cause(fitted):
    detector, cells, events = fitted
    state = RealtimeState.from_detector(detector)
    raised = _stream(events, state)
    by_id = cells.set_index("anomaly_id")
    same = [raised[k][0]["cause"]["resource"] == by_id.loc[k, "cause_resource"]
            for k in _decided(raised) & set(by_id.index)]
    assert np.mean(same) >= 0.95


def test_realtime_reaches_the_batch_decisions_across_quarter_ends():
    """Resources with a quarter-end batch job (3x on a quarter's last two days), one of them also with a 3x spike
    on other days, and a monthly fee that moves: event by event, the same anomalies as in batch, the quarter ends
    not among them."""
    rng = np.random.default_rng(4)
    days = pd.date_range("2025-01-01", "2025-12-31", freq="D")
    quarter_end = days.is_month_end | (days + pd.Timedelta(days=1)).is_month_end
    quarter_end &= days.month.isin([3, 6, 9, 12])
    rows = []
    for c in range(4):
        for r in range(3):
            cost = rng.uniform(20, 100) * np.where(days.dayofweek >= 5, 0.8, 1.0) * rng.lognormal(0, 0.05, len(days))
            if r == 0:
                cost = cost * np.where(quarter_end, 3.0, 1.0)
            if (c, r) == (0, 0):
                cost[days.isin(pd.to_datetime(["2025-10-14", "2025-10-15", "2025-11-20"]))] *= 3.0
            rows += [dict(day=d, service="svc", project_id=f"p{c}", resource_name=f"r{c}-{r}", net_cost=v)
                     for d, v in zip(days, cost)]
    firsts = days[days.day == 1]
    rows += [dict(day=d, service="Support", project_id="shared", resource_name="", net_cost=500.0 * (1 + (i >= 6)))
             for i, d in enumerate(firsts)]
    daily = pd.DataFrame(rows)
    detector = CostAnomalyDetector().fit(daily[daily.day < "2025-09-01"])
    cells = detector.score(daily)
    batch = set(cells.loc[cells.is_anomaly, "anomaly_id"])
    flagged_days = set(cells.loc[cells.is_anomaly & (cells.project_id == "p0"), "day"])
    assert pd.Timestamp("2025-10-14") in flagged_days and pd.Timestamp("2025-11-20") in flagged_days
    assert not cells[cells.is_anomaly & cells.day.isin(days[quarter_end])].shape[0]
    assert set(cells.loc[cells.is_anomaly & (cells.project_id == "shared"), "day"]) == set(firsts[6:8])
    state = RealtimeState.from_detector(detector, lateness_days=0)
    raised: dict[str, list[dict]] = {}
    for row in daily.sort_values("day").itertuples():
        for a in state.add_cost(row.day.toordinal(), row.service, row.project_id, row.resource_name, "sku",
                                row.net_cost):
            raised.setdefault(a["anomaly_id"], []).append(a)
    for a in state.flush():
        raised.setdefault(a["anomaly_id"], []).append(a)
    assert _decided(raised) == batch
    by_id = cells.set_index("anomaly_id")
    for aid in batch:
        final = raised[aid][-1]
        assert final["expected"] == pytest.approx(by_id.loc[aid, "expected"], rel=1e-6)
        assert final["score"] == pytest.approx(by_id.loc[aid, "score"], rel=1e-6)


@pytest.mark.parametrize("late", [False, True])
def test_realtime_reaches_the_batch_persistent_scores(late):
    """A modest rise over a whole cell for ten days, flagged on some days only by its persistent score: event by
    event the same anomalies and scores, also when a row of the rise comes late and its days are re-judged."""
    from tests.test_anomaly import CUTOFF, Org

    org = Org(n_cells=4, seed=1)
    for r in ("r2-0", "r2-1", "r2-2"):
        org.scale(2, r, 280, 10, 1.12)
    daily = org.daily()
    detector = CostAnomalyDetector(28, 50, 0, threshold_up=6.0, threshold_down=6.0, min_pct_deviation=5.0)
    detector.fit(daily[daily.day <= CUTOFF])
    cells = detector.score(daily)
    batch = set(cells.loc[cells.is_anomaly, "anomaly_id"])
    today_only = CostAnomalyDetector(28, 50, 0, threshold_up=6.0, threshold_down=6.0, min_pct_deviation=5.0,
                                     persist_days=1).fit(daily[daily.day <= CUTOFF]).score(daily)
    assert set(today_only.loc[today_only.is_anomaly, "anomaly_id"]) < batch
    rows = daily.sort_values("day").reset_index(drop=True)
    held = rows[(rows.day == org.days[283]) & (rows.resource_name == "r2-1")].index if late else []
    state = RealtimeState.from_detector(detector, lateness_days=0)
    raised: dict[str, list[dict]] = {}

    def add(row):
        for a in state.add_cost(row.day.toordinal(), row.service, row.project_id, row.resource_name, "sku",
                                row.net_cost):
            raised.setdefault(a["anomaly_id"], []).append(a)

    for i, row in enumerate(rows.itertuples()):
        if i not in held:
            add(row)
        if late and row.day == org.days[287] and i + 1 < len(rows) and rows.day[i + 1] > row.day:
            add(next(rows.loc[held].itertuples()))  # days 283-286 closed: re-judged
    for a in state.flush():
        raised.setdefault(a["anomaly_id"], []).append(a)
    assert state.counters["rejudged_days"] > 0 if late else state.counters["rejudged_days"] == 0
    assert _decided(raised) == batch
    by_id = cells.set_index("anomaly_id")
    for aid in batch if not late else ():  # a re-judged day that stays anomalous publishes nothing new
        assert raised[aid][-1]["score"] == pytest.approx(by_id.loc[aid, "score"], rel=1e-6)
