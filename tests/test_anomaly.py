"""The cost anomaly detector on small synthetic series: what it flags, what it does not, and that it stays honest
(threshold from training labels only, causal features)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from finops_ml.models.anomaly import CostAnomalyDetector, ResourcePanel, best_threshold, train_and_evaluate

pytestmark = pytest.mark.unit

START = pd.Timestamp("2025-01-01")
N_DAYS = 330  # Jan 1 .. Nov 26: training to the end of August, holdout September .. November
CUTOFF = pd.Timestamp("2025-08-31")
HOLDOUT = 3


def _day(i: int) -> pd.Timestamp:
    return START + pd.Timedelta(days=i)


class Org:
    """Cells of a few resources each: weekly seasonality, 4% lognormal noise, anomalies added per resource."""

    def __init__(self, n_cells: int = 8, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.days = pd.date_range(START, periods=N_DAYS, freq="D")
        weekend = np.where(self.days.dayofweek >= 5, 0.8, 1.0)
        self.res = {}  # (cell, resource) -> daily cost (NaN = not running)
        for c in range(n_cells):
            for r in range(3):
                base = self.rng.uniform(20, 100)
                self.res[(c, f"r{c}-{r}")] = base * weekend * self.rng.lognormal(0, 0.04, N_DAYS)
        self.truth = []

    def cell_cost(self, c: int) -> np.ndarray:
        return np.nansum([v for (cc, _), v in self.res.items() if cc == c], axis=0)

    def inject(self, kind: str, c: int, start: int, length: int, size: float) -> list[pd.Timestamp]:
        """Add an anomaly to the cell's first resource; label material days (extra >= 25% of the cell)."""
        normal = self.cell_cost(c)[start:start + length]
        ramp = {"spike": np.ones(length), "level_shift": np.ones(length),
                "drift": np.linspace(1.0 / length, 1.0, length)}[kind]
        delta = normal * size * ramp
        self.res[(c, f"r{c}-0")][start:start + length] += delta
        material = delta >= 0.25 * normal
        for i in range(length):
            self.truth.append(dict(date=_day(start + i).date().isoformat(), service="svc", project_id=f"p{c}",
                                   kind=kind, material=bool(material[i])))
        return [_day(start + i) for i in range(length) if material[i]]

    def add_resource(self, c: int, start: int, level: float) -> None:
        """A new resource: absent before `start`, then ramping from 30% to 100% of `level` over 21 days."""
        t = np.arange(N_DAYS) - start
        cost = level * np.clip(0.3 + 0.7 * t / 21.0, 0.3, 1.0) * self.rng.lognormal(0, 0.04, N_DAYS)
        self.res[(c, f"new-{c}-{start}")] = np.where(t >= 0, cost, np.nan)

    def daily(self, detail: bool = True) -> pd.DataFrame:
        rows = []
        """Daily cost per resource (the resource_daily_cost view), or per cell when `detail` is False."""
        cells = sorted({c for c, _ in self.res})
        for c in cells:
            names = sorted(r for cc, r in self.res if cc == c)
            for i, day in enumerate(self.days):
                present = [(n, self.res[(c, n)][i]) for n in names if np.isfinite(self.res[(c, n)][i])]
                if detail:
                    rows += [dict(day=day, service="svc", project_id=f"p{c}", resource_name=n, net_cost=v)
                             for n, v in present]
                else:
                    rows.append(dict(day=day, service="svc", project_id=f"p{c}", net_cost=sum(v for _, v in present)))
        return pd.DataFrame(rows)

    def truth_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.truth, columns=["date", "service", "project_id", "kind", "material"])


@pytest.fixture(scope="module")
def scenario():
    org = Org()
    # Training window: anomalies of each kind, so that the threshold has labels to learn from.
    for kind, c, start, length, size in [("spike", 0, 80, 2, 2.0), ("level_shift", 1, 100, 10, 0.8),
                                         ("drift", 2, 120, 20, 1.5), ("spike", 3, 150, 1, 1.5),
                                         ("level_shift", 4, 170, 8, 1.0), ("drift", 5, 190, 16, 1.2)]:
        org.inject(kind, c, start, length, size)
    org.add_resource(6, 130, 120.0)  # a new resource in training too: new spend, not an anomaly
    # Holdout (September .. November): one of each, and a new resource that doubles a cell's cost.
    flagged = {
        "spike": org.inject("spike", 0, 250, 2, 2.0),
        "level_shift": org.inject("level_shift", 1, 262, 10, 0.8),
        "drift": org.inject("drift", 2, 275, 20, 1.5),
    }
    org.add_resource(3, 265, 200.0)
    daily, truth = org.daily(), org.truth_frame()
    result = train_and_evaluate(daily, truth, HOLDOUT, 28, 50, 0)
    return org, daily, truth, flagged, result


def _flagged(cells: pd.DataFrame, project: str) -> set:
    return set(cells[(cells.project_id == project) & cells.is_anomaly].day)


def test_spike_level_shift_and_drift_are_flagged(scenario):
    _, _, _, material, result = scenario
    cells = result["cells"]
    assert set(material["spike"]) <= _flagged(cells, "p0")
    assert len(set(material["level_shift"]) & _flagged(cells, "p1")) >= 0.8 * len(material["level_shift"])
    # A drift's days become material as it grows; most of them (the later days above all) are flagged.
    drift_hits = set(material["drift"]) & _flagged(cells, "p2")
    assert len(drift_hits) >= 0.7 * len(material["drift"])
    assert max(material["drift"]) in drift_hits
    m = result["metrics"]
    assert m["holdout_start"] == "2025-09-01" and m["train_end"] == "2025-08-31"
    assert m["anomaly_f1"] >= 0.85 and m["precision"] >= 0.85


def test_a_new_resource_is_new_spend_not_an_anomaly(scenario):
    _, _, _, _, result = scenario
    cells = result["cells"]
    p3 = cells[cells.project_id == "p3"].set_index("day").net_cost
    assert p3[_day(265 + 28)] > 1.5 * p3[_day(264)]  # the cell's cost really did rise
    new = cells[(cells.project_id == "p3") & (cells.day >= _day(265))]
    assert not new.is_anomaly.any()
    assert new.new_cost.iloc[:20].gt(0).all()  # reported as new spend while the resource ramps up
    assert not cells[(cells.project_id == "p6") & (cells.day >= _day(130))].is_anomaly.any()


def test_threshold_comes_from_training_labels_only(scenario):
    org, daily, truth, _, result = scenario
    train = daily[daily.day <= CUTOFF]
    base = CostAnomalyDetector(28, 50, 0).fit(train, truth)
    # Whatever the holdout labels say, the threshold learnt on the training window is the same.
    holdout_days = [d.date().isoformat() for d in org.days if d > CUTOFF]
    noisy = pd.concat([truth[pd.to_datetime(truth.date) <= CUTOFF],
                       pd.DataFrame(dict(date=holdout_days[::3], service="svc", project_id="p7", kind="spike",
                                         material=True))])
    assert CostAnomalyDetector(28, 50, 0).fit(train, noisy).threshold_ == base.threshold_
    assert train_and_evaluate(daily, noisy, HOLDOUT, 28, 50, 0)["metrics"]["threshold"] == \
        result["metrics"]["threshold"] == base.threshold_
    # ... and it does depend on the training labels.
    fewer = truth[~((truth.project_id == "p2") & (pd.to_datetime(truth.date) <= CUTOFF))]
    assert CostAnomalyDetector(28, 50, 0).fit(train, fewer).threshold_ != base.threshold_


def test_features_are_causal(scenario):
    _, daily, truth, _, _ = scenario
    detector = CostAnomalyDetector(28, 50, 0).fit(daily[daily.day <= CUTOFF], truth)
    before = detector.score(daily)
    cut = _day(240)
    changed = daily.copy()
    future = changed.day >= cut
    changed.loc[future, "net_cost"] *= 3.0
    newcomer = changed[changed.day == cut + pd.Timedelta(days=5)].assign(resource_name="zz", net_cost=500.0)
    changed = pd.concat([changed, newcomer.drop_duplicates(["day", "service", "project_id"])], ignore_index=True)
    after = detector.score(changed)
    cols = ["expected", "robust_z", "log_ratio", "log_ratio_3d", "score", "is_anomaly"]
    past_before = before[before.day < cut].reset_index(drop=True)
    past_after = after[after.day < cut].reset_index(drop=True)
    pd.testing.assert_frame_equal(past_before[cols], past_after[cols])
    assert (after[after.day >= cut].score > before[before.day >= cut].score.to_numpy()).any()


def test_without_resource_detail_a_cell_is_one_resource(scenario):
    org, _, truth, material, _ = scenario
    daily = org.daily(detail=False)
    panel = ResourcePanel.from_daily(daily)
    assert len(panel.resources) == daily.project_id.nunique()
    cells = train_and_evaluate(daily, truth, HOLDOUT, 28, 50, 0)["cells"]
    assert set(material["spike"]) <= _flagged(cells, "p0")


def test_best_threshold_maximises_training_f1():
    scores = np.array([0.0, 0.1, 0.2, 0.3, 0.9, 0.8, 0.7, 0.25])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1], bool)
    t = best_threshold(scores, labels)
    # Flagging down to 0.25 (one false alarm, every anomaly) has F1 8/9, better than the top three alone (6/7).
    assert 0.2 < t <= 0.25
    assert ((scores >= t) == np.array([0, 0, 0, 1, 1, 1, 1, 1], bool)).all()
    assert best_threshold(np.zeros(3), np.ones(3, bool)) == float("inf")  # nothing rose: flag nothing


def test_without_labels_the_detector_trains_but_f1_is_not_measured(scenario):
    _, daily, _, _, _ = scenario
    result = train_and_evaluate(daily, None, HOLDOUT, 28, 50, 0)
    assert np.isnan(result["metrics"]["anomaly_f1"])  # nothing to measure: the gate cannot pass
    assert 0 < result["model"].threshold_ < np.inf
