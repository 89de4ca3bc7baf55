"""Synthetic billing data of an industrial organisation migrating its plants to Google Cloud.

Daily line items per (resource, SKU) with credits, taxes, adjustments, weekly and month-end seasonality,
migration waves and growth, resources that come and go, ~20% unlabelled resources and anomalies made by the
injector (finops_ml.synthetic.injector: spikes, level shifts, slow drifts, new SKUs, and at `new_anomaly_kinds_share`
drops, runaway new resources and rises spread over a service). The ground truth is written beside the events:

  events.jsonl | events.parquet   the billing events (Cloud Billing export shape)
  control_totals.csv              net cost per invoice month, as the invoice states it (ingest reconciles to it)
  truth/anomalies.csv             one row per injected anomaly (kind, direction, window, resources, size, $ impact)
  truth/anomaly_cells.csv         daily cells (day x service x project) of each anomaly's window, whether material
  truth/resources.csv             every resource with its true owner / cost_center / plant and which labels it carries
  truth/carried_labels.csv        carried label values that differ from the truth (wrong, misspelt, a departed owner)
  truth/normal_events.csv         planned changes that look like anomalies and are not (finops_ml.synthetic.realism)

Everything is drawn from one seeded generator: the same config and seed give the same files.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from finops_ml.config import GeneratorConfig
from finops_ml.data.events import ARROW_SCHEMA, EXPORT_SCHEMA
from finops_ml.errors import FinopsError
from finops_ml.fileio import atomic_dir
from finops_ml.synthetic import realism
from finops_ml.synthetic.injector import KINDS, NEW_SKU_NAMES, SERIES_KEYS, CostPanel, InjectionSpec, inject
from finops_ml.synthetic.org import (
    APPS,
    BILLING_ACCOUNT_ID,
    COMMITMENT_FEE_SKU,
    COMPANY_DOMAIN,
    CORPORATE,
    NEW_SKUS,
    PLANTS,
    SERVICE_BY_KEY,
    WORKLOADS,
)

LABEL_KEYS = ("owner", "cost_center", "plant")
TAX_RATES = {"IN": 0.18, "MX": 0.16, "BR": 0.12, "JP": 0.10}  # withheld / local taxes billed per project
CREDIT_RATES = {"SUSTAINED_USAGE_DISCOUNT": (0.08, 0.20), "COMMITTED_USAGE_DISCOUNT": (0.2, 0.3)}
ANOMALY_KINDS = KINDS  # every kind the injector makes


@dataclass
class _Resource:
    name: str
    project_id: str
    project_name: str
    project_number: str
    workload: str
    env: str
    service: str
    region: str
    country: str
    plant: str
    owner: str
    cost_center: str
    start: int
    end: int  # exclusive day index
    base: float
    weekend: float
    labelled: tuple[str, ...]
    carried: dict = field(default_factory=dict)  # carried label values that differ from the truth (realism)
    commitment: tuple | None = None  # (first day, end day, rate) of a committed use discount on its compute (realism)


def _days(cfg: GeneratorConfig) -> pd.DatetimeIndex:
    start = pd.Timestamp(cfg.start, tz="UTC")
    end = start + pd.DateOffset(months=cfg.months)
    return pd.date_range(start, end, freq="D", inclusive="left")


def _alias_name(rng: np.random.Generator, pattern: str, plant_aliases: tuple[str, ...], app: str, n: int) -> str:
    alias = plant_aliases[rng.integers(len(plant_aliases))]
    name = pattern.format(p=alias.lower(), P=alias.upper(), a=app, n=f"{n:02d}")
    if rng.random() < 0.15:  # imperfect conventions: separators and case drift
        name = name.replace("-", "_") if rng.random() < 0.5 else name.upper()
    return name


def build_organisation(cfg: GeneratorConfig, rng: np.random.Generator, n_days: int) -> list[_Resource]:
    """Projects per plant (MES, historian, quality) and corporate projects, each with its resources."""
    plants = PLANTS[: cfg.plants]
    projects = []  # (project_id, name, workload, env, plant or None, wave_start_day)
    wave_span = max(1, int(n_days * cfg.migration_span))
    for i, plant in enumerate(plants):
        wave = 0 if i == 0 else int(rng.integers(0, wave_span))
        for workload, env in (("mes", "prod"), ("historian", "prod"), ("quality", "dev" if i % 3 == 2 else "prod")):
            pid = f"acme-{plant.aliases[1]}-{workload}-{'prd' if env == 'prod' else env}"
            projects.append((pid, f"{plant.city} {workload.upper()} {env}", workload, env, plant, wave))
    for workload in CORPORATE:
        projects.append((f"acme-corp-{workload}", f"Corporate {workload}", workload, "prod", None, 0))

    resources: list[_Resource] = []
    used_names: set[str] = set()
    for p_idx, (pid, pname, workload, env, plant, wave) in enumerate(projects):
        services = WORKLOADS[workload]
        for r in range(cfg.resources_per_project):
            # Every workload service appears at least once, then draws weighted towards the first ones.
            if r < len(services):
                svc_key, role = services[r]
            else:
                weights = np.linspace(2.0, 1.0, len(services))
                svc_key, role = services[rng.choice(len(services), p=weights / weights.sum())]
            spec = SERVICE_BY_KEY[svc_key]
            app = APPS[workload][rng.integers(len(APPS[workload]))]
            if plant is not None:
                aliases, region, plant_label = plant.aliases, plant.region, plant.code
                owner = plant.people[role]
                cost_center = plant.cost_center_eng if workload == "quality" else plant.cost_center_ops
            else:
                # Corporate resources serve a plant when their name says so, otherwise the whole company.
                cost_center, people, plant_label = CORPORATE[workload]
                owner = people[role]
                region = "europe-west1"
                aliases = ("corp", "hq", "CORP", "global")
                if workload == "data-platform" and rng.random() < 0.5:
                    served = plants[rng.integers(len(plants))]
                    aliases, plant_label = served.aliases, served.code
                    cost_center = served.cost_center_eng
            pattern = spec.name_patterns[rng.integers(len(spec.name_patterns))]
            for n in range(1, 1000):
                name = _alias_name(rng, pattern, aliases, app, n)
                if name not in used_names:
                    break
            if name in used_names:  # a pattern without a number runs out of names at scale
                name = f"{name}-{len(used_names)}"
            used_names.add(name)
            if rng.random() < 0.03:  # a few resources are owned by a colleague: irreducible label noise
                owner = (plant.people if plant is not None else CORPORATE[workload][1])[rng.integers(3)]
            # Migration: resources arrive with their plant's wave; late_resource_share arrive later; some leave.
            if plant is None and rng.random() < 0.8:
                start = 0
            elif rng.random() < 1.0 - cfg.late_resource_share:
                start = wave + int(rng.integers(0, 90))
            else:
                start = int(rng.integers(wave, max(wave + 1, n_days - 60)))
            start = min(start, n_days - 30)
            end = n_days
            if rng.random() < 0.08 and start + 150 < n_days:
                end = int(rng.integers(start + 120, n_days))
            lo, hi = spec.daily_cost
            base = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
            labelled = LABEL_KEYS
            if rng.random() < cfg.unlabelled_share:
                if rng.random() < 0.6:
                    labelled = ()
                else:
                    missing = set(rng.choice(LABEL_KEYS, size=int(rng.integers(1, 3)), replace=False))
                    labelled = tuple(k for k in LABEL_KEYS if k not in missing)
            resources.append(
                _Resource(
                    name=name, project_id=pid, project_name=pname, project_number=f"{700000000000 + p_idx * 7919}",
                    workload=workload, env=env, service=svc_key, region=region,
                    country=plant.country if plant else "BE", plant=plant_label,
                    owner=f"{owner}@{COMPANY_DOMAIN}".replace("@", "_at_").replace(".", "_"),
                    cost_center=cost_center, start=start, end=end, base=base,
                    weekend=float(np.clip(spec.weekend_factor + rng.normal(0, 0.05), 0.3, 1.05)), labelled=labelled,
                )
            )
    return resources


def add_new_projects(cfg: GeneratorConfig, rng: np.random.Generator, resources: list[_Resource],
                     days: pd.DatetimeIndex) -> list[dict]:
    """`cfg.new_projects` projects created during the history (a plant starts a vision-inspection project): their
    resources all arrive within its first three weeks and ramp up, in a project the labelers have never seen.
    Appended to `resources`; returns one normal event per project (kind `ramp_up`)."""
    n_days = len(days)
    plants = list(PLANTS[: cfg.plants])
    if len(plants) >= 3:  # not at the plant normal_events decommissions (the last code)
        plants.remove(max(plants, key=lambda p: p.code))
    n_projects = len({r.project_id for r in resources})
    used = {r.name for r in resources}
    events = []
    for k in range(cfg.new_projects):
        plant = plants[int(rng.integers(len(plants)))]
        pid = f"acme-{plant.aliases[1]}-vision{'' if k == 0 else k + 1}-prd"
        first = int(rng.integers(int(0.3 * n_days), int(0.75 * n_days)))
        services = WORKLOADS["quality"]
        members = []
        for r in range(max(3, cfg.resources_per_project // 2)):
            svc_key, role = services[r] if r < len(services) else services[int(rng.integers(len(services)))]
            spec = SERVICE_BY_KEY[svc_key]
            pattern = spec.name_patterns[int(rng.integers(len(spec.name_patterns)))]
            name = next((nm for n in range(1, 1000) if (nm := _alias_name(rng, pattern, plant.aliases, "vision", n))
                         not in used), f"{plant.code}-vision-{len(used)}")
            used.add(name)
            lo, hi = spec.daily_cost
            labelled = LABEL_KEYS if rng.random() >= cfg.unlabelled_share else ()
            members.append(_Resource(
                name=name, project_id=pid, project_name=f"{plant.city} VISION prod",
                project_number=f"{700000000000 + (n_projects + k) * 7919}", workload="quality", env="prod",
                service=svc_key, region=plant.region, country=plant.country, plant=plant.code,
                owner=f"{plant.people[role]}@{COMPANY_DOMAIN}".replace("@", "_at_").replace(".", "_"),
                cost_center=plant.cost_center_eng, start=first + int(rng.integers(0, 21)), end=n_days,
                base=float(math.exp(rng.uniform(math.log(lo), math.log(hi)))),
                weekend=float(np.clip(spec.weekend_factor + rng.normal(0, 0.05), 0.3, 1.05)), labelled=labelled))
        resources.extend(members)
        end = min(n_days - 1, max(r.start for r in members) + realism.RAMP_DAYS)
        first = min(r.start for r in members)
        events.append(dict(kind="ramp_up", start=str(days[first].date()), end=str(days[end].date()),
                           service=";".join(sorted({r.service for r in members})), project_id=pid,
                           resources=";".join(sorted(r.name for r in members))))
    return events


def _series_costs(cfg, rng, resources, days, real_rng=None, holidays=None):
    """Normal (anomaly-free) daily cost per (resource, SKU): returns the series table and a cost matrix. With
    `usage_noise: by_kind` each resource's usage also varies as its kind does (realism.usage_noise, `real_rng`);
    with `holidays` (country -> weekday holiday mask) a plant project's resources bill those days as a weekend."""
    n_days = len(days)
    t = np.arange(n_days)
    weekend = np.asarray(days.dayofweek >= 5)
    month_end = np.asarray(days.day > days.days_in_month - 2)
    rows = []
    costs = []
    for r_idx, res in enumerate(resources):
        spec = SERVICE_BY_KEY[res.service]
        active = (t >= res.start) & (t < res.end)
        ramp = np.clip(0.3 + 0.7 * (t - res.start) / 21.0, 0.3, 1.0)
        growth = (1.0 + spec.monthly_growth * rng.uniform(0.5, 1.5)) ** (np.maximum(t - res.start, 0) / 30.4)
        level = res.base * ramp * growth * active
        if cfg.usage_noise == "by_kind":
            level = level * realism.usage_noise(real_rng, res.service, n_days)
        off = weekend
        if holidays is not None and realism.is_plant_project(res):
            off = weekend | holidays[res.country]
        for s_idx, sku in enumerate(spec.skus):
            season = np.where(off, res.weekend, 1.0)
            if s_idx == 0 and spec.month_end_factor != 1.0:
                season = season * np.where(month_end, spec.month_end_factor, 1.0)
            noise = rng.lognormal(0.0, cfg.noise_sigma, n_days)
            costs.append(level * sku.share * season * noise)
            rows.append((r_idx, sku))
    return rows, np.vstack(costs)


# The generator's mix of kinds: today's four, and the injector's newer ones at `new_anomaly_kinds_share`.
OLD_KIND_WEIGHTS = {"spike": 0.35, "level_shift": 0.25, "drift": 0.25, "new_sku": 0.15}
NEW_KINDS = ("drop", "new_resource", "spread")


def injection_spec(cfg: GeneratorConfig) -> InjectionSpec:
    """The injector's settings for the generator's anomalies."""
    share = cfg.new_anomaly_kinds_share
    kinds = {**{k: w * (1.0 - share) for k, w in OLD_KIND_WEIGHTS.items()}, **{k: share / len(NEW_KINDS)
                                                                              for k in NEW_KINDS}}
    return InjectionSpec(kinds=kinds, sigma_multiple=tuple(cfg.anomaly_sigma_multiple),
                         material_share=cfg.material_share, min_impact_usd=cfg.material_min_usd,
                         new_skus=NEW_SKU_NAMES)


def _inject_anomalies(cfg, rng, resources, series, cost, days):
    """Anomalies from the injector (finops_ml.synthetic.injector) on the (resource, SKU) cost matrix: about
    1.5 x anomaly_share x series of them (the former generator's rate). Returns the new cost matrix, the added
    series (new SKUs, runaway resources, appended to `resources`) as (resource index, SKU, daily cost) and the
    truth tables."""
    n = int(round(1.5 * cfg.anomaly_share * len(series)))
    keys = pd.DataFrame([(SERVICE_BY_KEY[resources[r].service].description, resources[r].project_id,
                          resources[r].name, sku.description) for r, sku in series], columns=SERIES_KEYS)
    panel = CostPanel(days.tz_localize(None), keys, np.where(cost > 0, cost, np.nan))
    result = inject(panel, rng, n, injection_spec(cfg))
    injected = np.nan_to_num(result.panel.cost)
    new_cost = injected[: len(series)]
    sku_by_name = {s.description: s for s in NEW_SKUS}
    clones: dict[str, int] = {}
    added = []
    for i in range(len(series), len(result.panel.keys)):
        key = result.panel.keys.iloc[i]
        r, sku = series[int(result.template[i])]
        if key.resource_name == resources[r].name:  # a new SKU of the resource
            added.append((r, sku_by_name[key.sku], injected[i]))
            continue
        if key.resource_name not in clones:  # a runaway resource: a copy of its cell's resource under a new name
            billed = np.flatnonzero(injected[i] > 0)
            resources.append(replace(resources[r], name=key.resource_name, start=int(billed[0]),
                                     end=int(billed[-1]) + 1))
            clones[key.resource_name] = len(resources) - 1
        added.append((clones[key.resource_name], sku, injected[i]))
    return new_cost, added, result.anomalies, result.cells


def _labels_of(res: _Resource) -> list[dict]:
    true = {"owner": res.owner, "cost_center": res.cost_center, "plant": res.plant}
    labels = [{"key": k, "value": res.carried.get(k, true[k])} for k in res.labelled]
    labels.append({"key": "env", "value": res.env})
    return labels


def _line_items(cfg, rng, resources, series, cost, days, real_rng=None, eur_per_usd=None) -> pa.Table:
    """Turn the cost matrix (USD) into export line items (only the days a series has cost). A resource under a
    commitment (`res.commitment`) earns its rate as a committed use discount on the days it runs; with
    `eur_per_usd` (a rate per day) the rows of projects outside the Americas are billed in EUR (realism)."""
    s_idx, d_idx = np.nonzero(cost > 0)
    n = len(s_idx)
    gross = np.round(cost[s_idx, d_idx], 6)
    res_of_series = np.array([r for r, _ in series])
    r_idx = res_of_series[s_idx]
    skus = [sku for _, sku in series]

    # Per-series strings, taken into rows with numpy (no Python loop over rows).
    s_take, r_take = pa.array(s_idx), pa.array(r_idx)

    def per_series(values, type=None):
        return pa.array(values, type).take(s_take)

    def per_resource(values, type=None):
        return pa.array(values, type).take(r_take)

    start_ts = days.tz_localize(None).to_numpy()[d_idx]
    end_ts = start_ts + np.timedelta64(1, "D")
    export_ts = end_ts + (rng.integers(4, 30, n) * np.timedelta64(1, "h"))
    if cfg.late_row_share:
        export_ts = export_ts + realism.late_export_days(real_rng, n, cfg.late_row_share) * np.timedelta64(1, "D")
    invoice = pd.DatetimeIndex(start_ts).strftime("%Y%m").to_numpy()

    credit_type = np.asarray([s.credit or "" for s in skus], dtype=object)[s_idx]
    erp = np.asarray([r.workload == "erp" for r in resources])[r_idx]
    credit_type = np.where((credit_type == "SUSTAINED_USAGE_DISCOUNT") & erp, "COMMITTED_USAGE_DISCOUNT", credit_type)
    rate = np.zeros(n)
    for kind, (lo, hi) in CREDIT_RATES.items():
        series_rate = rng.uniform(lo, hi, len(series))[s_idx]
        rate = np.where(credit_type == kind, series_rate, rate)
    if any(r.commitment for r in resources):
        lo, hi, cud = (np.asarray([r.commitment[k] if r.commitment else 0 for r in resources])[r_idx]
                       for k in range(3))
        covered = (credit_type == "SUSTAINED_USAGE_DISCOUNT") & (d_idx >= lo) & (d_idx < hi)
        credit_type = np.where(covered, "COMMITTED_USAGE_DISCOUNT", credit_type)
        rate = np.where(covered, cud, rate)
    normal = np.round(gross, 6)
    credit_amount = -np.round(normal * rate, 6)
    free_tier = credit_type == "FREE_TIER"
    credit_amount = np.where(free_tier, -np.round(np.minimum(normal, 0.5), 6), credit_amount)
    has_credit = credit_amount < 0
    billed = gross  # in the billing account's currency
    account, currency, conversion = np.full(n, BILLING_ACCOUNT_ID), np.full(n, "USD"), np.ones(n)
    if eur_per_usd is not None:  # the EUR account's rows: cost and credits in EUR at the day's rate
        eur = np.asarray([realism.in_eur(r.country) for r in resources])[r_idx]
        conversion = np.where(eur, eur_per_usd[d_idx], 1.0)
        billed = np.where(eur, np.round(gross * conversion, 6), gross)
        credit_amount = np.where(eur, np.round(credit_amount * conversion, 6), credit_amount)
        account = np.where(eur, realism.EUR_BILLING_ACCOUNT_ID, account)
        currency = np.where(eur, "EUR", currency)
    credit_names = {"SUSTAINED_USAGE_DISCOUNT": "Sustained usage discount",
                    "COMMITTED_USAGE_DISCOUNT": "Committed use discount: CPU", "FREE_TIER": "Free tier"}
    credits = [
        [{"name": credit_names[t], "amount": float(a), "full_name": None, "id": None, "type": t}] if h else []
        for t, a, h in zip(credit_type, credit_amount, has_credit)
    ]
    unit_price = np.asarray([s.unit_price for s in skus])[s_idx]
    amount_pricing = gross / unit_price
    label_type = ARROW_SCHEMA.field("labels").type
    table = pa.table(
        {
            "billing_account_id": pa.array(account),
            "service": pa.StructArray.from_arrays(
                [per_resource([SERVICE_BY_KEY[r.service].id for r in resources]),
                 per_resource([SERVICE_BY_KEY[r.service].description for r in resources])],
                names=["id", "description"]),
            "sku": pa.StructArray.from_arrays(
                [per_series([s.id for s in skus]), per_series([s.description for s in skus])],
                names=["id", "description"]),
            "usage_start_time": _utc_array(start_ts),
            "usage_end_time": _utc_array(end_ts),
            "project": pa.StructArray.from_arrays(
                [per_resource([r.project_id for r in resources]),
                 per_resource([r.project_number for r in resources]),
                 per_resource([r.project_name for r in resources]),
                 per_resource([[{"key": "env", "value": r.env}, {"key": "workload", "value": r.workload}]
                               for r in resources], label_type),
                 per_resource([f"/{r.project_number}/880011223344/" for r in resources])],
                names=["id", "number", "name", "labels", "ancestry_numbers"]),
            "labels": per_resource([_labels_of(r) for r in resources], label_type),
            "system_labels": per_resource([[{"key": "goog-resource-type", "value": SERVICE_BY_KEY[r.service].kind}]
                                           for r in resources], label_type),
            "location": pa.StructArray.from_arrays(
                [per_resource([r.region for r in resources]),
                 per_resource([r.country for r in resources]),
                 per_resource([r.region for r in resources]),
                 per_resource([f"{r.region}-b" for r in resources])],
                names=["location", "country", "region", "zone"]),
            "resource": pa.StructArray.from_arrays(
                [per_resource([r.name for r in resources]),
                 per_resource([f"//{r.service}.googleapis.com/projects/{r.project_id}/{r.name}" for r in resources])],
                names=["name", "global_name"]),
            "export_time": _utc_array(export_ts),
            "cost": pa.array(billed),
            "currency": pa.array(currency),
            "currency_conversion_rate": pa.array(conversion),
            "usage": pa.StructArray.from_arrays(
                [pa.array(np.round(amount_pricing * 3600.0, 3)), per_series([s.unit for s in skus]),
                 pa.array(np.round(amount_pricing, 6)), per_series([s.pricing_unit for s in skus])],
                names=["amount", "unit", "amount_in_pricing_units", "pricing_unit"]),
            "credits": pa.array(credits, ARROW_SCHEMA.field("credits").type),
            "invoice": pa.StructArray.from_arrays([pa.array(invoice)], names=["month"]),
            "cost_type": pa.array(np.full(n, "regular")),
            "adjustment_info": pa.nulls(n, ARROW_SCHEMA.field("adjustment_info").type),
            "cost_at_list": pa.array(np.round(billed / (1.0 - rate * 0.5), 6)),
            "transaction_type": pa.array(np.full(n, "GOOGLE")),
            "seller_name": pa.array(np.full(n, "Google")),
        }
    )
    if cfg.export_granularity == "hourly":
        weights = np.vstack([realism.hourly_weights(r.service, r.region) for r in resources])[r_idx]
        table = _hourly(table, weights)
    return table


def _hourly(table: pa.Table, weights: np.ndarray) -> pa.Table:
    """Each daily line item as 24 hourly ones (`weights`: per row, 24 shares summing to 1): cost, credits and usage
    split by the weights (rounded to 6 decimals, the last hour taking the remainder so the day adds up), the times
    an hour apart; the export time stays the day's."""
    n = table.num_rows
    rows = np.repeat(np.arange(n), 24)
    w = weights.reshape(-1)

    def split(values: np.ndarray) -> np.ndarray:
        parts = np.round(values[rows] * w, 6).reshape(n, 24)
        last = np.round(values - parts[:, :-1].sum(axis=1), 6)
        parts[:, -1] = np.where(last * values >= 0, last, 0.0)  # never a sign the day's value does not have
        return parts.reshape(-1)

    out = table.take(pa.array(rows))
    hour = np.tile(np.arange(24), n) * np.timedelta64(1, "h")
    start = table.column("usage_start_time").to_numpy().astype("datetime64[us]")[rows] + hour
    credits = out.column("credits").combine_chunks()
    flat = pc.list_flatten(credits)
    parent = pc.list_parent_indices(credits).to_numpy()
    amounts = flat.field("amount").to_numpy(zero_copy_only=False)
    day_amount = np.zeros(n)  # one credit per line item at most: its day's amount by the day's row
    day_amount[rows[parent[parent % 24 == 0]]] = amounts[parent % 24 == 0]
    amounts = split(day_amount)[parent]
    flat = pa.StructArray.from_arrays([flat.field(f.name) if f.name != "amount" else pa.array(amounts)
                                       for f in flat.type], fields=list(flat.type))
    usage = out.column("usage").combine_chunks()
    usage = pa.StructArray.from_arrays(
        [pa.array(split(usage.field(f.name).to_numpy(zero_copy_only=False).reshape(n, 24)[:, 0]))
         if f.name in ("amount", "amount_in_pricing_units") else usage.field(f.name) for f in usage.type],
        fields=list(usage.type))
    updates = {
        "usage_start_time": _utc_array(start), "usage_end_time": _utc_array(start + np.timedelta64(1, "h")),
        "cost": pa.array(split(table.column("cost").to_numpy())),
        "cost_at_list": pa.array(split(table.column("cost_at_list").to_numpy())),
        "credits": pa.ListArray.from_arrays(credits.offsets, flat), "usage": usage,
    }
    for name, column in updates.items():
        out = out.set_column(out.schema.get_field_index(name), name, column)
    return out


def _commitment_fees(resources, series, cost, days) -> list[dict]:
    """A commitment purchase bills its first COMMITMENT_FEE_DAYS upfront on its first day: the covered SKUs'
    mean daily cost over its first four weeks, at the commitment's price (1 - rate). One charge per project."""
    fees: dict[str, dict] = {}
    for s_idx, (r, sku) in enumerate(series):
        res = resources[r]
        if res.commitment and res.commitment[0] > 0 and sku.credit == "SUSTAINED_USAGE_DISCOUNT":
            lo, _, rate = res.commitment
            fee = fees.setdefault(res.project_id, dict(day=lo, project_id=res.project_id, service=res.service,
                                                       sku=COMMITMENT_FEE_SKU, amount_usd=0.0))
            fee["amount_usd"] += realism.COMMITMENT_FEE_DAYS * float(cost[s_idx, lo: lo + 28].mean()) * (1 - rate)
    return [{**f, "amount_usd": round(f["amount_usd"], 2)} for f in fees.values() if f["amount_usd"] >= 0.01]


def _support_fees(project_month_cost: pd.Series, days) -> list[dict]:
    """The support contract's monthly fee, billed on the 1st: the greater of SUPPORT_MIN_USD and SUPPORT_SHARE
    of the previous month's gross usage (the first month: its own)."""
    by_month = project_month_cost.groupby(level=1).sum().sort_index()
    firsts = [i for i, d in enumerate(days) if d.day == 1]
    fees = []
    for i in firsts:
        month = days[i].strftime("%Y%m")
        previous = (days[i] - pd.Timedelta(days=1)).strftime("%Y%m")
        usage = by_month.get(previous, by_month.get(month, 0.0))
        fees.append(dict(day=i, project_id=realism.SUPPORT_PROJECT, service="support",
                         sku=SERVICE_BY_KEY["support"].skus[0],
                         amount_usd=round(max(realism.SUPPORT_MIN_USD, realism.SUPPORT_SHARE * usage), 2)))
    return fees


def _charge_rows(charges: list[dict], resources, days, eur_per_usd=None) -> pa.Table:
    """One-off charges as regular line items of their project and service, without a resource."""
    project = {}
    for r in resources:
        project.setdefault(r.project_id, r)
    rows = []
    for c in charges:
        res, spec, start = project[c["project_id"]], SERVICE_BY_KEY[c["service"]], days[c["day"]]
        account, currency, conversion = BILLING_ACCOUNT_ID, "USD", 1.0
        if eur_per_usd is not None and realism.in_eur(res.country):
            account, currency = realism.EUR_BILLING_ACCOUNT_ID, "EUR"
            conversion = float(eur_per_usd[c["day"]])
        cost = round(c["amount_usd"] * conversion, 6)
        rows.append({
            "billing_account_id": account, "service": {"id": spec.id, "description": spec.description},
            "sku": {"id": c["sku"].id, "description": c["sku"].description},
            "usage_start_time": start.to_pydatetime(), "usage_end_time": (start + pd.Timedelta(days=1)).to_pydatetime(),
            "project": {"id": res.project_id, "number": res.project_number, "name": res.project_name,
                        "labels": [{"key": "env", "value": res.env}, {"key": "workload", "value": res.workload}],
                        "ancestry_numbers": f"/{res.project_number}/880011223344/"},
            "labels": [], "system_labels": [], "location": None, "resource": None,
            "export_time": (start + pd.Timedelta(hours=30)).to_pydatetime(),
            "cost": cost, "currency": currency, "currency_conversion_rate": conversion,
            "usage": {"amount": 1.0, "unit": c["sku"].unit, "amount_in_pricing_units": 1.0,
                      "pricing_unit": c["sku"].pricing_unit},
            "credits": [], "invoice": {"month": start.strftime("%Y%m")}, "cost_type": "regular",
            "adjustment_info": None, "cost_at_list": cost, "transaction_type": "GOOGLE", "seller_name": "Google",
        })
    return pa.Table.from_pylist(rows, schema=EXPORT_SCHEMA)


def _utc_array(values: np.ndarray) -> pa.Array:
    return pa.array(values.astype("datetime64[us]"), pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC"))


def _project_month_cost(items: pa.Table) -> pd.Series:
    """Gross cost in USD per (project, invoice month) of line items: what taxes are computed on."""
    df = pd.DataFrame({
        "project": items.column("project").combine_chunks().field("id").to_numpy(zero_copy_only=False),
        "month": items.column("invoice").combine_chunks().field("month").to_numpy(zero_copy_only=False),
        "cost": items.column("cost").to_numpy() / items.column("currency_conversion_rate").to_numpy(),
    })
    return df.groupby(["project", "month"]).cost.sum()


def _billing_rows(cfg, rng, resources, project_month_cost: pd.Series, days, eur_per_usd=None) -> pa.Table:
    """Taxes per project and month, a few adjustments and rounding errors, as the export has them (amounts in
    USD; with `eur_per_usd`, in EUR for a project of the EUR account, at the rate of the month's last day)."""
    df = project_month_cost.rename("cost").reset_index()
    project_country = {}
    for r in resources:
        # The project's own country (not the plant a corporate resource's label names), so tax is per project.
        project_country[r.project_id] = r.country
    rows = []
    month_end = {m: pd.Timestamp(datetime.strptime(m, "%Y%m"), tz="UTC") + pd.offsets.MonthEnd(0)
                 for m in df.month.unique()}

    def row(project, month, cost, cost_type, sku, adjustment=None):
        start = pd.Timestamp(datetime.strptime(month, "%Y%m"), tz="UTC")
        end = month_end[month] + pd.Timedelta(days=1)
        account, currency, conversion = BILLING_ACCOUNT_ID, "USD", 1.0
        if eur_per_usd is not None and project and realism.in_eur(project_country.get(project, "US")):
            last = min(len(days) - 1, int((month_end[month] - days[0]).days))
            account, currency, conversion = realism.EUR_BILLING_ACCOUNT_ID, "EUR", float(eur_per_usd[last])
            cost = cost * conversion
        return {
            "billing_account_id": account,
            "service": {"id": "0000-0000-0000", "description": "Invoice"},
            "sku": {"id": sku[0], "description": sku[1]},
            "usage_start_time": start.to_pydatetime(), "usage_end_time": end.to_pydatetime(),
            "project": {"id": project, "number": None, "name": None, "labels": [], "ancestry_numbers": None},
            "labels": [], "system_labels": [], "location": None, "resource": None,
            "export_time": (end + pd.Timedelta(hours=6)).to_pydatetime(),
            "cost": float(round(cost, 6)), "currency": currency, "currency_conversion_rate": conversion,
            "usage": None,
            "credits": [], "invoice": {"month": month}, "cost_type": cost_type, "adjustment_info": adjustment,
            "cost_at_list": None, "transaction_type": "GOOGLE", "seller_name": "Google",
        }

    for (project, month), cost in project_month_cost.items():
        tax = TAX_RATES.get(project_country.get(project, "US"))
        if tax:
            rows.append(row(project, month, cost * tax, "tax", ("TAX-LOCAL", "Local sales tax")))
    months = sorted(df.month.unique())
    for m in months:
        rows.append(row("", m, float(rng.uniform(-0.004, 0.004)), "rounding_error", ("ROUNDING", "Rounding error")))
    projects = sorted(df.project.unique())
    for k in range(3):
        m = months[int(rng.integers(1, len(months)))]
        p = projects[int(rng.integers(len(projects)))]
        rows.append(row(p, m, -float(round(rng.uniform(50, 500), 2)), "adjustment",
                        ("ADJUSTMENT", "Billing adjustment"),
                        {"id": f"adj-{k + 1:03d}", "description": "Service credit for an incident",
                         "mode": "MANUAL_ADJUSTMENT", "type": "GENERAL_ADJUSTMENT"}))
    return pa.Table.from_pylist(rows, schema=EXPORT_SCHEMA)


# Measured: daily line items of one resource over 15 months (SKUs, arrivals), in a plant's project and in a
# corporate one (more SKUs per resource); generated counts land within ~15% of n x these rates.
ROWS_PER_PLANT_RESOURCE = 475
ROWS_PER_CORPORATE_RESOURCE = 1020
ROWS_TOLERANCE = 0.2  # `resources_for_rows` refuses a target it cannot reach within this share


def resources_for_rows(cfg: GeneratorConfig, rows: int) -> int:
    """Resources per project that give about `rows` line items (within ROWS_TOLERANCE) for this config's plants and
    months; a target the organisation cannot come close to (2 to 2,000 resources per project) is refused."""
    field = GeneratorConfig.model_fields["resources_per_project"]
    low, high = (next(getattr(m, bound) for m in field.metadata if hasattr(m, bound)) for bound in ("ge", "le"))
    # line items of one more resource in every project
    per_resource = (3 * cfg.plants * ROWS_PER_PLANT_RESOURCE + len(CORPORATE) * ROWS_PER_CORPORATE_RESOURCE) * (
        cfg.months / 15)
    n = max(low, round(rows / per_resource))
    if n > high or abs(n * per_resource - rows) > ROWS_TOLERANCE * rows:
        raise FinopsError(f"--rows {rows} is out of reach: {cfg.plants} plant(s) over {cfg.months} months make about "
                          f"{round(low * per_resource):,} to {round(high * per_resource):,} line items ({low} to "
                          f"{high:,} resources per project); give --rows in that range, or change --plants or "
                          "generator.months.")
    return n


# Named organisation shapes: updates of the config's generator (the benchmark runs over several of them). The default
# config (configs/local.yaml) is the realistic world; `easy` turns every realism knob off.
# As messy as a real export (issue 13): usage noise by kind of resource (SKU noise on top stays small), normal events
# that look like anomalies, 3% of rows exported days late, 7% of carried labels wrong, 10% misspelt, 5% of owners gone,
# 15% of projects without any label; plants' public holidays, commitments that start and expire, one-off charges
# (support fees, commitment purchases), a second billing account in EUR, two new projects.
REALISTIC_KNOBS: dict = dict(usage_noise="by_kind", noise_sigma=0.03, normal_events=True, late_row_share=0.03,
                             label_error_share=0.07, label_variant_share=0.1, departed_owner_share=0.05,
                             unlabelled_project_share=0.15, plant_holidays=True, commitments=True,
                             one_off_charges=True, eur_billing_account=True, new_projects=2)
# Every realism knob off (GeneratorConfig's defaults): lognormal SKU noise of 0.06, no normal events, no late rows,
# clean labels. The easy world (the demo organisation before issue 13), for fast, deterministic tests.
EASY_KNOBS: dict = {knob: GeneratorConfig.model_fields[knob].default for knob in REALISTIC_KNOBS}
ORG_SHAPES: dict[str, dict] = {
    "realistic": REALISTIC_KNOBS,  # configs/local.yaml as it is: 5 plants x 3 projects + 3 corporate, 20 resources
    "easy": EASY_KNOBS,
    # the shapes below keep their own noise_sigma over the easy world's knobs
    "small_stable": {**EASY_KNOBS, **dict(plants=2, resources_per_project=12, migration_span=0.1,
                                          late_resource_share=0.05, noise_sigma=0.04)},
    "large_fast_migration": {**EASY_KNOBS, **dict(plants=8, resources_per_project=30, migration_span=0.3,
                                                  late_resource_share=0.5, noise_sigma=0.08)},
}


def shape_config(shape: str, base: GeneratorConfig | None = None) -> GeneratorConfig:
    """The generator config of a named organisation shape (ORG_SHAPES) applied over `base` (defaults if None)."""
    if shape not in ORG_SHAPES:
        raise FinopsError(f"Unknown organisation shape '{shape}'; use one of {', '.join(ORG_SHAPES)}.")
    return GeneratorConfig.model_validate({**(base or GeneratorConfig()).model_dump(), **ORG_SHAPES[shape]})


SERIES_PER_CHUNK = 4000  # line items are built and written this many series at a time (about 1M rows)


def generate(cfg: GeneratorConfig, seed: int, out_dir: str | Path, fmt: str = "jsonl") -> dict:
    """Generate the organisation's billing events and ground truth into `out_dir` (replaced only on success).

    Line items are built and written in chunks of series, so tens of millions of rows need bounded memory.
    """
    if fmt not in ("jsonl", "parquet"):
        raise FinopsError(f"Unknown output format '{fmt}'; use jsonl or parquet.")
    rng = np.random.default_rng(seed)
    real_rng = np.random.default_rng([seed, 13])  # the realism knobs' own draws: with them off, nothing changes

    def own_rng(k):  # the later realism knobs each draw from their own generator, apart from the others
        return np.random.default_rng([seed, 13, k])

    days = _days(cfg)
    resources = build_organisation(cfg, rng, len(days))
    extra_events = add_new_projects(cfg, own_rng(1), resources, days) if cfg.new_projects else []
    new_projects = {e["project_id"] for e in extra_events}
    if cfg.label_error_share or cfg.label_variant_share or cfg.departed_owner_share or cfg.unlabelled_project_share:
        realism.messy_labels(real_rng, resources, cfg, {p.code: p.aliases for p in PLANTS})
    holidays = None
    if cfg.plant_holidays:
        holidays = realism.holiday_masks(days, {r.country for r in resources if realism.is_plant_project(r)})
    series, cost = _series_costs(cfg, rng, resources, days, real_rng, holidays)
    normal = pd.DataFrame(columns=realism.NORMAL_EVENT_COLUMNS)
    if cfg.normal_events:
        cost, normal = realism.normal_events(real_rng, resources, series, cost, days, cfg.plants)
        extra_events += realism.migration_waves(resources, days, new_projects)
    if holidays is not None:
        extra_events += realism.holiday_events(resources, days, holidays)
    charges = []
    if cfg.commitments:
        extra_events += realism.commitments(own_rng(2), resources, days, new_projects)
        if cfg.one_off_charges:
            charges += _commitment_fees(resources, series, cost, days)
    eur_per_usd = realism.eur_per_usd(own_rng(3), len(days)) if cfg.eur_billing_account else None
    cost, new_skus, anomalies, anomaly_cells = _inject_anomalies(cfg, rng, resources, series, cost, days)

    def item_chunks():
        step = SERIES_PER_CHUNK if cfg.export_granularity == "daily" else SERIES_PER_CHUNK // 24
        for lo in range(0, len(series), step):
            yield _line_items(cfg, rng, resources, series[lo: lo + step], cost[lo: lo + step], days, real_rng,
                              eur_per_usd)
        if new_skus:
            yield _line_items(cfg, rng, resources, [(r, sku) for r, sku, _ in new_skus],
                              np.vstack([row for _, _, row in new_skus]), days, real_rng, eur_per_usd)

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        truth = tmp / "truth"
        truth.mkdir()
        events_path = tmp / f"events.{fmt}"
        rows, project_month, net_by_month = 0, [], []
        with _EventWriter(events_path, fmt) as writer:
            for items in item_chunks():
                writer.write(items.sort_by([("usage_start_time", "ascending")]))
                rows += items.num_rows
                project_month.append(_project_month_cost(items))
                net_by_month.append(_control_totals(items))
            if cfg.one_off_charges:
                charges += _support_fees(pd.concat(project_month).groupby(level=[0, 1]).sum(), days)
            if charges:
                items = _charge_rows(charges, resources, days, eur_per_usd)
                writer.write(items.sort_by([("usage_start_time", "ascending")]))
                rows += items.num_rows
                project_month.append(_project_month_cost(items))
                net_by_month.append(_control_totals(items))
            billing = _billing_rows(cfg, rng, resources, pd.concat(project_month).groupby(level=[0, 1]).sum(), days,
                                    eur_per_usd)
            writer.write(billing)
            rows += billing.num_rows
            net_by_month.append(_control_totals(billing))
        control = pd.concat(net_by_month).groupby("invoice_month").net_cost.sum().round(2).reset_index()
        control.to_csv(tmp / "control_totals.csv", index=False)
        anomalies.to_csv(truth / "anomalies.csv", index=False)
        anomaly_cells.to_csv(truth / "anomaly_cells.csv", index=False)
        extra_events += [dict(kind="one_off_charge", start=str(days[c["day"]].date()), end=str(days[c["day"]].date()),
                              service=c["service"], project_id=c["project_id"], resources="",
                              amount_usd=c["amount_usd"]) for c in charges]
        if extra_events:
            extra = pd.DataFrame(extra_events, columns=realism.NORMAL_EVENT_COLUMNS)
            normal = pd.concat([normal, extra], ignore_index=True) if len(normal) else extra
        normal.sort_values(["start", "kind", "project_id"], kind="stable").to_csv(truth / "normal_events.csv",
                                                                                  index=False)
        pd.DataFrame([dict(resource=r.name, project_id=r.project_id, label=k, carried=v, true=getattr(r, k))
                      for r in resources for k, v in r.carried.items()],
                     columns=["resource", "project_id", "label", "carried", "true"]).to_csv(
            truth / "carried_labels.csv", index=False)
        pd.DataFrame(
            [dict(resource=r.name, project_id=r.project_id, service=SERVICE_BY_KEY[r.service].description,
                  owner=r.owner, cost_center=r.cost_center, plant=r.plant, labelled=";".join(r.labelled))
             for r in resources]
        ).to_csv(truth / "resources.csv", index=False)
        meta = {"seed": seed, "rows": rows, "resources": len(resources), "series": len(series),
                "anomalies": len(anomalies), "days": len(days), "start": str(days[0].date()),
                "end": str(days[-1].date()), "events": events_path.name, "config": cfg.model_dump()}
        (tmp / "generation.json").write_text(json.dumps(meta, indent=2))
    return meta


class _EventWriter:
    """Appends export rows to a Parquet or JSONL file, batch by batch."""

    def __init__(self, path: Path, fmt: str):
        self.path, self.fmt = path, fmt
        self._parquet = pq.ParquetWriter(path, EXPORT_SCHEMA) if fmt == "parquet" else None
        self._jsonl = open(path, "w") if fmt == "jsonl" else None

    def write(self, table: pa.Table) -> None:
        if self._parquet is not None:
            self._parquet.write_table(table.cast(EXPORT_SCHEMA), row_group_size=256_000)
        else:
            _write_jsonl_rows(table, self._jsonl)

    def __enter__(self) -> "_EventWriter":
        return self

    def __exit__(self, *exc) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self._jsonl is not None:
            self._jsonl.close()


def _control_totals(table: pa.Table) -> pd.DataFrame:
    """Net cost in USD ((cost + credits) / currency_conversion_rate) per invoice month, as the invoice states it
    (in USD: an invoice in EUR converted at the export's rates), to the cent."""
    credits = table.column("credits").combine_chunks()
    credit_sum = np.zeros(table.num_rows)
    np.add.at(credit_sum, pc.list_parent_indices(credits).to_numpy(),
              pc.struct_field(pc.list_flatten(credits), "amount").to_numpy(zero_copy_only=False))
    month = table.column("invoice").combine_chunks().field("month").to_numpy(zero_copy_only=False)
    usd = (table.column("cost").to_numpy() + credit_sum) / table.column("currency_conversion_rate").to_numpy()
    totals = pd.Series(usd).groupby(month).sum()  # round once, at the end
    return totals.rename("net_cost").rename_axis("invoice_month").reset_index()


def _write_jsonl_rows(table: pa.Table, f) -> None:
    for batch in table.to_batches(max_chunksize=50_000):
        for row in batch.to_pylist():
            f.write(json.dumps(row, default=_iso, separators=(",", ":")))
            f.write("\n")


def _iso(value):
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    raise TypeError(type(value))


def generate_from_monthly(csv_path: str | Path, cfg: GeneratorConfig, seed: int, out_dir: str | Path,
                          fmt: str = "jsonl") -> dict:
    """Events whose net cost per (month, service) equals a historical monthly CSV to the cent.

    The CSV has columns month (YYYY-MM or YYYYMM), service (a service description) and cost. The synthetic
    organisation gives each service its daily shape; each month is then scaled to the CSV and rounded to
    cents, the last line item of a (month, service) absorbing the rounding remainder.
    """
    csv_path = Path(csv_path)
    if not csv_path.exists():
        raise FinopsError(f"Monthly cost file {csv_path} does not exist.")
    hist = pd.read_csv(csv_path, dtype={"month": str})
    missing = {"month", "service", "cost"} - set(hist.columns)
    if missing:
        raise FinopsError(f"{csv_path} lacks the column(s) {sorted(missing)}; it needs month, service, cost.")
    hist["invoice_month"] = hist.month.str.replace("-", "").str.slice(0, 6)
    known = {s.description: s for s in SERVICE_BY_KEY.values()}
    unknown = sorted(set(hist.service) - set(known))
    if unknown:
        raise FinopsError(f"{csv_path} names unknown services {unknown}; use one of {sorted(known)}.")
    months = sorted(hist.invoice_month.unique())
    first = datetime.strptime(months[0], "%Y%m")
    last = datetime.strptime(months[-1], "%Y%m")
    span = (last.year - first.year) * 12 + last.month - first.month + 1
    cfg = cfg.model_copy(update={"start": first.strftime("%Y-%m-01"), "months": max(span, 6), "anomaly_share": 0.0})
    rng = np.random.default_rng(seed)
    days = _days(cfg)
    resources = build_organisation(cfg, rng, len(days))
    for r in resources:  # history describes what was already running: every resource from the first day
        r.start, r.end = 0, len(days)
    series, cost = _series_costs(cfg, rng, resources, days)
    month_of_day = days.strftime("%Y%m").to_numpy()
    svc_of_series = np.array([SERVICE_BY_KEY[resources[r].service].description for r, _ in series])
    target = hist.groupby(["invoice_month", "service"]).cost.sum().round(2)
    for (month, service), amount in target.items():
        rows = np.nonzero(svc_of_series == service)[0]
        cols = np.nonzero(month_of_day == month)[0]
        if len(rows) == 0:
            raise FinopsError(f"{csv_path}: the synthetic organisation has no {service} resource to carry its cost.")
        block = cost[np.ix_(rows, cols)]
        block = np.round(block * (amount / block.sum()), 2)
        block[-1, -1] = round(block[-1, -1] + round(amount - block.sum(), 2), 2)
        cost[np.ix_(rows, cols)] = block
    # Only the (month, service) cells the CSV names carry cost: a service absent from a month costs nothing there.
    keep = np.zeros(cost.shape, dtype=bool)
    for month, service in target.index:
        keep[np.ix_(svc_of_series == service, month_of_day == month)] = True
    cost = np.where(keep, cost, 0.0)
    table = _line_items(cfg, rng, resources, series, cost, days)
    # History is net cost: no credits, so that cost + credits reconciles with the CSV as given.
    table = table.set_column(table.schema.get_field_index("credits"), "credits",
                             pa.array([[]] * table.num_rows, ARROW_SCHEMA.field("credits").type))
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        events_path = tmp / f"events.{fmt}"
        with _EventWriter(events_path, fmt) as writer:
            writer.write(table)
        target.groupby(level=0).sum().round(2).rename("net_cost").rename_axis("invoice_month").reset_index().to_csv(
            tmp / "control_totals.csv", index=False)
        meta = {"seed": seed, "rows": table.num_rows, "source": str(csv_path), "events": events_path.name}
        (tmp / "generation.json").write_text(json.dumps(meta, indent=2))
    return meta
