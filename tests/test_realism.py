"""The realistic organisation (issue 13): its noise, normal events, late rows and label mess, measured on the data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from finops_ml.config import GeneratorConfig
from finops_ml.synthetic import realism
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
    assert set(normal.kind) == {"quarter_end", "load_test", "rightsizing", "price_change", "decommission",
                                "holiday", "commitment_start", "commitment_end", "one_off_charge", "migration_wave",
                                "ramp_up"}
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


def _events(out, columns=("project", "service", "sku", "resource", "usage_start_time", "cost", "credits",
                          "currency", "currency_conversion_rate", "cost_type")) -> pd.DataFrame:
    e = pd.read_parquet(out / "events.parquet", columns=list(columns))
    e = e[e.cost_type == "regular"]
    return e.assign(project_id=e.project.map(lambda p: p["id"]), service=e.service.map(lambda s: s["description"]),
                    sku=e.sku.map(lambda s: s["id"]), resource=e.resource.map(lambda r: r["name"] if r else None),
                    day=e.usage_start_time.dt.tz_localize(None).dt.normalize(),
                    credit=e.credits.map(lambda cs: sum(c["amount"] for c in cs)),
                    credit_type=e.credits.map(lambda cs: cs[0]["type"] if len(cs) else ""))


def _project_days(out) -> pd.DataFrame:
    e = _events(out)
    return e.assign(usd=e.cost / e.currency_conversion_rate).groupby(["project_id", "day"]).usd.sum().unstack(0)


def test_plant_holidays_cost_like_weekends_and_are_labelled_normal(realistic, easy):
    """On a weekday public holiday of its country a plant's project costs about what it costs on its weekends;
    the same days in the easy world (no holidays) cost what weekdays cost."""
    normal = pd.read_csv(realistic / "truth" / "normal_events.csv")
    holidays = normal[normal.kind == "holiday"]
    assert len(holidays) > 10 and not holidays.project_id.str.startswith("acme-corp").any()
    assert (pd.to_datetime(holidays.start).dt.dayofweek < 5).all()
    # the calendar: fixed dates, Easter and nth-weekday rules (checked against the 2026 calendars)
    assert {"2026-04-03", "2026-04-06", "2026-05-14", "2026-06-04"} <= {
        str(d.date()) for d in realism.public_holidays("DE", [2026])}
    assert pd.Timestamp("2026-11-26") in realism.public_holidays("US", [2026])  # Thanksgiving
    assert pd.Timestamp("2026-03-16") in realism.public_holidays("MX", [2026])  # Benito Juarez (3rd Monday)

    def ratios(out):
        days = _project_days(out)
        holiday_days = set(zip(holidays.project_id, pd.to_datetime(holidays.start)))
        got = []
        for h in holidays[holidays.project_id.isin(days.columns)].itertuples():  # the easy world: no new projects
            cost = days[h.project_id].dropna()
            day = pd.Timestamp(h.start)
            near = cost[(cost.index >= day - pd.Timedelta(days=14)) & (cost.index <= day + pd.Timedelta(days=14))]
            weekday = near[(near.index.dayofweek < 5) & ~near.index.isin(
                [d for p, d in holiday_days if p == h.project_id])]
            weekend = near[near.index.dayofweek >= 5]
            if day in cost.index and len(weekday) >= 8 and len(weekend) >= 4:
                got.append((cost[day] / weekday.median(), weekend.median() / weekday.median()))
        return np.array(got)

    real, calm = ratios(realistic), ratios(easy)
    assert len(real) > 10
    assert np.median(real[:, 0]) < 0.95  # a holiday costs less than the weekdays around it
    assert abs(np.median(real[:, 0]) - np.median(real[:, 1])) < 0.05  # as much less as a weekend
    assert abs(np.median(calm[:, 0]) - 1.0) < 0.03  # the easy world has no holidays


def test_commitments_start_and_expire_with_their_rate(realistic):
    """From a commitment's first day its project's compute cores and RAM earn the commitment's rate (37%) instead of
    the sustained use discount, so the net cost of that compute drops by about the difference; after an expiry the
    sustained use discount is back and the net cost rises."""
    normal = pd.read_csv(realistic / "truth" / "normal_events.csv")
    commitments = normal[normal.kind.isin(["commitment_start", "commitment_end"])]
    assert set(commitments.kind) == {"commitment_start", "commitment_end"}
    e = _events(realistic)
    e = e[e.sku.isin(["CP-COMPUTEENGINE-N2-CORE", "CP-COMPUTEENGINE-N2-RAM"])]
    for c in commitments.itertuples():
        rows = e[e.project_id == c.project_id]
        day = pd.Timestamp(c.start)
        under = rows[rows.day >= day] if c.kind == "commitment_start" else rows[rows.day < day]
        free = rows[rows.day < day] if c.kind == "commitment_start" else rows[rows.day >= day]
        assert len(under) > 100 and len(free) > 100
        assert (under.credit_type == "COMMITTED_USAGE_DISCOUNT").all()
        assert (free.credit_type == "SUSTAINED_USAGE_DISCOUNT").all()
        assert np.allclose(-under.credit / under.cost, realism.CUD_RATE_1Y, atol=1e-4)
        net_share = {k: float((g.cost + g.credit).sum() / g.cost.sum()) for k, g in (("under", under), ("free", free))}
        assert net_share["under"] == pytest.approx(1 - realism.CUD_RATE_1Y, abs=1e-3)
        assert 0.8 < net_share["free"] < 0.92  # a sustained use discount of 8-20%
        # the project's whole compute bill (SSD included) around the day: net over gross moves by about the rates
        window = rows[(rows.day >= day - pd.Timedelta(days=28)) & (rows.day < day + pd.Timedelta(days=28))]
        share = window.groupby(window.day >= day).apply(lambda g: (g.cost + g.credit).sum() / g.cost.sum())
        step = share[True] / share[False]
        assert step < 0.8 if c.kind == "commitment_start" else step > 1.25
        # factor: the covered SKUs' net under the commitment / their list price (its inverse at an expiry); the SSD
        # disk, which no discount covers, dilutes the step a little
        expected = c.factor / net_share["free"] if c.kind == "commitment_start" else c.factor * net_share["free"]
        assert step == pytest.approx(expected, rel=0.08)


def test_one_off_charges_are_billed_on_their_day_with_their_amount(realistic):
    normal = pd.read_csv(realistic / "truth" / "normal_events.csv")
    charges = normal[normal.kind == "one_off_charge"]
    e = _events(realistic)
    e = e[e.resource.isna()].assign(usd=lambda t: t.cost / t.currency_conversion_rate)
    assert len(e) == len(charges)  # the only regular lines without a resource
    support = charges[charges.service == "support"]
    assert len(support) == 12 and (pd.to_datetime(support.start).dt.day == 1).all()  # every month, on the 1st
    assert (support.amount_usd >= realism.SUPPORT_MIN_USD).all() and support.amount_usd.max() > realism.SUPPORT_MIN_USD
    fees = charges[charges.service == "compute"]
    starts = normal[normal.kind == "commitment_start"]
    assert sorted(zip(fees.project_id, fees.start)) == sorted(zip(starts.project_id, starts.start))
    for c in charges.itertuples():
        line = e[(e.project_id == c.project_id) & (e.day == pd.Timestamp(c.start))]
        assert len(line) == 1
        assert line.usd.iloc[0] == pytest.approx(c.amount_usd, abs=0.005)
        assert line.service.iloc[0] == {"support": "Support", "compute": "Compute Engine"}[c.service]
    # the support fee follows the spend: 3% of the previous month's usage, at least $500
    daily = _project_days(realistic).sum(axis=1)
    for c in support.itertuples():
        day = pd.Timestamp(c.start)
        previous = day - pd.Timedelta(days=1)
        month = daily[(daily.index.year == previous.year) & (daily.index.month == previous.month)]
        if len(month):
            fees_in_month = charges[pd.to_datetime(charges.start).dt.to_period("M") == previous.to_period("M")]
            spend = month.sum() - fees_in_month.amount_usd.sum()
            assert c.amount_usd == pytest.approx(max(realism.SUPPORT_MIN_USD, realism.SUPPORT_SHARE * spend), rel=1e-4)


def test_new_projects_ramp_up_and_migration_waves_are_labelled(realistic):
    normal = pd.read_csv(realistic / "truth" / "normal_events.csv")
    days = _project_days(realistic)
    ramps = normal[normal.kind == "ramp_up"]
    assert len(ramps) == shape_config("realistic", SMALL).new_projects
    for r in ramps.itertuples():
        cost = days[r.project_id].dropna()
        assert cost.index.min() == pd.Timestamp(r.start)  # nothing before the project's first day
        first_week = cost[:pd.Timestamp(r.start) + pd.Timedelta(days=6)].mean()
        settled = cost[pd.Timestamp(r.end):pd.Timestamp(r.end) + pd.Timedelta(days=27)].mean()
        assert first_week < 0.5 * settled  # resources arrive over three weeks and ramp up
    waves = normal[normal.kind == "migration_wave"]
    plant_projects = {p for p in days.columns if not p.startswith("acme-corp")} - set(ramps.project_id)
    assert set(waves.project_id) == plant_projects
    for w in waves.itertuples():
        assert days[w.project_id].dropna().index.min() == pd.Timestamp(w.start)


def test_a_eur_billing_account_converts_to_the_same_usd(tmp_path):
    """Projects outside the Americas billed in EUR at a daily rate: ingest's USD per invoice month reconciles with
    the control totals to the cent and equals, to the cent, the same organisation billed all in USD."""
    from finops_ml.data.ingest import ingest

    cfg = shape_config("realistic", GeneratorConfig(plants=4, resources_per_project=3, months=6))
    totals = {}
    for eur in (True, False):
        out = tmp_path / f"g{eur}"
        generate(cfg.model_copy(update={"eur_billing_account": eur}), 5, out, fmt="parquet")
        summary = ingest(str(out / "events.parquet"), tmp_path / f"i{eur}", control_totals=out / "control_totals.csv")
        assert summary["reconciliation_diff"] == 0.0
        totals[eur] = pd.Series(summary["cost_by_invoice_month"])
        if eur:
            e = pd.read_parquet(out / "events.parquet", columns=["billing_account_id", "currency", "cost_type",
                                                                 "currency_conversion_rate", "location", "project"])
            country = e.location.map(lambda loc: loc["country"] if loc else None)
            regular = e[e.cost_type == "regular"]
            assert set(regular.currency) == {"USD", "EUR"} and e.billing_account_id.nunique() == 2
            assert (regular[country[regular.index].isin(realism.USD_COUNTRIES)].currency == "USD").all()
            rates = e[e.currency == "EUR"].currency_conversion_rate
            assert rates.nunique() > 100 and 0.8 < rates.min() and rates.max() < 1.05  # moves a little, day to day
            taxes = e[e.cost_type == "tax"]
            assert set(taxes.currency) == {"USD", "EUR"}  # Monterrey's tax in USD, Pune's in EUR
    assert (totals[True] - totals[False]).abs().max() <= 0.02
    assert abs(totals[True].sum() - totals[False].sum()) <= 0.05


def test_the_new_knobs_are_off_by_default_and_on_in_the_realistic_shape():
    knobs = {"plant_holidays": True, "commitments": True, "one_off_charges": True, "eur_billing_account": True,
             "new_projects": 2}
    default, real = GeneratorConfig(), shape_config("realistic")
    assert all(not getattr(default, k) for k in knobs)
    assert {k: getattr(real, k) for k in knobs} == knobs


def test_an_hourly_export_sums_to_the_daily_one(tmp_path):
    """`export_granularity: hourly`: 24 line items per daily one, spread by the service's profile in local time;
    the feature views sum them back into the same daily cells (to a millionth), ingest reconciles them to the cent."""
    from finops_ml.data.ingest import ingest
    from finops_ml.data.warehouse import run_feature_view

    cfg = shape_config("realistic", GeneratorConfig(plants=2, resources_per_project=3, months=6))
    cells, items = {}, {}
    for granularity in ("daily", "hourly"):
        out = tmp_path / granularity
        generate(cfg.model_copy(update={"export_granularity": granularity}), 5, out, fmt="parquet")
        summary = ingest(str(out / "events.parquet"), tmp_path / f"i-{granularity}",
                         control_totals=out / "control_totals.csv")
        assert summary["quarantined"] == 0 and summary["reconciliation_diff"] == 0.0
        cells[granularity] = run_feature_view("daily_cost", tmp_path / f"i-{granularity}" / "events.parquet")
        items[granularity] = pd.read_parquet(out / "events.parquet", columns=["resource", "sku", "usage_start_time",
                                                                              "usage_end_time", "cost", "cost_type"])
        items[granularity] = items[granularity][(items[granularity].cost_type == "regular")
                                                & items[granularity].resource.notna()]  # not the one-off charges
    daily, hourly = items["daily"], items["hourly"]
    assert len(hourly) == 24 * len(daily)
    assert ((hourly.usage_end_time - hourly.usage_start_time) == pd.Timedelta(hours=1)).all()
    assert (hourly.cost >= 0).all()
    merged = cells["daily"].merge(cells["hourly"], on=["day", "service", "project_id"], suffixes=("_d", "_h"))
    assert len(merged) == len(cells["daily"]) == len(cells["hourly"])
    assert np.allclose(merged.net_cost_d, merged.net_cost_h, atol=1e-4)
    # the profiles: a serving endpoint bills more in office hours than at night, BigQuery more at night
    h = hourly.assign(hour=lambda t: t.usage_start_time.dt.hour,
                                               sku=lambda t: t.sku.map(lambda s: s["id"]))
    by_hour = h.groupby(["sku", "hour"]).cost.sum().unstack()
    assert by_hour.loc["RUN-CPU", 10 - 1] > 2 * by_hour.loc["RUN-CPU", 2 - 1]  # Lyon / Stuttgart: UTC+1
    assert by_hour.loc["BQ-ANALYSIS", 3 - 1] > 2 * by_hour.loc["BQ-ANALYSIS", 14 - 1]
