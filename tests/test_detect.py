"""`finops-ml detect` on any series: synthetic series with known anomalies at 5-minute, hourly and daily cadence
(rises, drops, lasting shifts, bursts), the season found in the data, the alarm budget, odd timestamps, the CLI and
its errors on malformed CSV; and anomaly feedback (`finops-ml feedback`, and how verdicts become training labels).
How it fares on real labelled series: benchmarks/nab_detect.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from finops_ml.models.anomaly import FEEDBACK_COLUMNS, labels_with_feedback, read_feedback
from finops_ml.models.series import SeriesAnomalyDetector, detect
from testsupport.cli import finops_ml, one_error_sentence

CADENCES = {"5min": (288, 21), "h": (24, 60), "D": (7, 156)}  # points per season, seasons: 3 weeks, 2 months, 3 years


def _series(freq: str, seed: int, noise: float = 0.05) -> pd.DataFrame:
    """A usage series with a seasonal profile (a day, or a week for daily data) and multiplicative noise."""
    period, seasons = CADENCES[freq]
    n = period * seasons
    rng = np.random.default_rng(seed)
    phase = np.arange(n) % period
    value = 80 * (1 + 0.5 * np.sin(2 * np.pi * phase / period)) * rng.lognormal(0, noise, n)
    return pd.DataFrame({"timestamp": pd.date_range("2026-01-01", periods=n, freq=freq, tz="UTC"), "value": value})


def _inject(frame: pd.DataFrame, period: int, seed: int, rises: int, drops: int) -> list[tuple[int, int, int]]:
    """Spikes (x1.8-3) and drops (x0.1-0.4) of 1-2 points, at least half a season apart, after three seasons of
    history; returns (first, last, sign) of each."""
    rng = np.random.default_rng(seed)
    n = len(frame)
    slots = np.arange(3 * period, n - period, max(period // 2, 3))
    starts = np.sort(rng.choice(slots, rises + drops, replace=False))
    signs = rng.permutation([1] * rises + [-1] * drops)
    injected = []
    for start, sign in zip(starts, signs):
        last = start + int(rng.integers(0, 2))
        factor = rng.uniform(1.8, 3.0) if sign > 0 else rng.uniform(0.1, 0.4)
        frame.loc[start:last, "value"] *= factor
        injected.append((int(start), int(last), int(sign)))
    return injected


def _found_and_false(flags: np.ndarray, injected: list[tuple[int, int, int]], slack: int) -> tuple[int, int]:
    """Injected anomalies with an alarm on them, and alarm runs that start more than `slack` points after any."""
    found = sum(bool(flags[a:b + 1].any()) for a, b, _ in injected)
    near = np.zeros(len(flags), bool)
    for a, b, _ in injected:
        near[a:b + 1 + slack] = True
    starts = np.flatnonzero(flags & ~np.r_[False, flags[:-1]])
    return found, int((~near[starts]).sum())


@pytest.mark.unit
@pytest.mark.parametrize("freq", CADENCES)
def test_rises_and_drops_are_found_at_any_cadence(freq):
    period = CADENCES[freq][0]
    frame = _series(freq, seed=1)
    injected = _inject(frame, period, seed=2, rises=2, drops=2)
    scored = detect(frame)
    flags = scored.is_anomaly.to_numpy()
    found, false = _found_and_false(flags, injected, slack=12)
    assert found == 4 and false <= 1, (freq, found, false)
    assert flags.mean() < 0.01
    assert scored.score.iloc[:period].isna().all()  # the first season only warms the baseline up
    for a, b, sign in injected:  # the expected value is the seasonal profile, not the anomaly
        truth = 80 * (1 + 0.5 * np.sin(2 * np.pi * (a % period) / period))
        assert abs(scored.expected[a] / truth - 1) < 0.15


@pytest.mark.unit
@pytest.mark.parametrize("freq", CADENCES)
def test_direction_selects_rises_or_drops(freq):
    period = CADENCES[freq][0]
    frame = _series(freq, seed=3)
    injected = _inject(frame, period, seed=4, rises=2, drops=2)
    rises = [i for i in injected if i[2] > 0]
    drops = [i for i in injected if i[2] < 0]
    up = detect(frame, SeriesAnomalyDetector(direction="up")).is_anomaly.to_numpy()
    down = detect(frame, SeriesAnomalyDetector(direction="down")).is_anomaly.to_numpy()
    assert _found_and_false(up, rises, slack=12)[0] == 2 and _found_and_false(up, drops, slack=0)[0] == 0
    assert _found_and_false(down, drops, slack=12)[0] == 2 and _found_and_false(down, rises, slack=0)[0] == 0


@pytest.mark.unit
@pytest.mark.parametrize("freq", CADENCES)
@pytest.mark.parametrize("factor", [1.6, 0.5])
def test_a_lasting_shift_is_flagged_then_becomes_the_new_normal(freq, factor):
    period = CADENCES[freq][0]
    frame = _series(freq, seed=5)
    start = len(frame) // 2
    frame.loc[start:, "value"] *= factor
    scored = detect(frame)
    flags = scored.is_anomaly.to_numpy()
    assert flags[start:start + 3].any() and flags[:start].sum() <= 1  # (a 4-sigma noise point may pass)
    assert flags[start:start + period].sum() >= min(3, period // 4)  # it is flagged for a while ...
    assert flags[start + period:].sum() <= 1  # ... and accepted within a season
    after = slice(start + 2 * period, None)
    assert np.median(np.abs(scored.expected[after] / scored.value[after] - 1)) < 0.1


@pytest.mark.unit
def test_a_burst_is_one_alarm_that_lasts_until_the_series_is_normal_again():
    frame = _series("5min", seed=6)
    rng = np.random.default_rng(0)
    burst = np.arange(3000, 3036)  # three hours of erratic values, some normal-looking
    frame.loc[burst, "value"] *= rng.choice([0.3, 1.0, 2.5], 36)
    flags = detect(frame).is_anomaly.to_numpy()
    held = detect(frame, SeriesAnomalyDetector(until_normal=False)).is_anomaly.to_numpy()
    runs = lambda f: int((f & ~np.r_[False, f[:-1]]).sum())  # noqa: E731
    assert flags[burst].mean() > 0.9 and runs(flags) <= 2  # (the burst opens with one spike, then two calm points)
    assert runs(held) > runs(flags) and held.sum() < flags.sum()
    assert not flags[3036 + 12:].any()


@pytest.mark.unit
def test_the_season_is_found_in_the_data():
    det = SeriesAnomalyDetector()
    daily_profile = _series("5min", seed=7)
    assert det.period(daily_profile.value.to_numpy(), pd.Timedelta("5min")) == 288  # not the week it also repeats
    hourly = _series("h", seed=7)
    weekend = hourly.timestamp.dt.dayofweek.to_numpy() >= 5
    hourly.loc[weekend, "value"] *= 0.4
    assert det.period(hourly.value.to_numpy(), pd.Timedelta("1h")) == 168
    daily = _series("D", seed=7)
    assert det.period(daily.value.to_numpy(), pd.Timedelta("1D")) == 7
    noise = np.random.default_rng(7).normal(100, 5, 4000)
    assert det.period(noise, pd.Timedelta("5min")) == 1


@pytest.mark.unit
def test_the_budget_caps_point_alarms_of_a_heavy_tailed_series():
    rng = np.random.default_rng(8)
    n = 288 * 14
    value = 50 + rng.standard_t(2, n) * 3  # bursts are part of this series' normal life
    frame = pd.DataFrame({"timestamp": pd.date_range("2026-01-01", periods=n, freq="5min"), "value": value})
    capped = detect(frame, SeriesAnomalyDetector(until_normal=False)).is_anomaly.mean()
    free = detect(frame, SeriesAnomalyDetector(until_normal=False, budget=0)).is_anomaly.mean()
    assert capped <= 0.0075 < free
    frame.loc[2500, "value"] = 500  # an outlier beyond the series' usual extremes is still found
    assert detect(frame).is_anomaly[2500]


@pytest.mark.unit
def test_irregular_unsorted_and_sparse_timestamps():
    frame = _series("5min", seed=10)
    frame.loc[3000, "value"] *= 3
    jitter = pd.to_timedelta(np.random.default_rng(0).integers(-90, 90, len(frame)), unit="s")
    frame["timestamp"] = frame.timestamp + jitter  # a sensor that reports roughly every 5 minutes
    det = SeriesAnomalyDetector()
    shuffled = frame.sample(frac=1, random_state=1)
    expected, z = det.robust_z(shuffled.timestamp, shuffled.value)  # results come back in the input's order
    assert np.nanargmax(np.abs(z)) == shuffled.index.get_loc(3000)
    times = pd.DatetimeIndex(["2016-01-01 00:00:00", "2016-01-01 00:00:01"], tz="UTC").append(
        pd.date_range("2026-01-01", periods=300, freq="1s", tz="UTC"))
    bursts = pd.DataFrame({"timestamp": times, "value": np.random.default_rng(1).normal(1.0, 0.01, 302)})
    bursts.loc[200, "value"] = 50.0
    scored = detect(bursts)  # ten years between two bursts of 1-second points: scored in order, no huge grid
    assert len(scored) == 302 and scored.is_anomaly[200]


@pytest.mark.unit
@pytest.mark.parametrize("kwargs, message", [({"direction": "sideways"}, "direction must be one of"),
                                             ({"budget": 1.5}, "budget must be a share"),
                                             ({"threshold": 0}, "thresholds must be positive")])
def test_bad_parameters_are_one_sentence(kwargs, message):
    from finops_ml.errors import FinopsError

    with pytest.raises(FinopsError, match=message):
        SeriesAnomalyDetector(**kwargs)


@pytest.mark.cli
def test_detect_cli_on_five_minute_data_with_series_ids(tmp_path):
    parts, truths = [], {}
    for sid, seed in (("vm-a", 11), ("vm-b", 12)):
        frame = _series("5min", seed=seed)
        truths[sid] = _inject(frame, 288, seed=seed, rises=2, drops=1)
        parts.append(frame.assign(series_id=sid))
    frame = pd.concat(parts).sample(frac=1, random_state=0)
    frame["timestamp"] = frame.timestamp.dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    frame.to_csv(tmp_path / "in.csv", index=False)
    result = finops_ml("detect", "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out.csv"))
    assert result.returncode == 0, result.stderr
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == ["timestamp", "series_id", "score", "is_anomaly", "expected"]
    assert len(out) == len(frame)
    for sid, injected in truths.items():
        assert _found_and_false(out[out.series_id == sid].is_anomaly.to_numpy(), injected, slack=12) == (3, 0), sid


@pytest.mark.cli
def test_detect_cli_on_daily_data_without_series_id(tmp_path):
    frame = _series("D", seed=13)
    injected = _inject(frame, 7, seed=14, rises=2, drops=2)
    frame.assign(timestamp=frame.timestamp.dt.date).to_csv(tmp_path / "daily.csv", index=False)
    out_path = tmp_path / "o.csv"
    result = finops_ml("detect", "--input", str(tmp_path / "daily.csv"), "--output", str(out_path))
    assert result.returncode == 0, result.stderr
    out = pd.read_csv(out_path)
    assert list(out.columns) == ["timestamp", "score", "is_anomaly", "expected"]
    found, false_alarms = _found_and_false(out.is_anomaly.to_numpy(), injected, slack=12)
    assert found == 4 and false_alarms <= 1  # three years of days: the default budget allows 0.5% of them
    result = finops_ml("detect", "--input", str(tmp_path / "daily.csv"), "--output", str(out_path),
                       "--direction", "up")
    assert result.returncode == 0, result.stderr
    assert _found_and_false(pd.read_csv(out_path).is_anomaly.to_numpy(), injected, slack=12)[0] == 2


@pytest.mark.cli
def test_detect_cli_bad_option_is_one_sentence(tmp_path):
    frame = _series("h", seed=17)
    frame.to_csv(tmp_path / "in.csv", index=False)
    result = finops_ml("detect", "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "o.csv"),
                       "--budget", "2")
    assert "budget must be a share" in one_error_sentence(result)
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.cli
@pytest.mark.parametrize("content, message", [
    ("timestamp,value\n2026-01-01,1\nnot-a-date,2\n", "line 3: timestamp 'not-a-date' is not a date"),
    ("timestamp,value\n2026-01-01,1\n2026-01-02,abc\n", "line 3: value 'abc' is not a number"),
    ("time,cost\n2026-01-01,1\n", "lacks the column(s) timestamp, value"),
    ("", "is empty"),
    ("timestamp,value\n", "has a header but no rows"),
    ('timestamp,value\n2026-01-01,"1\n', "not a valid CSV"),
])
@pytest.mark.cli
def test_detect_cli_names_what_is_wrong_with_a_malformed_csv(tmp_path, content, message):
    (tmp_path / "bad.csv").write_text(content)
    result = finops_ml("detect", "--input", str(tmp_path / "bad.csv"), "--output", str(tmp_path / "o.csv"))
    assert message in one_error_sentence(result)
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.cli
def test_detect_cli_missing_input(tmp_path):
    result = finops_ml("detect", "--input", str(tmp_path / "nope.csv"), "--output", str(tmp_path / "o.csv"))
    assert "does not exist" in one_error_sentence(result)


# ---- feedback --------------------------------------------------------------------------------------------------------

@pytest.mark.unit
def test_feedback_turns_verdicts_into_training_labels():
    truth = pd.DataFrame({"date": ["2026-01-05", "2026-01-06"], "service": ["BigQuery"] * 2,
                          "project_id": ["p1"] * 2, "material": [True, True]})
    feedback = pd.DataFrame({"anomaly_id": ["a", "b", "c"], "day": ["2026-01-05", "2026-02-01", "2026-02-01"],
                             "service": ["BigQuery", "GKE", "GKE"], "project_id": ["p1", "p2", "p2"],
                             "verdict": ["expected", "expected", "unexpected"], "note": "", "marked_at": ""})
    labels = labels_with_feedback(truth, feedback).set_index(["date", "service", "project_id"]).material
    assert not labels[("2026-01-05", "BigQuery", "p1")]  # a planned change: not an anomaly any more
    assert labels[("2026-01-06", "BigQuery", "p1")]
    assert labels[("2026-02-01", "GKE", "p2")]  # the latest verdict wins
    assert len(labels) == 3
    only_feedback = labels_with_feedback(None, feedback)
    assert list(only_feedback.columns) == ["date", "service", "project_id", "material"]
    assert labels_with_feedback(truth, None) is truth


@pytest.mark.cli
def test_feedback_cli_appends_a_verdict_that_read_feedback_accepts(tmp_path):
    anomalies = tmp_path / "anomalies.csv"
    pd.DataFrame({"anomaly_id": ["anom-1"], "day": ["2026-03-02"], "service": ["Cloud Storage"],
                  "project_id": ["acme-corp-data-platform"], "impact": [120.0]}).to_csv(anomalies, index=False)
    file = tmp_path / "feedback.csv"
    for verdict in ("unexpected", "expected"):
        result = finops_ml("feedback", "anom-1", "--verdict", verdict, "--anomalies", str(anomalies),
                           "--file", str(file), "--note", "planned backfill")
        assert result.returncode == 0, result.stderr
    marks = read_feedback(file)
    assert list(marks.columns) == FEEDBACK_COLUMNS and list(marks.verdict) == ["unexpected", "expected"]
    assert marks.day.iloc[0] == "2026-03-02" and marks.project_id.iloc[0] == "acme-corp-data-platform"
    bad = finops_ml("feedback", "anom-2", "--verdict", "expected", "--anomalies", str(anomalies), "--file", str(file))
    assert "anom-2 is not in" in one_error_sentence(bad)
    bad = finops_ml("feedback", "anom-1", "--verdict", "maybe", "--anomalies", str(anomalies), "--file", str(file))
    assert "--verdict must be one of" in one_error_sentence(bad)


@pytest.mark.unit
def test_malformed_feedback_file_is_a_clear_error(tmp_path):
    from finops_ml.errors import FinopsError

    path = tmp_path / "f.csv"
    path.write_text("day,service,project_id,verdict\n2026-01-01,a,b,perhaps\n")
    with pytest.raises(FinopsError, match="line 2: verdict 'perhaps'"):
        read_feedback(path)
