"""The synthetic organisation: reproducibility, ground truth (labels, anomalies) and reconciliation to the cent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from finops_ml.config import GeneratorConfig
from finops_ml.data.events import ARROW_SCHEMA
from finops_ml.data.ingest import ingest
from finops_ml.errors import FinopsError
from finops_ml.synthetic import generator as gen
from finops_ml.synthetic.generator import (
    ANOMALY_KINDS,
    LABEL_KEYS,
    TAX_RATES,
    build_organisation,
    generate,
    generate_from_monthly,
)
from finops_ml.synthetic.injector import DIRECTION, KINDS
from finops_ml.synthetic.org import PLANTS

pytestmark = pytest.mark.unit

OUTPUT_FILES = ["events.jsonl", "control_totals.csv", "generation.json", "truth/anomalies.csv",
                "truth/anomaly_cells.csv", "truth/resources.csv"]


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, dtype={"invoice_month": str})


@pytest.fixture(scope="module")
def events(small_generated) -> pd.DataFrame:
    """The generated events, one row per line item, with the fields the tests look at flattened."""
    rows = []
    with open(small_generated / "events.jsonl") as f:
        for line in f:
            r = json.loads(line)
            rows.append(dict(
                date=r["usage_start_time"][:10],
                service=r["service"]["description"],
                project=(r["project"] or {}).get("id"),
                resource=(r["resource"] or {}).get("name"),
                sku=r["sku"]["description"],
                cost=r["cost"],
                net=r["cost"] + sum(c["amount"] for c in r["credits"]),
                cost_type=r["cost_type"],
                invoice_month=r["invoice"]["month"],
                labels=tuple((label["key"], label["value"]) for label in r["labels"]),
                keys=tuple(r),
            ))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def regular_cells(events) -> pd.DataFrame:
    """Daily gross and net cost per (day, service, project) cell, from the regular line items."""
    reg = events[events.cost_type == "regular"]
    return reg.groupby(["service", "project", "date"])[["cost", "net"]].sum()


@pytest.fixture(scope="module")
def truth(small_generated) -> dict[str, pd.DataFrame]:
    t = small_generated / "truth"
    return {name: _read_csv(t / f"{name}.csv") for name in ("anomalies", "anomaly_cells", "resources")}


# --- reproducibility ----------------------------------------------------------------------------------------------


def test_outputs_written(small_generated):
    for name in OUTPUT_FILES:
        assert (small_generated / name).stat().st_size > 0, name
    meta = json.loads((small_generated / "generation.json").read_text())
    assert meta["rows"] == sum(1 for _ in open(small_generated / "events.jsonl"))
    assert meta["events"] == "events.jsonl"


def test_same_seed_gives_identical_files(small_generated, small_generator_config, small_seed, tmp_path):
    again = tmp_path / "again"
    generate(small_generator_config, small_seed, again)
    for name in OUTPUT_FILES:
        assert (again / name).read_bytes() == (small_generated / name).read_bytes(), name


def test_different_seed_gives_different_data(small_generated, small_generator_config, small_seed, tmp_path):
    other = tmp_path / "other"
    generate(small_generator_config, small_seed + 1, other)
    for name in ["events.jsonl", "control_totals.csv", "truth/anomalies.csv", "truth/resources.csv"]:
        assert (other / name).read_bytes() != (small_generated / name).read_bytes(), name


def test_unknown_format_rejected(tmp_path, small_generator_config):
    with pytest.raises(FinopsError, match="Unknown output format 'csv'"):
        generate(small_generator_config, 1, tmp_path / "out", fmt="csv")
    assert not (tmp_path / "out").exists()


def test_crash_keeps_previous_output(small_generated, small_generator_config, monkeypatch, tmp_path):
    """A generation that fails while writing leaves the previous output as it was, and no partial directory."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "events.jsonl").write_text("previous\n")

    def boom(table, f):
        f.write("half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(gen, "_write_jsonl_rows", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        generate(small_generator_config, 3, out)
    assert (out / "events.jsonl").read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --- the events look like the export ------------------------------------------------------------------------------


def test_events_have_export_shape(events):
    expected = tuple(n for n in ARROW_SCHEMA.names if n != "event_id")
    assert set(events["keys"]) == {expected}


def test_all_generated_events_validate_and_reconcile(small_generated, tmp_path):
    summary = ingest(str(small_generated / "events.jsonl"), tmp_path / "ingested",
                     small_generated / "control_totals.csv")
    assert summary["quarantined"] == 0
    assert summary["duplicates"] == 0
    assert summary["rows"] == summary["read"] > 1000
    assert summary["reconciliation_diff"] == 0.0
    assert set(summary["reconciliation"]["diff_by_invoice_month"].values()) == {0.0}


def test_billing_rows_present(events, small_generator_config):
    counts = events.cost_type.value_counts()
    assert counts["regular"] > 1000
    n_months = small_generator_config.months
    assert counts["rounding_error"] == n_months
    assert counts["adjustment"] >= 1
    assert counts["tax"] >= 1
    assert events[events.cost_type == "adjustment"].cost.lt(0).all()
    assert events[events.cost_type == "rounding_error"].cost.abs().lt(0.005).all()


def test_tax_only_for_projects_in_taxed_countries(events, truth):
    """Tax rows belong to plant projects whose country levies one, at that country's rate of the month's cost."""
    plant_of_project = {}
    for row in truth["resources"].itertuples():
        if not row.project_id.startswith("acme-corp-"):
            plant_of_project[row.project_id] = row.plant
    country = {p.code: p.country for p in PLANTS}
    tax = events[events.cost_type == "tax"]
    reg = events[events.cost_type == "regular"].groupby(["project", "invoice_month"]).cost.sum()
    taxed_projects = set()
    for row in tax.itertuples():
        assert row.project in plant_of_project, f"tax billed to corporate project {row.project}"
        rate = TAX_RATES[country[plant_of_project[row.project]]]
        assert row.cost == pytest.approx(rate * reg[(row.project, row.invoice_month)], abs=1e-5)
        taxed_projects.add(row.project)
    expected = {p for p, plant in plant_of_project.items() if country[plant] in TAX_RATES}
    assert taxed_projects == expected and expected


def test_corporate_project_not_taxed_by_served_plant(tmp_path):
    """Regression: a corporate project's tax must not depend on which plant its last resource serves.

    With this seed the last data-platform resource serves Monterrey (MX); the project used to be taxed at 16%.
    """
    out = tmp_path / "gen"
    generate(GeneratorConfig(plants=3, resources_per_project=2, months=6), 1, out)
    res = _read_csv(out / "truth" / "resources.csv")
    assert res[res.project_id == "acme-corp-data-platform"].plant.iloc[-1] == "monterrey"  # the precondition
    taxed = set()
    with open(out / "events.jsonl") as f:
        for line in f:
            r = json.loads(line)
            if r["cost_type"] == "tax":
                taxed.add(r["project"]["id"])
    assert taxed == {"acme-mty-mes-prd", "acme-mty-historian-prd", "acme-mty-quality-dev"}


def test_credits_are_negative_and_smaller_than_cost(events):
    reg = events[events.cost_type == "regular"]
    credit = reg.net - reg.cost
    assert (credit <= 0).all()
    assert (credit < 0).mean() > 0.2
    assert (reg.net >= -1e-9).all()


# --- control totals -----------------------------------------------------------------------------------------------


def test_control_totals_equal_net_cost_per_invoice_month(events, small_generated, small_generator_config):
    control = _read_csv(small_generated / "control_totals.csv")
    assert list(control.columns) == ["invoice_month", "net_cost"]
    by_month = events.groupby("invoice_month").net.sum().round(2)
    assert list(control.invoice_month) == list(by_month.index)
    for month, total in zip(control.invoice_month, control.net_cost):
        assert abs(total - by_month[month]) < 0.005, month
    assert len(control) == small_generator_config.months


# --- labels -------------------------------------------------------------------------------------------------------


def test_about_a_fifth_of_resources_unlabelled_in_truth(truth):
    res = truth["resources"]
    complete = res.labelled == ";".join(LABEL_KEYS)
    share = 1 - complete.mean()
    assert 0.05 <= share <= 0.35
    assert set(res.labelled) <= {";".join(k for k in LABEL_KEYS if k in subset)
                                for subset in [(), *[(a,) for a in LABEL_KEYS],
                                               *[(a, b) for a in LABEL_KEYS for b in LABEL_KEYS], LABEL_KEYS]}
    assert (res.labelled == "").any()
    assert res.resource.is_unique


@pytest.mark.parametrize("share", [0.0, 0.2, 0.5])
def test_unlabelled_share_follows_config(share):
    """On a large organisation (2,340 resources) the unlabelled share is close to the configured one."""
    cfg = GeneratorConfig(plants=12, resources_per_project=60, unlabelled_share=share)
    resources = build_organisation(cfg, np.random.default_rng(5), 400)
    unlabelled = np.mean([r.labelled != LABEL_KEYS for r in resources])
    assert unlabelled == pytest.approx(share, abs=0.035)
    if share:
        fully = np.mean([r.labelled == () for r in resources if r.labelled != LABEL_KEYS])
        assert 0.45 < fully < 0.75  # ~60% of unlabelled resources carry no label at all, the rest some


def test_event_labels_agree_with_truth(events, truth):
    res = truth["resources"].set_index("resource")
    labels_of = events[events.cost_type == "regular"].groupby("resource").labels.agg(set)
    assert set(labels_of.index) == set(res.index)  # every resource bills, and only those
    for name, label_sets in labels_of.items():
        assert len(label_sets) == 1, name  # a resource carries the same labels on every line item
        labels = dict(next(iter(label_sets)))
        row = res.loc[name]
        carried = [k for k in LABEL_KEYS if k in labels]
        assert ";".join(carried) == row.labelled, name
        for key in carried:
            assert labels[key] == row[key], (name, key)
        assert labels["env"] in ("prod", "dev")


def test_a_few_resources_by_hand(events, truth):
    res = truth["resources"]
    unlabelled = res[res.labelled == ""].iloc[0]
    labelled = res[res.labelled == ";".join(LABEL_KEYS)].iloc[0]
    rows_u = events[events.resource == unlabelled.resource]
    rows_l = events[events.resource == labelled.resource]
    assert len(rows_u) and len(rows_l)
    assert all(set(dict(lbl)) == {"env"} for lbl in rows_u.labels)
    first = dict(rows_l.labels.iloc[0])
    assert (first["owner"], first["cost_center"], first["plant"]) == (labelled.owner, labelled.cost_center,
                                                                     labelled.plant)
    assert (rows_l.project == labelled.project_id).all() and (rows_l.service == labelled.service).all()


# --- anomalies ----------------------------------------------------------------------------------------------------


def test_anomalies_of_every_kind(truth, small_generated, small_generator_config):
    """The generator's anomalies come from the injector: every kind, each with its direction, window and $ sign."""
    an = truth["anomalies"]
    assert set(an.kind) == set(ANOMALY_KINDS) == set(KINDS)
    assert an.anomaly_id.is_unique
    meta = json.loads((small_generated / "generation.json").read_text())
    assert meta["anomalies"] == len(an)
    start, end = pd.to_datetime(an.start), pd.to_datetime(an.end)
    assert (start <= end).all()
    assert (start >= pd.Timestamp(meta["start"])).all() and (end <= pd.Timestamp(meta["end"])).all()
    length = (end - start).dt.days + 1
    spec = gen.injection_spec(small_generator_config)
    bounds = {"spike": spec.spike_days, "level_shift": spec.shift_days, "drift": spec.drift_days,
              "drop": spec.drop_days, "new_resource": spec.new_resource_days, "spread": spec.spread_days,
              "new_sku": spec.new_sku_days}
    for kind, n in zip(an.kind, length):
        lo, hi = bounds[kind]
        assert lo <= n <= hi, (kind, n)
    assert (an.direction == an.kind.map(DIRECTION)).all()
    assert (an[an.direction == "up"].injected_cost > 0).all() and (an[an.direction == "down"].injected_cost < 0).all()


def test_anomaly_cells_cover_each_window(truth):
    an, cells = truth["anomalies"], truth["anomaly_cells"]
    assert not cells.duplicated(["date", "service", "project_id"]).any()  # one anomaly per cell-day
    for a in an.itertuples():
        mine = cells[cells.anomaly_id == a.anomaly_id]
        days = pd.date_range(a.start, a.end, freq="D").strftime("%Y-%m-%d").tolist()
        assert mine.date.tolist() == days
        assert set(mine.service) == {a.service} and set(mine.project_id) == {a.project_id}
        assert set(mine.kind) == {a.kind} and set(mine.direction) == {a.direction}
        assert mine.injected_cost.sum() == pytest.approx(a.injected_cost, abs=0.01)


def test_events_contain_the_injected_cost(truth, regular_cells):
    """On every anomalous day the cell's billed (gross) cost is its expected cost plus the injected cost (a cell
    whose only resource stopped billing bills nothing)."""
    cells = truth["anomaly_cells"]
    for c in cells.itertuples():
        key = (c.service, c.project_id, c.date)
        billed = regular_cells.loc[key, "cost"] if key in regular_cells.index else 0.0
        assert billed == pytest.approx(c.expected_cost + c.injected_cost, abs=2e-3), c


def _resource_days(events: pd.DataFrame, resource: str) -> pd.Series:
    own = events[(events.cost_type == "regular") & (events.resource == resource)].groupby("date").cost.sum()
    own.index = pd.to_datetime(own.index)
    return own


def test_spikes_and_shifts_are_sized_by_their_resources_own_noise(truth, events):
    """A spike or a level shift multiplies its resource's cost by exp(k x the resource's log-sigma): against the
    same weekdays around it, the resource's cost on those days rose by that factor, within its own noise."""
    an = truth["anomalies"]
    windows = {(a.service, a.project_id): [] for a in an.itertuples()}
    for a in an.itertuples():
        windows[(a.service, a.project_id)].append((pd.Timestamp(a.start), pd.Timestamp(a.end) if not a.persists
                                                   else pd.Timestamp("2100-01-01")))
    checked = 0
    sized = an[an.kind.isin(["spike", "level_shift"])].astype({"sigma": float, "sigma_multiple": float})
    for a in sized.itertuples():
        capped = a.size == pytest.approx(gen.injection_spec(GeneratorConfig()).max_factor)
        assert capped or np.log(a.size) == pytest.approx(a.sigma_multiple * a.sigma, rel=0.01)
        assert 3.0 <= a.sigma_multiple <= 30.0 and 0.02 <= a.sigma < 0.2
        own = _resource_days(events, a.resource)
        busy = windows[(a.service, a.project_id)]
        for day in pd.date_range(a.start, a.end):
            around = [day + pd.Timedelta(weeks=w) for w in (-3, -2, -1, 1, 2, 3)]
            around = [d for d in around if d in own.index and not any(s - pd.Timedelta(days=1) <= d <= e + pd.Timedelta(
                days=1) for s, e in busy)]
            if len(around) < 2:
                continue
            ratio = own[day] / np.median(own[around])
            assert abs(np.log(ratio) - np.log(a.size)) <= 4 * a.sigma + 0.1, (a.anomaly_id, day, ratio, a.size)
            checked += 1
    assert checked >= 5


def test_drops_and_runaway_resources_in_the_events(truth, events):
    an, res = truth["anomalies"], truth["resources"]
    for a in an[an.kind == "drop"].itertuples():
        own = _resource_days(events, a.resource)
        window = pd.date_range(a.start, a.end)
        before = own[(own.index < window[0]) & (own.index >= window[0] - pd.Timedelta(days=28))].median()
        during = own.reindex(window).fillna(0.0)
        assert (during <= 0.25 * before).all(), a  # 80-100% of the resource's own cost, gone
        assert a.size < 0.2
    runaway = an[an.kind == "new_resource"]
    assert len(runaway)
    for a in runaway.itertuples():
        assert a.resource in set(res.resource)  # a resource of the organisation, with its labels in the truth
        own = _resource_days(events, a.resource)
        assert own.index.min() == pd.Timestamp(a.start) and own.index.max() == pd.Timestamp(a.end)
        assert own.iloc[-1] > own.iloc[0]  # it runs away


def test_new_sku_appears_only_in_its_window(truth, events):
    an = truth["anomalies"]
    for a in an[an.kind == "new_sku"].itertuples():
        windows = an[(an.kind == "new_sku") & (an.resource == a.resource) & (an.sku == a.sku)]
        allowed = set()
        for w in windows.itertuples():
            allowed |= set(pd.date_range(w.start, w.end).strftime("%Y-%m-%d"))
        rows = events[(events.resource == a.resource) & (events.sku == a.sku)]
        own = set(pd.date_range(a.start, a.end).strftime("%Y-%m-%d"))
        assert own <= set(rows.date)
        assert set(rows.date) <= allowed
        assert rows[rows.date.isin(own)].cost.sum() == pytest.approx(a.injected_cost, abs=0.02)
        # The SKU is new: the resource never billed it outside anomaly windows.
        assert a.sku not in set(events[(events.resource == a.resource) & ~events.date.isin(allowed)].sku)


def test_material_flag_consistent(truth, small_generator_config):
    """A labelled day is material when the injected change is at least material_share of the cell's expected cost
    and at least material_min_usd; sized against the resource, not the cell, some anomalies are not material."""
    cells = truth["anomaly_cells"]
    share, floor = small_generator_config.material_share, small_generator_config.material_min_usd
    assert cells.material.dtype == bool
    line = np.maximum(share * cells.expected_cost, floor)
    clear = (cells.injected_cost.abs() - line).abs() > 1e-3
    assert (cells.material[clear] == (cells.injected_cost.abs() >= line)[clear]).all()
    assert cells.material.any() and not cells.material.all()
    drift = cells[cells.kind == "drift"]
    for _, d in drift.groupby("anomaly_id"):
        assert d.injected_cost.iloc[-1] > d.injected_cost.iloc[0]  # a drift grows


# --- generate_from_monthly ----------------------------------------------------------------------------------------

MONTHLY = """month,service,cost
2025-01,Compute Engine,1200.37
2025-02,Compute Engine,1300.11
2025-03,Compute Engine,1250.99
2025-02,BigQuery,400.05
2025-03,BigQuery,410.50
2025-03,Cloud Storage,99.99
2025-03,Cloud Storage,0.02
"""


@pytest.fixture(scope="module")
def monthly(tmp_path_factory):
    base = tmp_path_factory.mktemp("monthly")
    csv = base / "monthly.csv"
    csv.write_text(MONTHLY)
    out = base / "generated"
    meta = generate_from_monthly(csv, GeneratorConfig(plants=2, resources_per_project=4), 3, out)
    return csv, out, meta


def test_generate_from_monthly_reconciles_to_the_cent(monthly, tmp_path):
    csv, out, meta = monthly
    control = _read_csv(out / "control_totals.csv")
    assert dict(zip(control.invoice_month, control.net_cost)) == {"202501": 1200.37, "202502": 1700.16,
                                                                   "202503": 1761.50}
    summary = ingest(str(out / "events.jsonl"), tmp_path / "ing", out / "control_totals.csv")
    assert summary["quarantined"] == 0 and summary["rows"] == meta["rows"]
    assert summary["reconciliation_diff"] == 0.0
    assert summary["cost_by_invoice_month"] == {"202501": 1200.37, "202502": 1700.16, "202503": 1761.5}


def test_generate_from_monthly_matches_each_service_month(monthly):
    """Net cost per (month, service) equals the CSV to the cent, and a service absent from a month costs nothing."""
    csv, out, _ = monthly
    got = {}
    days = set()
    with open(out / "events.jsonl") as f:
        for line in f:
            r = json.loads(line)
            assert r["credits"] == []
            key = (r["invoice"]["month"], r["service"]["description"])
            got[key] = got.get(key, 0.0) + r["cost"]
            days.add(r["usage_start_time"][:10])
    got = {k: round(v, 2) for k, v in got.items()}
    want = pd.read_csv(csv, dtype={"month": str})
    want = want.assign(month=want.month.str.replace("-", "")).groupby(["month", "service"]).cost.sum().round(2)
    assert got == {k: float(v) for k, v in want.items()}
    # Daily line items across each month, not one lump.
    assert min(days) == "2025-01-01" and max(days) == "2025-03-31" and len(days) == 90


def test_generate_from_monthly_accepts_yyyymm(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("month,service,cost\n202507,Cloud Run,10.01\n202508,Cloud Run,20.02\n")
    generate_from_monthly(csv, GeneratorConfig(plants=1, resources_per_project=4), 1, tmp_path / "out", fmt="parquet")
    summary = ingest(str(tmp_path / "out" / "events.parquet"), tmp_path / "ing",
                     tmp_path / "out" / "control_totals.csv")
    assert summary["reconciliation_diff"] == 0.0
    assert summary["cost_by_invoice_month"] == {"202507": 10.01, "202508": 20.02}


@pytest.mark.parametrize(
    "content, message",
    [
        ("month,service,cost\n2025-01,Mainframe,10\n", "unknown services \\['Mainframe'\\]"),
        ("month,cost\n2025-01,10\n", "lacks the column\\(s\\) \\['service'\\]"),
    ],
)
def test_generate_from_monthly_bad_csv(tmp_path, content, message):
    csv = tmp_path / "m.csv"
    csv.write_text(content)
    with pytest.raises(FinopsError, match=message):
        generate_from_monthly(csv, GeneratorConfig(plants=1), 1, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_generate_from_monthly_missing_file(tmp_path):
    with pytest.raises(FinopsError, match="does not exist"):
        generate_from_monthly(tmp_path / "nope.csv", GeneratorConfig(), 1, tmp_path / "out")


def _digest(out: Path) -> str:
    """A hash of the generated data (truth tables, control totals, every line item's cost and day)."""
    import hashlib

    import pyarrow.parquet as pq

    h = hashlib.sha256()
    for f in ["control_totals.csv", "truth/anomalies.csv", "truth/anomaly_cells.csv", "truth/resources.csv"]:
        h.update(pd.read_csv(out / f).round(6).to_csv(index=False).encode())
    t = pq.read_table(out / "events.parquet", columns=["cost", "usage_start_time"])
    h.update(np.round(t.column("cost").to_numpy(), 6).tobytes())
    h.update(t.column("usage_start_time").to_numpy().astype("int64").tobytes())
    return h.hexdigest()


def test_shape_fields_default_to_the_original_draws(tmp_path):
    # Recomputed when the anomalies moved to the injector (the demo data changed then, by design); the defaults
    # and the "easy" shape must give the same data, draw for draw.
    generate(GeneratorConfig(plants=2, resources_per_project=3, months=6), 3, tmp_path / "g", fmt="parquet")
    assert _digest(tmp_path / "g") == "ba8abefaf3df57731d274957ce87d5c36b24caaa9c61eb41d88489f724c62715"
    generate(gen.shape_config("easy", GeneratorConfig(plants=2, resources_per_project=3, months=6)), 3,
             tmp_path / "d", fmt="parquet")
    assert _digest(tmp_path / "d") == _digest(tmp_path / "g")


def test_org_shapes():
    assert gen.shape_config("easy") == GeneratorConfig()
    small, large = gen.shape_config("small_stable"), gen.shape_config("large_fast_migration")
    assert (small.plants, small.resources_per_project, small.noise_sigma) == (2, 12, 0.04)
    assert (large.plants, large.migration_span, large.late_resource_share) == (8, 0.3, 0.5)
    with pytest.raises(FinopsError, match="Unknown organisation shape 'huge'"):
        gen.shape_config("huge")

    def late_starts(cfg):  # plant resources that arrive more than 90 days after the first plant's wave
        res = build_organisation(cfg, np.random.default_rng(1), 450)
        plant_res = [r for r in res if not r.project_id.startswith("acme-corp")]
        waves = {}
        for r in plant_res:
            waves[r.project_id] = min(waves.get(r.project_id, 10**6), r.start)
        return np.mean([r.start - waves[r.project_id] > 90 for r in plant_res])

    assert late_starts(small) < late_starts(GeneratorConfig(plants=2, resources_per_project=12)) < late_starts(
        GeneratorConfig(plants=2, resources_per_project=12, late_resource_share=0.6))
