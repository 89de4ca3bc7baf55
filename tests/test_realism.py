"""The realistic organisation (issue 13): its noise, normal events, late rows and label mess, measured on the data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from finops_ml.config import GeneratorConfig
from finops_ml.synthetic.generator import generate, shape_config

pytestmark = pytest.mark.unit

SMALL = GeneratorConfig(plants=3, resources_per_project=8, months=12)


@pytest.fixture(scope="module")
def realistic(tmp_path_factory):
    out = tmp_path_factory.mktemp("realistic") / "g"
    generate(shape_config("realistic", SMALL), 11, out, fmt="parquet")
    return out


@pytest.fixture(scope="module")
def easy(tmp_path_factory):
    out = tmp_path_factory.mktemp("easy") / "g"
    generate(SMALL, 11, out, fmt="parquet")
    return out


def _resource_days(out) -> pd.DataFrame:
    e = pd.read_parquet(out / "events.parquet", columns=["service", "resource", "usage_start_time", "cost"])
    e = e[e.resource.notna()]
    return pd.DataFrame({"service": e.service.map(lambda s: s["description"]),
                         "resource": e.resource.map(lambda r: r["name"]), "day": e.usage_start_time.dt.date,
                         "cost": e.cost}).groupby(["service", "resource", "day"], as_index=False).cost.sum()


def _noise_by_service(out) -> pd.Series:
    """Median over a service's resources of the robust day-to-day log standard deviation (weekday to weekday a
    week apart, so that weekly seasonality cancels), on days without an anomaly or a normal event."""
    daily = _resource_days(out)
    truth = pd.read_csv(out / "truth" / "anomalies.csv")
    touched = set(truth.resource.str.split(";").explode())
    normal = pd.read_csv(out / "truth" / "normal_events.csv")
    spikes = normal[normal.kind.isin(["quarter_end", "load_test"])]  # steps barely move a robust spread
    touched |= set(spikes.resources.str.split(";").explode())
    sigmas = {}
    for (service, resource), g in daily.groupby(["service", "resource"]):
        if resource in touched or len(g) < 120:
            continue
        x = np.log(g.cost.to_numpy()[45:])  # after the ramp-up
        d = x[7:] - x[:-7]
        sigmas.setdefault(service, []).append(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2))
    return pd.Series({s: float(np.median(v)) for s, v in sigmas.items()})


def test_usage_noise_depends_on_the_kind_of_resource_and_is_far_above_the_easy_worlds(realistic, easy):
    noise, easy_noise = _noise_by_service(realistic), _noise_by_service(easy)
    assert noise["Cloud Storage"] < 0.10
    assert noise["BigQuery"] > 0.25
    assert max(noise.get(s, 0.0) for s in ("Cloud Run", "Vertex AI", "Kubernetes Engine", "Cloud Dataflow")) > 0.18
    assert noise["Cloud Storage"] * 3 < noise["BigQuery"]
    assert easy_noise.max() < 0.1  # the easy world: one small noise for every kind
    assert noise.median() > 2 * easy_noise.median()


def test_normal_events_of_every_kind_move_cost_and_are_no_anomaly(realistic):
    normal = pd.read_csv(realistic / "truth" / "normal_events.csv")
    assert set(normal.kind) == {"quarter_end", "load_test", "rightsizing", "price_change", "decommission"}
    daily = _resource_days(realistic)
    daily["day"] = pd.to_datetime(daily.day)
    ratios = []
    for event in normal[normal.kind == "load_test"].itertuples():
        cost = daily[daily.resource.isin(event.resources.split(";"))].groupby("day").cost.sum()
        during = cost[pd.Timestamp(event.start):pd.Timestamp(event.end)].mean()
        before = cost[:pd.Timestamp(event.start) - pd.Timedelta(days=1)].tail(14).median()
        ratios.append(during / before)
    assert np.median(ratios) > 1.8 and np.mean(np.array(ratios) > 1.3) > 0.8  # 2-4x, through the usage noise
    # decommissioned: nothing billed after the day
    for event in normal[normal.kind == "decommission"].itertuples():
        after = daily[daily.resource.isin(event.resources.split(";")) & (daily.day > pd.Timestamp(event.start))]
        assert after.empty
    cells = pd.read_csv(realistic / "truth" / "anomaly_cells.csv")
    anomalous = set(zip(cells.project_id, cells.date if "date" in cells.columns else cells.day))
    normal_cells = {(e.project_id, str(d.date())) for e in normal.itertuples()
                    for d in pd.date_range(e.start, e.end) if e.kind in ("quarter_end", "load_test")}
    # the share of unusual normal days is material: a detector must stay quiet on them
    assert len(normal_cells) > 0.15 * len(anomalous) and len(normal_cells - anomalous) > 0.9 * len(normal_cells)


def test_rows_arrive_late_and_labels_are_messy_at_the_configured_rates(realistic, easy):
    def late_share(out) -> float:
        e = pd.read_parquet(out / "events.parquet", columns=["usage_end_time", "export_time", "cost_type"])
        e = e[e.cost_type == "regular"]
        return float(((e.export_time - e.usage_end_time) > pd.Timedelta(days=1.5)).mean())

    assert late_share(easy) == 0.0 and 0.02 < late_share(realistic) < 0.04
    cfg = shape_config("realistic", SMALL)
    resources = pd.read_csv(realistic / "truth" / "resources.csv")
    carried = resources.labelled.fillna("").str.split(";").map(lambda ks: [k for k in ks if k])
    n_carried = int(carried.map(len).sum())
    messy = pd.read_csv(realistic / "truth" / "carried_labels.csv")
    expected = cfg.label_error_share + cfg.label_variant_share + cfg.departed_owner_share / 3
    assert abs(len(messy) / n_carried - expected) < 0.05
    assert (messy.carried != messy.true).all()
    assert messy.carried.str.startswith("former").sum() > 0
    by_project = resources.assign(n=carried.map(len)).groupby("project_id").n.sum()
    assert (by_project == 0).mean() >= cfg.unlabelled_project_share - 0.05
    assert not (pd.read_csv(easy / "truth" / "carried_labels.csv")).shape[0]


def test_injected_anomaly_sizes_span_from_barely_material_to_huge(realistic):
    truth = pd.read_csv(realistic / "truth" / "anomalies.csv")
    k = truth.sigma_multiple.dropna()
    assert k.min() < 6 and k.max() > 15  # log-uniform over 3-30 sigmas of the resource's own noise
    impact = truth.injected_cost.abs()
    assert impact.max() / impact.min() > 50


@pytest.mark.cli
def test_the_cli_generates_the_realistic_shape_and_refuses_a_shape_with_a_source(tmp_path):
    from testsupport.cli import finops_ml, one_error_sentence

    out = tmp_path / "g"
    result = finops_ml("generate", "--shape", "realistic", "--plants", "3", "--resources-per-project", "3",
                       "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert len(pd.read_csv(out / "truth" / "normal_events.csv")) > 0
    assert len(pd.read_csv(out / "truth" / "carried_labels.csv")) > 0
    assert "Unknown organisation shape 'huge'" in one_error_sentence(
        finops_ml("generate", "--shape", "huge", "--out", str(tmp_path / "h")))
    assert "--shape" in one_error_sentence(
        finops_ml("run", "--shape", "realistic", "--source", str(out / "events.jsonl"), "--out", str(tmp_path / "r")))
