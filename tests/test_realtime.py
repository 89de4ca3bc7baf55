"""The real-time detector: the batch detector's decisions event by event, state that survives a restart, the cause
of each anomaly, and clear reasons for events it cannot judge."""

from __future__ import annotations

import json

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


@pytest.mark.parametrize("lateness_days", [0, 2])
def test_realtime_reaches_the_batch_decisions(fitted, lateness_days):
    detector, cells, events = fitted
    state = RealtimeState.from_detector(detector, lateness_days=lateness_days)
    raised = _stream(events, state)
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
    for aid in batch:
        final = raised[aid][-1]
        row = by_id.loc[aid]
        assert final["direction"] == row.direction
        if final["status"] == "confirmed":  # decided on the complete day: the batch's figures
            assert final["expected"] == pytest.approx(row.expected, rel=1e-6, abs=1e-4)
            assert final["impact"] == pytest.approx(row.impact, rel=1e-6, abs=1e-4)
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
    # Events delivered twice (replayed from an older offset) are late once their day closed, and an anomaly already
    # raised is not raised again (its open days' costs would double: the stream restarts from the state's offsets).
    again = _stream(events[half:], restored)
    assert not any(a["status"] == "open" and k in got for k, v in again.items() for a in v)
    assert restored.counters["late_events"] > 0


def test_load_of_a_missing_or_corrupt_state_is_a_clear_error(tmp_path):
    from finops_ml.errors import FinopsError

    with pytest.raises(FinopsError, match="does not exist"):
        RealtimeState.load(tmp_path / "nope.pkl")
    (tmp_path / "bad.pkl").write_bytes(b"not a pickle")
    with pytest.raises(FinopsError, match="cannot be read"):
        RealtimeState.load(tmp_path / "bad.pkl")


def test_late_and_non_usage_events_are_counted_not_judged(fitted, billing_record):
    detector, _, events = fitted
    state = RealtimeState.from_detector(detector, lateness_days=0)
    _stream(events[:5000], state)
    late = billing_record(usage_start_time="2000-01-01T00:00:00Z")
    tax = billing_record(cost_type="tax", usage_start_time="2030-01-01T00:00:00Z")
    assert detect_anomaly_realtime(late, state) == []
    assert detect_anomaly_realtime(tax, state) == []
    assert state.counters["late_events"] == 1
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
