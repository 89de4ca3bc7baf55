"""`finops-ml detect` on any series (5-minute, daily, several series), its errors on malformed CSV, and anomaly
feedback (`finops-ml feedback`, and how verdicts become training labels)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from finops_ml.models.anomaly import FEEDBACK_COLUMNS, labels_with_feedback, read_feedback
from finops_ml.models.metrics import precision_recall_f1
from finops_ml.models.series import SeriesAnomalyDetector, detect
from testsupport.cli import finops_ml, one_error_sentence


def _series(freq: str, n: int, period: int, seed: int, n_anomalies: int = 12) -> tuple[pd.DataFrame, np.ndarray]:
    """A cost series with a seasonal profile, 5% multiplicative noise and spikes of 1-3 points (x1.5-3)."""
    rng = np.random.default_rng(seed)
    t = pd.date_range("2026-01-01", periods=n, freq=freq, tz="UTC")
    phase = np.arange(n) % period
    v = 80 * (1 + 0.5 * np.sin(2 * np.pi * phase / period)) * rng.lognormal(0, 0.05, n)
    truth = np.zeros(n, bool)
    for s in rng.choice(np.arange(3 * period, n - 5, 7), n_anomalies, replace=False):
        length = int(rng.integers(1, 4))
        v[s:s + length] *= rng.uniform(1.5, 3.0)
        truth[s:s + length] = True
    return pd.DataFrame({"timestamp": t, "value": v}), truth


@pytest.mark.parametrize("freq, n, period", [("5min", 288 * 21, 288), ("h", 24 * 45, 24), ("D", 400, 7)])
@pytest.mark.unit
def test_detector_finds_spikes_at_any_cadence(freq, n, period):
    frame, truth = _series(freq, n, period, seed=1)
    scored = detect(frame)
    _, recall, f1 = precision_recall_f1(truth, scored.is_anomaly.to_numpy())
    assert f1 >= 0.9 and recall >= 0.9, (freq, f1)
    assert scored.score.isna().sum() >= period  # the first season only warms the baseline up


@pytest.mark.unit
def test_a_lasting_level_shift_becomes_the_new_normal():
    frame, _ = _series("D", 300, 7, seed=2, n_anomalies=0)
    frame.loc[150:, "value"] *= 2.0
    flagged = detect(frame).is_anomaly.to_numpy()
    assert flagged[150:154].all()  # the shift is flagged when it happens ...
    assert not flagged[180:].any()  # ... and accepted once it has lasted a season


@pytest.mark.unit
def test_direction_both_flags_drops():
    frame, _ = _series("h", 24 * 30, 24, seed=3, n_anomalies=0)
    frame.loc[500, "value"] = 0.0
    assert not detect(frame).is_anomaly[500]
    assert detect(frame, SeriesAnomalyDetector(direction="both")).is_anomaly[500]


@pytest.mark.cli
def test_detect_cli_on_five_minute_data_with_series_ids(tmp_path):
    a, truth_a = _series("5min", 288 * 10, 288, seed=4, n_anomalies=6)
    b, truth_b = _series("5min", 288 * 10, 288, seed=5, n_anomalies=6)
    frame = pd.concat([a.assign(series_id="vm-a"), b.assign(series_id="vm-b")]).sample(frac=1, random_state=0)
    frame["timestamp"] = frame.timestamp.dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    frame.to_csv(tmp_path / "in.csv", index=False)
    result = finops_ml("detect", "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out.csv"))
    assert result.returncode == 0, result.stderr
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == ["timestamp", "series_id", "score", "is_anomaly", "expected"]
    assert len(out) == len(frame)
    for sid, truth in (("vm-a", truth_a), ("vm-b", truth_b)):
        _, _, f1 = precision_recall_f1(truth, out[out.series_id == sid].is_anomaly.to_numpy())
        assert f1 >= 0.85, sid


@pytest.mark.cli
def test_detect_cli_on_daily_data_without_series_id(tmp_path):
    frame, truth = _series("D", 365, 7, seed=6, n_anomalies=8)
    frame.assign(timestamp=frame.timestamp.dt.date).to_csv(tmp_path / "daily.csv", index=False)
    result = finops_ml("detect", "--input", str(tmp_path / "daily.csv"), "--output", str(tmp_path / "o.csv"))
    assert result.returncode == 0, result.stderr
    out = pd.read_csv(tmp_path / "o.csv")
    assert list(out.columns) == ["timestamp", "score", "is_anomaly", "expected"]
    assert precision_recall_f1(truth, out.is_anomaly.to_numpy())[2] >= 0.9


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
