"""The cost anomaly detector on small synthetic series: what it flags (rises and drops, at the resource and at the
cell), what it does not, and that it stays honest (thresholds without labels or from the training window's labels
only, causal features, nothing tied to the cost scale)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from finops_ml.config import Config
from finops_ml.errors import InsufficientData
from finops_ml.models.anomaly import (
    CostAnomalyDetector,
    ResourcePanel,
    best_threshold,
    cell_z,
    persistent_z,
    refine_threshold,
    same_way,
    train_and_evaluate,
)
from finops_ml.training import gates

pytestmark = pytest.mark.unit

START = pd.Timestamp("2025-01-01")
N_DAYS = 330  # Jan 1 .. Nov 26: training to the end of August, holdout September .. November
CUTOFF = pd.Timestamp("2025-08-31")
HOLDOUT = 3
ONE_DRAW = {"draws": 1}


def _day(i: int) -> pd.Timestamp:
    return START + pd.Timedelta(days=i)


class Org:
    """Cells of a few resources each: weekly seasonality, 4% lognormal noise, anomalies added per resource."""

    def __init__(self, n_cells: int = 8, seed: int = 0, per_cell: int = 3, noise: float = 0.04):
        self.rng = np.random.default_rng(seed)
        self.days = pd.date_range(START, periods=N_DAYS, freq="D")
        weekend = np.where(self.days.dayofweek >= 5, 0.8, 1.0)
        self.res = {}  # (cell, resource) -> daily cost (NaN = not running)
        for c in range(n_cells):
            for r in range(per_cell):
                base = self.rng.uniform(20, 100)
                self.res[(c, f"r{c}-{r}")] = base * weekend * self.rng.lognormal(0, noise, N_DAYS)
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

    def scale(self, c: int, resource: str, start: int, length: int, factor: float) -> list[pd.Timestamp]:
        """Multiply one resource's cost (NaN factor: it bills nothing) over a window; return the window's days."""
        self.res[(c, resource)][start:start + length] *= factor
        return [_day(start + i) for i in range(length)]

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
    result = train_and_evaluate(daily, truth, HOLDOUT, 28, 50, 0, injection=ONE_DRAW)
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
    assert m["evaluation"]["used"] == "ground_truth" and m["threshold_source_up"] == "ground_truth"
    assert m["anomaly_f1"] == m["evaluation"]["ground_truth"]["f1"] >= 0.85 and m["precision"] >= 0.85
    assert np.isfinite(m["evaluation"]["injected"]["f1"])  # measured beside the truth


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
    assert train_and_evaluate(daily, noisy, HOLDOUT, 28, 50, 0, injection=ONE_DRAW)["metrics"]["threshold"] == \
        result["metrics"]["threshold"] == base.threshold_
    # ... and it does depend on the training labels (only the large spikes labelled: a higher threshold).
    fewer = truth[truth.project_id == "p0"]
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
    cols = ["expected", "excess", "robust_z", "deviation", "log_ratio", "score", "is_anomaly"]
    past_before = before[before.day < cut].reset_index(drop=True)
    past_after = after[after.day < cut].reset_index(drop=True)
    pd.testing.assert_frame_equal(past_before[cols], past_after[cols])
    assert (after[after.day >= cut].score > before[before.day >= cut].score.to_numpy()).any()


def test_without_resource_detail_a_cell_is_one_resource(scenario):
    org, _, truth, material, _ = scenario
    daily = org.daily(detail=False)
    panel = ResourcePanel.from_daily(daily)
    assert len(panel.resources) == daily.project_id.nunique()
    cells = train_and_evaluate(daily, truth, HOLDOUT, 28, 50, 0, injection=ONE_DRAW)["cells"]
    assert set(material["spike"]) <= _flagged(cells, "p0")


def test_best_threshold_maximises_training_f1():
    scores = np.array([0.0, 0.1, 0.2, 0.3, 0.9, 0.8, 0.7, 0.25])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1], bool)
    t = best_threshold(scores, labels)
    # Flagging down to 0.25 (one false alarm, every anomaly) has F1 8/9, better than the top three alone (6/7).
    assert 0.2 < t <= 0.25
    assert ((scores >= t) == np.array([0, 0, 0, 1, 1, 1, 1, 1], bool)).all()
    assert best_threshold(np.zeros(3), np.ones(3, bool)) == float("inf")  # nothing rose: flag nothing


def test_smoothed_best_threshold_prefers_a_broad_good_region_to_a_needle():
    # Half the anomalies score 12-12.5 with no normal cell above them: exactly at 12 the training F1 peaks (2/3),
    # but 30 normal cells just under 12 make that a needle that a few cells more or less move. The other half
    # score 4-8 among 73 normal cells: F1 0.62-0.66 over that whole band, the region the smoothed curve prefers.
    scores = np.r_[np.linspace(12, 12.5, 50), np.linspace(4, 8, 50), np.linspace(11, 11.9, 30), np.linspace(4, 8, 73),
                   np.linspace(1, 3.9, 2000)]
    labels = np.r_[np.ones(100, bool), np.zeros(2103, bool)]
    assert 11.9 < best_threshold(scores, labels) < 12
    assert 4.5 < best_threshold(scores, labels, smooth=0.25) < 7
    assert best_threshold(np.zeros(3), np.ones(3, bool), smooth=0.25) == float("inf")


def test_persistent_z_adds_up_a_lasting_change_and_not_a_spike_that_ended():
    def score(today, past, var=1.0):
        z = today / np.sqrt(var)
        return float(persistent_z(z, today, var, sum(float(same_way(today, p)) for p in past), var * len(past), 0.0))

    # Two sigmas five days running: 10 / sqrt(5) = 4.47 sigmas.
    assert score(2.0, [2.0] * 4) == pytest.approx(10 / np.sqrt(5))
    # A quiet day after a spike: the spike counts no more than today's own excess (1.5 / sqrt(5) = 0.67).
    assert score(0.5, [10.0, 10.0, 0.0, 0.0]) == pytest.approx(1.5 / np.sqrt(5))
    # A drop: earlier drops count as far as today's, a rise not at all (-6 / sqrt(3)).
    assert float(same_way(-3.0, -5.0)) == -3.0 and float(same_way(-3.0, 1.0)) == 0.0
    assert score(-3.0, [-5.0, 1.0]) == pytest.approx(-6 / np.sqrt(3))
    # A single day's excess among quiet days: today's own score stands (the persistent one is smaller).
    assert score(3.0, [0.0] * 4) == 3.0


def test_a_modest_rise_over_a_whole_cell_for_days_is_flagged_on_more_of_its_days_with_persistence():
    org = Org(n_cells=4, seed=1)
    for r in ("r2-0", "r2-1", "r2-2"):  # +12% on every resource of p2 for 10 days: under 3 sigmas each
        org.scale(2, r, 280, 10, 1.12)
    daily = org.daily()
    flagged = {}
    for k in (1, 5):
        det = CostAnomalyDetector(28, 50, 0, threshold_up=6.0, threshold_down=6.0, min_pct_deviation=5.0,
                                  persist_days=k).fit(daily[daily.day <= CUTOFF])
        cells = det.score(daily)
        flagged[k] = set(cells[cells.is_anomaly & (cells.day > CUTOFF)][["project_id", "day"]].itertuples(index=False))
    window = {("p2", _day(280 + i)) for i in range(10)}
    assert flagged[1] < flagged[5] <= window


def test_cell_z_scores_a_drop_in_log_space_and_a_rise_linearly():
    # A cell expected at 100 with 20% noise: a rise of 50 is 2.5 sigmas, a drop of 90 is log(0.1) / 0.2 = 11.5.
    expected, var, eps = 100.0, 20.0 ** 2, 1e-6
    assert cell_z(50.0, expected, var, eps) == pytest.approx(2.5, rel=1e-6)
    assert cell_z(-90.0, expected, var, eps) == pytest.approx(np.log(0.1) / 0.2, rel=1e-6)
    assert cell_z(-1.0, expected, var, eps) == pytest.approx(-0.05, rel=0.01)  # a small change: the two agree


@pytest.fixture(scope="module")
def clean():
    """An organisation without anomalies, and a detector fitted without labels on its training months."""
    org = Org(seed=3)
    daily = org.daily()
    return org, daily, CostAnomalyDetector(28, 50, 0).fit(daily[daily.day <= CUTOFF])


def test_label_free_training_gets_thresholds_and_an_injected_f1_the_gate_can_pass(clean):
    _, daily, detector = clean
    assert detector.calibration_["up"]["source"] == detector.calibration_["down"]["source"] == "alarm_budget"
    assert 1.0 <= detector.threshold_up_ < 10 and 1.0 <= detector.threshold_down_ < 10
    assert detector.calibration_["up"]["training_alarm_rate"] <= 0.01  # nothing to find: hardly an alarm
    result = train_and_evaluate(daily, None, HOLDOUT, 28, 50, 0, injection={"draws": 3})
    m = result["metrics"]
    injected = m["evaluation"]["injected"]
    assert m["evaluation"]["used"] == "injected" and m["evaluation"]["ground_truth"] is None
    assert m["anomaly_f1"] == injected["f1"] and np.isfinite(m["anomaly_f1"])
    assert injected["draws"] == 3 and injected["alarm_rate_clean"] <= 0.01
    assert injected["recall_by_kind"] == injected["recall_per_kind"]
    assert {"spike", "drop", "spread"} <= set(injected["recall_per_kind"])
    check = gates.check("cost-anomaly", m, Config())["anomaly_f1"]
    assert check["value"] == m["anomaly_f1"] and check["passed"] == (m["anomaly_f1"] >= check["threshold"])
    assert m["anomaly_f1"] >= 0.85, injected["recall_per_kind"]  # clean data: the gate passes without labels


def test_a_drop_and_a_stop_are_found_with_direction_down(clean):
    org, _, detector = clean
    org = Org(seed=3)
    dropped = org.scale(2, "r2-0", 262, 5, 0.1)  # an outage: -90% for 5 days
    stopped = org.scale(4, "r4-1", 280, 2, np.nan)[:detector.stop_days]  # stops billing for 2 days
    org.res[(5, "r5-2")] *= 4.0  # the largest resource of its cell ...
    org.scale(5, "r5-2", 300, N_DAYS - 300, np.nan)  # ... is deleted: a drop for `stop_days` days, then gone
    cells = detector.score(org.daily()).set_index(["project_id", "day"])
    for project, days, resource in (("p2", dropped, "r2-0"), ("p4", stopped, "r4-1"), ("p5", [_day(300)], "r5-2")):
        hit = cells.loc[[(project, d) for d in days]]
        assert hit.is_anomaly.all() and (hit.direction == "down").all(), project
        assert (hit.impact < 0).all() and (hit.pct_deviation <= -25).all()
        assert (hit.cause_resource == resource).all() and hit.cause_share.between(0.9, 1.1).all()
    p4 = cells.loc["p4"]
    assert p4.loc[stopped[0], "net_cost"] < p4.loc[stopped[0], "expected"]  # the cell still bills its others
    gone = cells.loc["p5"]
    gone = gone[gone.index >= _day(300)]
    assert gone.is_anomaly.sum() == detector.stop_days  # then it is gone, not expected any more
    assert not cells.loc["p2"].is_anomaly.drop(dropped).any()
    assert not cells.loc["p4"].is_anomaly.drop(stopped).any()  # its return is no anomaly


def test_new_resources_are_new_spend_but_a_runaway_one_is_found(clean):
    _, _, detector = clean
    org = Org(seed=3)
    org.add_resource(1, 240, 100.0)  # ramps up as usual (30% -> 100% in 3 weeks), then stops: still new spend
    org.res[(1, "new-1-240")][250:] = np.nan
    t = np.arange(N_DAYS) - 270
    org.res[(6, "runaway")] = np.where((t >= 0) & (t < 10), 30.0 * 1.35 ** np.maximum(t, 0), np.nan)
    cells = detector.score(org.daily()).set_index(["project_id", "day"])
    assert not cells.loc["p1"].is_anomaly.any()
    runaway = cells.loc["p6"].loc[[_day(270 + i) for i in range(10)]]
    assert not runaway.is_anomaly.iloc[:2].any()  # its first two days are its level
    assert runaway.is_anomaly.iloc[4:].all() and (runaway[runaway.is_anomaly].direction == "up").all()
    assert (runaway[runaway.is_anomaly].cause_resource == "runaway").all()


def test_a_rise_spread_over_a_cell_is_found_at_the_cell():
    """+35% on each of ten noisy resources: no resource moves beyond its own noise, the cell does."""
    org = Org(n_cells=4, seed=5, per_cell=10, noise=0.2)
    spread = [_day(270 + i) for i in range(7)]
    for r in range(10):
        org.scale(0, f"r0-{r}", 270, 7, 1.35)
    daily = org.daily()
    detector = CostAnomalyDetector(28, 50, 0).fit(daily[daily.day <= CUTOFF])
    sigma = detector.factors_.set_index("resource").sigma
    assert (np.log(1.35) / sigma.filter(like="r0-") < detector.reject_sigmas).all()
    cells = detector.score(daily).set_index(["project_id", "day"])
    hit = cells.loc[[("p0", d) for d in spread]]
    assert hit.is_anomaly.mean() >= 6 / 7 and (hit.direction == "up").all()
    assert hit[hit.is_anomaly].cause_share.lt(0.5).all()  # the top resource is a part of the rise
    assert hit.pct_deviation[hit.is_anomaly].between(25, 70).all()
    assert cells.is_anomaly.sum() - hit.is_anomaly.sum() <= 0.01 * len(cells)  # and hardly anything else


def test_pct_deviation_and_the_minimum_impact_per_scope(scenario):
    from dataclasses import replace

    _, daily, truth, _, result = scenario
    detector = result["model"]
    cells = detector.score(daily)
    flagged = cells[cells.is_anomaly]
    assert len(flagged) > 10
    np.testing.assert_allclose(flagged.pct_deviation, 100 * flagged.impact / flagged.expected)
    np.testing.assert_allclose(flagged.impact, flagged.net_cost - flagged.expected)
    assert (cells.loc[~cells.is_anomaly, ["impact", "pct_deviation"]] == 0).all().all()
    assert (flagged.pct_deviation.abs() >= detector.min_pct_deviation).all()
    floor = float(flagged.impact.abs().median())
    strict = replace(detector, min_impact=floor)
    kept = strict.score(daily)
    assert set(kept[kept.is_anomaly].anomaly_id) == set(flagged[flagged.impact.abs() >= floor].anomaly_id)
    # A project's own minimum wins over its service's, which wins over the default.
    per_scope = replace(detector, min_impact=1e9, min_impact_by_service={"svc": 0.0},
                        min_impact_by_project={"p0": 1e9})
    scoped = per_scope.score(daily)
    assert set(scoped[scoped.is_anomaly].anomaly_id) == set(flagged[flagged.project_id != "p0"].anomaly_id)
    assert per_scope.min_impact_for("svc", "p0") == 1e9 and per_scope.min_impact_for("other", "p1") == 1e9
    assert per_scope.min_impact_for("svc", "p1") == 0.0


def test_feedback_moves_the_threshold_as_far_as_the_verdicts_require(scenario):
    _, daily, truth, _, _ = scenario
    train = daily[daily.day <= CUTOFF]
    free = CostAnomalyDetector(28, 50, 0).fit(train)
    cells = free.score(train)
    up = cells[cells.is_anomaly & (cells.direction == "up")].sort_values("score")
    assert len(up) >= 5
    # The two weakest rises flagged were expected (a planned migration): the threshold rises just above them.
    marks = up.iloc[:2].assign(verdict="expected")[["anomaly_id", "day", "service", "project_id", "verdict"]]
    raised = CostAnomalyDetector(28, 50, 0).fit(train, None, marks)
    assert raised.calibration_["up"]["source"] == "feedback"
    assert up.score.iloc[1] < raised.threshold_up_ <= up.score.iloc[2]
    assert raised.threshold_down_ == free.threshold_down_  # no verdict on a drop
    # An unexpected verdict above the threshold changes nothing; train_and_evaluate reports the verdicts.
    agree = up.iloc[-1:].assign(verdict="unexpected")[marks.columns]
    assert CostAnomalyDetector(28, 50, 0).fit(train, None, agree).threshold_up_ == free.threshold_up_
    result = train_and_evaluate(daily, None, HOLDOUT, 28, 50, 0, feedback=marks, injection=ONE_DRAW)
    assert result["metrics"]["threshold_source_up"] == "feedback"
    assert result["metrics"]["evaluation"]["feedback"] is None  # no verdict on a holdout cell


def test_refine_threshold_moves_the_least():
    scores = np.array([1.0, 2.0, 3.0, 5.0, 8.0])
    assert refine_threshold(scores, np.array([0, 0, 0, 1, 1], bool), 4.0) == 4.0  # already right: unchanged
    assert refine_threshold(scores, np.array([0, 0, 0, 0, 1], bool), 4.0) == 6.5  # 5 was expected
    assert refine_threshold(scores, np.array([0, 0, 1, 1, 1], bool), 4.0) == 2.5  # 3 was unexpected
    assert refine_threshold(np.array([]), np.array([], bool), 4.0) == 4.0


def test_nothing_depends_on_the_cost_scale(clean):
    """An export whose daily costs are cents is judged as the same export in dollars."""
    org, daily, detector = clean
    org = Org(seed=3)
    org.scale(2, "r2-0", 262, 5, 0.1)
    org.inject("spike", 3, 250, 2, 2.0)
    dollars = org.daily()
    cents = dollars.assign(net_cost=dollars.net_cost * 1e-4)
    small = CostAnomalyDetector(28, 50, 0).fit(cents[cents.day <= CUTOFF])
    a, b = detector.score(dollars), small.score(cents)
    assert a.is_anomaly.sum() >= 7
    assert (a.is_anomaly == b.is_anomaly).all() and (a.direction == b.direction).all()
    np.testing.assert_allclose(a.score, b.score, rtol=1e-6)


def test_too_short_a_history_is_insufficient_data(clean):
    _, daily, _ = clean
    with pytest.raises(InsufficientData, match="needs 63 days of history before its 3-month holdout"):
        train_and_evaluate(daily[daily.day < _day(140)], None, HOLDOUT, 28, 50, 0)


QUARTER_ENDS = [88, 89, 179, 180, 271, 272]  # Mar 30-31, Jun 29-30 (training), Sep 29-30 (holdout)


def _quarter_end_org(seed: int = 11) -> Org:
    """A resource whose batch job runs 3x on the last two days of every quarter, and the same 3x on two days
    of October: a spike."""
    org = Org(n_cells=6, seed=seed)
    for d in QUARTER_ENDS:
        org.scale(0, "r0-0", d, 1, 3.0)
    org.scale(0, "r0-0", 286, 2, 3.0)  # Oct 14-15
    return org


def test_a_quarter_end_batch_job_is_expected_but_the_same_rise_on_another_day_is_an_anomaly():
    daily = _quarter_end_org().daily()
    detector = CostAnomalyDetector(28, 50, 0).fit(daily[daily.day <= CUTOFF])
    f = detector.factors_.set_index("resource")
    assert f.loc["r0-0", "quarter_end"] == pytest.approx(3.0, rel=0.1)
    assert f.loc["r0-0", "month_end"] == pytest.approx(1.0, abs=0.1)  # learnt from the other month ends
    assert f.loc["r1-0", "quarter_end"] == pytest.approx(1.0, abs=0.1)
    cells = detector.score(daily).set_index(["project_id", "day"])
    assert not cells.loc[[("p0", _day(d)) for d in (271, 272)]].is_anomaly.any()  # the holdout's quarter end
    spike = cells.loc[[("p0", _day(d)) for d in (286, 287)]]
    assert spike.is_anomaly.all() and (spike.direction == "up").all()
    assert spike.cause_resource.eq("r0-0").all()
    # The same days with a detector that treats a quarter end as any month end: flagged (what the factor fixes).
    plain = CostAnomalyDetector(28, 50, 0).fit(daily[daily.day <= CUTOFF])
    plain.factors_ = plain.factors_.drop(columns="quarter_end")  # as a detector fitted before quarter ends
    plain.factors_["month_end"] = detector.factors_["month_end"]
    old = plain.score(daily).set_index(["project_id", "day"])
    assert old.loc[[("p0", _day(d)) for d in (271, 272)]].is_anomaly.all()


def test_fewer_than_two_quarter_ends_fall_back_to_the_month_end_factor():
    from finops_ml.models.anomaly import _fill_factors

    daily = _quarter_end_org().daily()
    detector = CostAnomalyDetector(28, 50, 0).fit(daily[daily.day <= _day(150)])  # one quarter end (March)
    assert detector.factors_.quarter_end.isna().all()
    filled = _fill_factors(detector.factors_, detector.factors_[["service", "project_id", "resource"]])
    np.testing.assert_array_equal(filled.quarter_end, filled.month_end)


def test_a_monthly_fee_that_moved_is_its_new_normal_at_its_second_month():
    """A charge billed on the 1st without a resource (a support fee): $500 a month, then $2,000 from July. July
    is an anomaly; the change lasted 21 days by August (in days of the calendar, not days with cost), so August is
    the last alarm and the new level is the normal after it (counted in days with cost: 21 months of alarms)."""
    org = Org(n_cells=4, seed=2)
    daily = org.daily()
    firsts = pd.date_range(START, periods=11, freq="MS")
    fee = pd.DataFrame({"day": firsts, "service": "Support", "project_id": "shared", "resource_name": "",
                        "net_cost": np.where(firsts.month >= 7, 2000.0, 500.0)})
    daily = pd.concat([daily, fee], ignore_index=True)
    detector = CostAnomalyDetector(28, 50, 0).fit(daily[daily.day <= CUTOFF])
    cells = detector.score(daily)
    flagged = set(cells[cells.is_anomaly & (cells.project_id == "shared")].day)
    assert flagged == {pd.Timestamp("2025-07-01"), pd.Timestamp("2025-08-01")}
