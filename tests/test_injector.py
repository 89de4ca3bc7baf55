"""The anomaly injector (sizes, kinds, truth, reproducibility, the events wrapper) and the evaluation harness that
scores a detector with it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from finops_ml.config import AnomalyConfig
from finops_ml.data.ingest import ingest
from finops_ml.data.warehouse import run_feature_view
from finops_ml.errors import FinopsError, InsufficientData
from finops_ml.models.anomaly_eval import evaluate_by_injection, spec_from_config
from finops_ml.synthetic.injector import (
    DIRECTION,
    KINDS,
    CostPanel,
    InjectionSpec,
    inject,
    inject_daily,
    inject_events,
    kind_sequence,
    log_sigma,
)

START = pd.Timestamp("2025-01-01")
N_DAYS = 200
SIGMAS = (0.02, 0.08, 0.25)
SCALES = (0.05, 40.0, 9000.0)  # cents to thousands a day: nothing may depend on the cost scale

pytestmark = pytest.mark.unit


def _org(n_projects: int = 6, seed: int = 0) -> pd.DataFrame:
    """Daily cost per resource and SKU: each cell (service x project) has three resources of similar cost and
    different noise (log-sigma in SIGMAS), two SKUs each, a weekly pattern; projects differ in cost scale."""
    rng = np.random.default_rng(seed)
    days = pd.date_range(START, periods=N_DAYS, freq="D")
    weekly = np.where(days.dayofweek >= 5, 0.7, 1.0)
    rows = []
    for p in range(n_projects):
        for service in ("Compute Engine", "BigQuery"):
            for r, sigma in enumerate(SIGMAS):
                own = SCALES[p % 3] * (1 + 0.5 * r) * weekly * rng.lognormal(0, sigma, N_DAYS)
                for sku, share in (("Core", 0.7), ("Ram", 0.3)):
                    rows.append(pd.DataFrame({"day": days, "service": service, "project_id": f"p{p}",
                                              "resource_name": f"{service[:3].lower()}-p{p}-r{r}", "sku": sku,
                                              "net_cost": own * share}))
    return pd.concat(rows, ignore_index=True)


@pytest.fixture(scope="module")
def org() -> pd.DataFrame:
    return _org()


def _resource_cost(daily: pd.DataFrame) -> pd.DataFrame:
    """days x resources"""
    return daily.pivot_table(index="day", columns="resource_name", values="net_cost", aggfunc="sum")


def _cell_cost(daily: pd.DataFrame) -> pd.Series:
    return daily.groupby(["day", "service", "project_id"]).net_cost.sum()


# --- sizes --------------------------------------------------------------------------------------------------------


def test_log_sigma_is_robust_and_scale_free():
    rng = np.random.default_rng(1)
    for sigma in SIGMAS:
        x = np.exp(rng.normal(0, sigma, 400)) * np.tile([1, 1, 1, 1, 1, 0.6, 0.6], 58)[:400]
        x[::37] *= 20  # outliers (earlier anomalies) barely move it
        for scale in SCALES:
            assert log_sigma(x * scale, 0.0) == pytest.approx(sigma, rel=0.15)
    assert np.isnan(log_sigma(np.ones(15), 0.02))  # too short to say
    assert log_sigma(np.ones(100), 0.02) == 0.02  # a flat resource gets the floor


@pytest.mark.parametrize("kind", ["spike", "level_shift", "new_sku"])
def test_sizes_follow_each_resources_own_variability(org, kind):
    """log(size) = k x the resource's own log-sigma, k in the configured range, the same at every cost scale; the
    resource's cost in the window is its clean cost times the size."""
    spec = InjectionSpec(kinds={kind: 1.0}, sigma_multiple=(3.0, 12.0), max_factor=50.0, shift_persist_share=0.0)
    dirty, inj = inject_daily(org, np.random.default_rng(3), 12, spec, start="2025-03-01")
    an = inj.anomalies
    assert len(an) == 12
    assert an.sigma_multiple.between(3.0, 12.0).all()
    assert np.log(an["size"]).to_numpy() == pytest.approx((an.sigma_multiple * an.sigma).to_numpy(), rel=1e-2)
    true_sigma = {f"{s[:3].lower()}-p{p}-r{r}": SIGMAS[r] for p in range(6) for s in ("Compute Engine", "BigQuery")
                  for r in range(3)}
    for a in an.itertuples():
        assert a.sigma == pytest.approx(max(true_sigma[a.resource], 0.02), rel=0.4), a
    sigmas = an.groupby(an.resource.str[-2:]).sigma.median()
    assert sigmas.is_monotonic_increasing and len(sigmas) >= 2  # noisier resources get bigger anomalies
    clean, after = _resource_cost(org), _resource_cost(dirty)
    for a in an.itertuples():
        window = slice(pd.Timestamp(a.start), pd.Timestamp(a.end))
        ratio = after.loc[window, a.resource] / clean.loc[window, a.resource]
        # A spike / shift multiplies every SKU by the size; a new SKU adds (size - 1) x the resource's cost
        assert ratio.to_numpy() == pytest.approx(np.full(len(ratio), a.size), rel=0.2), a
        own = clean.loc[window, a.resource].sum()
        assert a.injected_cost == pytest.approx(own * (a.size - 1), rel=0.2), a


def test_drift_drop_spread_and_runaway_are_relative_to_their_own_cost(org):
    spec = InjectionSpec(kinds={"drift": 1, "drop": 1, "spread": 1, "new_resource": 1})
    dirty, inj = inject_daily(org, np.random.default_rng(4), 16, spec, start="2025-03-01")
    clean, after = _resource_cost(org), _resource_cost(dirty)
    an = inj.anomalies
    assert set(an.kind) == {"drift", "drop", "spread", "new_resource"}
    for a in an.itertuples():
        days = pd.date_range(a.start, a.end)
        if a.kind == "drift":
            ratio = (after.loc[days, a.resource] / clean.loc[days, a.resource]).to_numpy()
            rate = ratio[0] - 1
            assert 0.02 <= rate <= 0.05
            assert ratio == pytest.approx((1 + rate) ** np.arange(1, len(days) + 1))
        elif a.kind == "drop":
            left = after.loc[days, a.resource].fillna(0.0) / clean.loc[days, a.resource]
            assert (left <= 0.2 + 1e-9).all() and left.std() < 1e-9  # 80-100% of it, every day
            assert a.size == pytest.approx(left.iloc[0], abs=1e-4)
        elif a.kind == "spread":
            members = a.resource.split(";")
            prefix = members[0].rsplit("-", 1)[0] + "-"
            assert sorted(members) == sorted(c for c in clean.columns if c.startswith(prefix))  # all of the cell
            ratio = after.loc[days, members] / clean.loc[days, members]
            assert np.allclose(ratio, a.size, rtol=1e-3) and 1.2 <= a.size <= 1.6
        else:
            assert a.resource not in clean.columns and a.resource in after.columns
            assert after[a.resource].dropna().index.tolist() == list(days)  # bills only in its window
            if len(days) >= 5:  # it runs away: 5-30% a day, under 5% noise
                slope = np.polyfit(np.arange(len(days)), np.log(after.loc[days, a.resource]), 1)[0]
                assert 0.02 <= slope <= 0.35, a
            sibling = a.resource.rsplit("-", 1)[0]
            usual = clean.loc[days[0] - pd.Timedelta(days=28): days[0], sibling].median()
            ratio = after.loc[days[0], a.resource] / usual
            assert 0.3 * 0.8 <= ratio <= 3.0 * 1.2


def test_every_kind_appears_with_its_direction(org):
    dirty, inj = inject_daily(org, np.random.default_rng(5), 21, start="2025-03-01")
    an = inj.anomalies
    assert set(an.kind) == set(KINDS)
    assert an.kind.value_counts().min() >= 2  # kinds drawn in proportion: three each, less any that found no place
    assert (an.direction == an.kind.map(DIRECTION)).all()
    assert (an[an.direction == "up"].injected_cost > 0).all()
    assert (an[an.direction == "down"].injected_cost < 0).all()
    assert (pd.to_datetime(an.start) >= pd.Timestamp("2025-03-01")).all()
    lengths = (pd.to_datetime(an.end) - pd.to_datetime(an.start)).dt.days + 1
    spec = InjectionSpec()
    bounds = {"spike": spec.spike_days, "level_shift": spec.shift_days, "drift": spec.drift_days,
              "drop": spec.drop_days, "new_resource": spec.new_resource_days, "spread": spec.spread_days,
              "new_sku": spec.new_sku_days}
    for kind, n in zip(an.kind, lengths):
        assert bounds[kind][0] <= n <= bounds[kind][1], (kind, n)


def test_kind_sequence_is_proportional():
    seq = kind_sequence(np.random.default_rng(0), 20, {"spike": 3.0, "drop": 1.0})
    assert sorted(seq) == ["drop"] * 5 + ["spike"] * 15
    assert sorted(kind_sequence(np.random.default_rng(0), 7, {k: 1.0 for k in KINDS})) == sorted(KINDS)


# --- truth --------------------------------------------------------------------------------------------------------


def test_truth_matches_the_injected_change(org):
    spec = InjectionSpec(min_impact_usd=5.0)
    dirty, inj = inject_daily(org, np.random.default_rng(6), 21, spec, start="2025-03-01")
    before, after = _cell_cost(org), _cell_cost(dirty)
    delta = after.sub(before, fill_value=0.0)
    cells = inj.cells.assign(day=pd.to_datetime(inj.cells.date))
    assert not cells.duplicated(["day", "service", "project_id"]).any()  # one anomaly per cell-day
    for c in cells.itertuples():
        key = (c.day, c.service, c.project_id)
        assert c.injected_cost == pytest.approx(delta[key], abs=1e-3), c
        assert c.expected_cost == pytest.approx(before[key], abs=1e-3), c
        line = max(0.25 * c.expected_cost, 5.0)
        if abs(abs(c.injected_cost) - line) > 1e-3:
            assert c.material == (abs(c.injected_cost) >= line), c
    per_anomaly = cells.groupby("anomaly_id").injected_cost.sum()
    assert inj.anomalies.set_index("anomaly_id").injected_cost.to_numpy() == pytest.approx(
        per_anomaly.reindex(inj.anomalies.anomaly_id).to_numpy(), abs=1e-2)
    # Outside the labelled windows only the tails of persisting level shifts changed anything.
    changed = inj.cell_delta().set_index(["day", "service", "project_id"])
    outside = changed.index.difference(pd.MultiIndex.from_frame(cells[["day", "service", "project_id"]]))
    persisting = inj.anomalies[inj.anomalies.persists]
    assert set(zip(outside.get_level_values(1), outside.get_level_values(2))) <= set(
        zip(persisting.service, persisting.project_id))
    assert cells.material.any() and not cells.material.all()


def test_a_persisting_level_shift_stays_after_its_labelled_window(org):
    spec = InjectionSpec(kinds={"level_shift": 1.0}, shift_persist_share=1.0)
    dirty, inj = inject_daily(org, np.random.default_rng(7), 3, spec, start="2025-05-01")
    clean, after = _resource_cost(org), _resource_cost(dirty)
    for a in inj.anomalies.itertuples():
        assert a.persists
        tail = after.loc[pd.Timestamp(a.end) + pd.Timedelta(days=1):, a.resource]
        assert len(tail) and np.allclose(tail / clean.loc[tail.index, a.resource], a.size, rtol=1e-3)
        assert inj.cells[inj.cells.anomaly_id == a.anomaly_id].date.max() == a.end


def test_same_seed_same_injection_other_seed_other(org):
    a_daily, a = inject_daily(org, np.random.default_rng(11), 14, start="2025-03-01")
    b_daily, b = inject_daily(org, np.random.default_rng(11), 14, start="2025-03-01")
    c_daily, c = inject_daily(org, np.random.default_rng(12), 14, start="2025-03-01")
    pd.testing.assert_frame_equal(a_daily, b_daily)
    pd.testing.assert_frame_equal(a.anomalies, b.anomalies)
    pd.testing.assert_frame_equal(a.cells, b.cells)
    assert not a.anomalies[["resource", "start"]].equals(c.anomalies[["resource", "start"]])
    pd.testing.assert_frame_equal(org, _org())  # the input is never modified


def test_a_table_without_resources_or_skus(org):
    """The standard export has no resource names: each cell is one resource, and the injector still works."""
    cells = org.groupby(["day", "service", "project_id"], as_index=False).net_cost.sum()
    dirty, inj = inject_daily(cells, np.random.default_rng(2), 14, start="2025-03-01")
    assert list(dirty.columns) == ["day", "service", "project_id", "resource_name", "net_cost"]
    assert set(dirty.resource_name) >= {""}
    assert len(inj.anomalies) >= 10 and inj.cells.material.any()


@pytest.mark.parametrize("bad, message", [
    (lambda d: d.drop(columns="net_cost"), "lacks the column\\(s\\) net_cost"),
    (lambda d: d.iloc[:0], "has no rows"),
])
def test_bad_tables_are_one_sentence(org, bad, message):
    with pytest.raises(FinopsError, match=message):
        inject_daily(bad(org), np.random.default_rng(0), 3)


def test_bad_specs_are_one_sentence():
    with pytest.raises(FinopsError, match="Unknown anomaly kind"):
        InjectionSpec(kinds={"meteor": 1.0})
    with pytest.raises(FinopsError, match="sigma_multiple"):
        InjectionSpec(sigma_multiple=(5.0, 1.0))


# --- events -------------------------------------------------------------------------------------------------------


def test_events_wrapper_aggregates_back_to_the_same_daily_change(small_generated, tmp_path):
    """Injected into the line items, the anomalies read back through the resource_daily_cost view exactly as the
    injector's daily table has them; the new items validate on ingest."""
    ingest(str(small_generated / "events.jsonl"), tmp_path / "ingest", None)
    events = pq.read_table(tmp_path / "ingest" / "events.parquet")
    injected, inj = inject_events(events, np.random.default_rng(8), 21, start="2026-01-01")
    assert {"drop", "new_resource", "new_sku", "spike"} <= set(inj.anomalies.kind)  # items removed, added, scaled
    pq.write_table(injected, tmp_path / "injected.parquet")
    view = run_feature_view("resource_daily_cost", tmp_path / "injected.parquet")
    view = view.assign(day=pd.to_datetime(view.day)).groupby(["day", "service", "project_id", "resource_name", "sku"])
    got = view.net_cost.sum()
    want = inj.daily().set_index(["day", "service", "project_id", "resource_name", "sku"]).net_cost
    assert set(got.index) == set(want.index)
    assert got.reindex(want.index).to_numpy() == pytest.approx(want.to_numpy(), abs=1e-6)
    # Non-regular rows (taxes, adjustments) are untouched; event ids stay unique.
    assert injected.num_rows != events.num_rows
    assert len(set(injected.column("event_id").to_pylist())) == injected.num_rows
    summary = ingest(str(tmp_path / "injected.parquet"), tmp_path / "reingest", None)
    assert summary["quarantined"] == 0 and summary["duplicates"] == 0


# --- evaluation harness ---------------------------------------------------------------------------------------------


class _Oracle:
    """Flags exactly the cell-days whose cost differs materially from the clean table (it knows the clean table)."""

    def __init__(self, clean: pd.DataFrame, spec: InjectionSpec):
        self.clean, self.spec = _cell_cost(clean), spec

    def score(self, daily, resources=None) -> pd.DataFrame:
        now = _cell_cost(daily.assign(day=pd.to_datetime(daily.day)))
        both = pd.concat([self.clean.rename("clean"), now.rename("now")], axis=1).fillna(0.0)
        change = (both.now - both.clean).abs()
        flag = (change > 0) & (change >= self.spec.material_share * both.clean) & (change >= self.spec.min_impact_usd)
        return both.reset_index().assign(is_anomaly=flag.to_numpy())


class _Silent:
    def score(self, daily, resources=None) -> pd.DataFrame:
        return _cell_cost(daily.assign(day=pd.to_datetime(daily.day))).reset_index().assign(is_anomaly=False)


@pytest.fixture(scope="module")
def split(org):
    cut = pd.Timestamp("2025-05-01")
    return org[org.day < cut], org[org.day >= cut]


def test_harness_scores_a_perfect_oracle_one(org, split):
    spec = InjectionSpec(min_impact_usd=1.0, sigma_multiple=(15.0, 40.0))  # big enough to be material in a cell
    result = evaluate_by_injection(_Oracle(org, spec), *split, draws=3, seed=1, spec=spec, cells_share=1.0)
    assert result["f1"] == 1.0 and result["precision"] == 1.0 and result["recall"] == 1.0
    assert result["event_f1"] == 1.0 and result["mean_detection_delay_days"] == 0.0
    assert result["alarm_rate_clean"] == 0.0
    assert all(r == 1.0 for r in result["recall_per_kind"].values())
    assert result["recall_per_direction"] == {"down": 1.0, "up": 1.0}
    assert all(n > 0 for n in result["cells_per_kind"].values())
    assert len(result["per_draw"]) == 3 and result["spread"]["f1"]["std"] == 0.0
    assert result["anomalies_per_draw"] >= 10


def test_harness_scores_a_silent_detector_zero_recall(org, split):
    result = evaluate_by_injection(_Silent(), *split, draws=2, seed=1, cells_share=0.6)
    assert result["recall"] == 0.0 and result["f1"] == 0.0 and result["event_recall"] == 0.0
    assert np.isnan(result["precision"])  # it never alarms: there is no precision to speak of
    assert result["alarm_rate_clean"] == 0.0 and result["clean_flagged"] == 0
    assert all(r == 0.0 for r in result["recall_per_kind"].values())
    assert result["positive_cells"] > 0


def test_harness_counts_false_alarms_and_is_reproducible(org, split):
    """A detector alarming everywhere: recall 1, precision = the share of positives, alarm rate 1; same seed, same
    figures."""

    class Everything(_Silent):
        def score(self, daily, resources=None):
            return super().score(daily).assign(is_anomaly=True)

    a = evaluate_by_injection(Everything(), *split, draws=2, seed=3, cells_share=0.3)
    b = evaluate_by_injection(Everything(), *split, draws=2, seed=3, cells_share=0.3)
    assert a["per_draw"] == b["per_draw"] and a["cells_per_kind"] == b["cells_per_kind"]
    assert a["alarm_rate_clean"] == 1.0 and a["recall"] == 1.0 and a["precision"] < 0.3
    for d in a["per_draw"]:
        assert d["precision"] == pytest.approx(d["positive_cells"] / d["flagged_cells"])
        assert d["cells"] + d["dont_care_cells"] == d["flagged_cells"] + d["dont_care_cells"]
    c = evaluate_by_injection(Everything(), *split, draws=2, seed=4, cells_share=0.3)
    assert c["per_draw"] != a["per_draw"]


def test_alarms_on_the_untouched_holdout_are_left_out_up_to_a_ceiling(org, split):
    """The data's own (unlabelled) anomalies: an oracle of the injection that also flags a few untouched cells scores
    F1 1 with those cells left out (reported as the clean alarm rate and in the pessimistic precision); above the
    ceiling they count as false alarms."""
    spec = InjectionSpec(min_impact_usd=1.0, sigma_multiple=(15.0, 40.0))
    oracle = _Oracle(org, spec)
    holdout = split[1]
    real = holdout[holdout.project_id == "p0"].drop_duplicates(["day", "service", "project_id"]).head(5)
    real = set(zip(real.day, real.service, real.project_id))

    class OracleWithRealAnomalies:
        def score(self, daily, resources=None):
            out = oracle.score(daily)
            extra = [(d, s, p) in real for d, s, p in zip(out.day, out.service, out.project_id)]
            return out.assign(is_anomaly=out.is_anomaly | np.array(extra))

    result = evaluate_by_injection(OracleWithRealAnomalies(), *split, draws=2, seed=1, spec=spec, cells_share=1.0)
    assert result["clean_flagged"] == 5 and 0 < result["alarm_rate_clean"] <= 0.05 and result["clean_alarms_left_out"]
    assert result["f1"] == 1.0 and result["precision"] == 1.0
    assert result["precision_counting_clean_alarms"] < 1.0
    strict = evaluate_by_injection(OracleWithRealAnomalies(), *split, draws=2, seed=1, spec=spec, cells_share=1.0,
                                   max_clean_alarm_rate=result["alarm_rate_clean"] / 2)
    assert not strict["clean_alarms_left_out"] and strict["precision"] < 1.0
    assert strict["precision"] == pytest.approx(strict["precision_counting_clean_alarms"])


def test_known_anomalies_are_left_out_of_the_precision_side(org, split):
    """Cells the data already holds as anomalies (ground truth, feedback) are no false alarms when found."""

    class Everything(_Silent):
        def score(self, daily, resources=None):
            return super().score(daily).assign(is_anomaly=True)

    holdout = split[1]
    known = holdout[holdout.project_id == "p0"].drop_duplicates(["day", "service", "project_id"])
    known = known.assign(date=known.day.dt.strftime("%Y-%m-%d"))[["date", "service", "project_id"]]
    plain = evaluate_by_injection(Everything(), *split, draws=1, seed=3)
    left = evaluate_by_injection(Everything(), *split, draws=1, seed=3, known=known)
    assert left["known_cells_left_out"] == len(known) == 2 * holdout.day.nunique()
    assert left["clean_cells"] == plain["clean_cells"] - len(known)
    d_plain, d_left = plain["per_draw"][0], left["per_draw"][0]
    assert d_left["positive_cells"] == d_plain["positive_cells"]  # injected truth wins over "known"
    assert d_left["flagged_cells"] < d_plain["flagged_cells"] and left["precision"] > plain["precision"]


def test_harness_with_the_config_keys(org, split):
    cfg = AnomalyConfig(injection_draws=2, injection_sigma_multiple=(4.0, 8.0), injection_min_impact_usd=2.0)
    spec = spec_from_config(cfg)
    assert spec.sigma_multiple == (4.0, 8.0) and spec.min_impact_usd == 2.0 and spec.material_share == 0.25
    with pytest.raises(FinopsError, match="holdout window has no cost rows"):
        evaluate_by_injection(_Silent(), split[0], split[1].iloc[:0])
    with pytest.raises(InsufficientData, match="need 45 days of billing history"):
        short = split[1][split[1].day < pd.Timestamp("2025-06-10")]  # 40 days and no history before them
        evaluate_by_injection(_Silent(), split[0].iloc[:0], short, draws=1)


def test_panel_round_trip(org):
    panel = CostPanel.from_daily(org)
    back = panel.to_daily()
    pd.testing.assert_frame_equal(
        back.sort_values(["day", "resource_name", "sku"]).reset_index(drop=True)[list(org.columns)],
        org.sort_values(["day", "resource_name", "sku"]).reset_index(drop=True), check_dtype=False)
    result = inject(panel, np.random.default_rng(0), 0)
    assert result.anomalies.empty and np.array_equal(result.panel.cost, panel.cost, equal_nan=True)
