"""What makes the synthetic organisation as messy as a real billing export (issue 13), each part behind a knob of
`GeneratorConfig` that is off by default:

- usage noise by kind of resource (`usage_noise: by_kind`): heavy-tailed (Student t, 3 degrees of freedom) and
  autocorrelated (AR(1)) day-to-day variation, from log-sigma ~0.05 for storage to 0.35+ for batch and autoscaled work;
- normal events that look like anomalies and are not (`normal_events`): quarter-end batch jobs, load tests,
  rightsizing steps, a price list change on a date, a decommissioned plant; written to truth/normal_events.csv;
- late rows (`late_row_share`): rows exported days after their usage, as a billing export delivers corrections;
- labels as messy as real ones: spelling variants of carried values (`label_variant_share`), carried labels that are
  wrong (`label_error_share`), owners who left the company (`departed_owner_share`), whole projects without labels
  (`unlabelled_project_share`).

Every part draws from its own generator (`rng`, seeded from the run's seed), so an organisation with every knob off is
drawn exactly as before, draw for draw.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Day-to-day log standard deviation of a resource's usage, per service: storage grows smoothly, databases and
# networks wobble, batch analytics, serverless and autoscaled clusters swing (seen in real exports: 0.03-0.6).
NOISE_BY_SERVICE = {"storage": 0.05, "sql": 0.08, "networking": 0.15, "compute": 0.12, "pubsub": 0.15,
                    "logging": 0.2, "gke": 0.25, "dataflow": 0.25, "run": 0.35, "vertex": 0.35, "bigquery": 0.4}
NOISE_AR = 0.5  # yesterday's deviation carries over by half: busy days come in runs
NOISE_DF = 3  # Student t degrees of freedom: a few days far out in the tail, as real usage has
# Services whose resources run quarter-end batch work (reports, closing), and those a load test drives.
QUARTER_END_SERVICES = ("bigquery", "dataflow")
LOAD_TEST_SERVICES = ("compute", "gke", "run")
NORMAL_EVENT_COLUMNS = ["kind", "start", "end", "service", "project_id", "resources", "factor"]


def usage_noise(rng: np.random.Generator, service: str, n_days: int) -> np.ndarray:
    """A resource's multiplicative daily noise (mean about 1) with its service's log-sigma, times a per-resource
    spread of 0.7-1.3."""
    sigma = NOISE_BY_SERVICE.get(service, 0.15) * rng.uniform(0.7, 1.3)
    shocks = rng.standard_t(NOISE_DF, n_days) / np.sqrt(NOISE_DF / (NOISE_DF - 2))  # unit variance
    x = np.empty(n_days)
    prev = 0.0
    scale = sigma * np.sqrt(1.0 - NOISE_AR ** 2)
    for t in range(n_days):
        prev = NOISE_AR * prev + scale * shocks[t]
        x[t] = prev
    return np.exp(np.clip(x, -4 * sigma - 1.0, 4 * sigma + 1.0) - sigma ** 2 / 2)


def normal_events(rng: np.random.Generator, resources: list, series: list, cost: np.ndarray,
                  days: pd.DatetimeIndex, plants: int) -> tuple[np.ndarray, pd.DataFrame]:
    """Planned, normal changes applied to the (series x day) cost matrix: returns the new matrix and one row per
    event (kind, start, end, service, project_id, resources, factor). None of them is an anomaly in the truth."""
    cost = cost.copy()
    n_days = len(days)
    by_resource: dict[int, list[int]] = {}
    for s, (r, _) in enumerate(series):
        by_resource.setdefault(r, []).append(s)
    events = []

    def apply(kind, rows: list[int], lo: int, hi: int, factor, res_names) -> None:
        cost[np.ix_(rows, np.arange(lo, hi))] *= factor
        touched = [resources[series[i][0]] for i in rows]
        events.append(dict(kind=kind, start=str(days[lo].date()), end=str(days[hi - 1].date()),
                           service=";".join(sorted({r.service for r in touched})), project_id=touched[0].project_id,
                           resources=";".join(sorted(set(res_names))), factor=round(float(np.mean(factor)), 3)))

    # A plant decommissioned (its work moved to another plant): every resource of its projects stops on one day
    # (first, so that the other events fall on resources still running).
    if plants >= 3:
        plant = sorted({r.plant for r in resources if not r.project_id.startswith("acme-corp")})[-1]
        day = int(rng.integers(int(0.5 * n_days), int(0.7 * n_days)))  # planned, and before the last months
        for pid in sorted({r.project_id for r in resources if r.plant == plant
                           and not r.project_id.startswith("acme-corp")}):
            members = [i for i, r in enumerate(resources) if r.project_id == pid and i in by_resource]
            for svc in sorted({resources[i].service for i in members}):
                rows = [i for i in members if resources[i].service == svc]
                apply("decommission", [s for i in rows for s in by_resource[i]], day, n_days, 0.0,
                      [resources[i].name for i in rows])
                for i in rows:
                    resources[i].end = min(resources[i].end, day)
    # Quarter-end batch jobs: the last two days of each quarter, every quarter, on the analytics resources.
    quarter_ends = [i for i in range(n_days) if days[i].month in (3, 6, 9, 12) and days[i].day == days[i].days_in_month]
    for r, res in enumerate(resources):
        if res.service in QUARTER_END_SERVICES and res.workload in ("historian", "data-platform") and r in by_resource:
            factor = rng.uniform(1.8, 3.0)
            for end in quarter_ends:
                if res.start <= end - 1 and end < res.end:
                    apply("quarter_end", by_resource[r], end - 1, end + 1, factor, [res.name])
    # Load tests: about two a year per production project, one to two days, 2-4x on its compute.
    projects = sorted({r.project_id for r in resources if r.env == "prod"})
    for pid in projects:
        members = [i for i, r in enumerate(resources) if r.project_id == pid and r.service in LOAD_TEST_SERVICES
                   and i in by_resource]
        for _ in range(rng.poisson(2.0 * n_days / 365)):
            if not members:
                break
            day = int(rng.integers(30, n_days - 3))
            chosen = [i for i in members if resources[i].start + 30 <= day < resources[i].end]
            if chosen:
                length = int(rng.integers(1, 3))
                apply("load_test", [s for i in chosen for s in by_resource[i]], day, day + length,
                      rng.uniform(2.0, 4.0), [resources[i].name for i in chosen])
    # Rightsizing: 8% of resources step down to 40-70% of their size for good, after two months of running.
    for r, res in enumerate(resources):
        if r in by_resource and rng.random() < 0.08 and res.start + 60 < min(res.end, n_days) - 14:
            day = int(rng.integers(res.start + 60, min(res.end, n_days) - 14))
            apply("rightsizing", by_resource[r], day, n_days, rng.uniform(0.4, 0.7), [res.name])
    # A price list change: one service's list price drops 10-20% on a date, for every resource of it.
    service = ("networking", "storage", "compute")[int(rng.integers(3))]
    day = int(rng.integers(n_days // 3, 2 * n_days // 3))
    factor = rng.uniform(0.8, 0.9)
    for pid in sorted({r.project_id for r in resources if r.service == service}):
        members = [i for i, r in enumerate(resources) if r.project_id == pid and r.service == service
                   and i in by_resource]
        if members:
            apply("price_change", [s for i in members for s in by_resource[i]], day, n_days, factor,
                  [resources[i].name for i in members])
    return cost, pd.DataFrame(events, columns=NORMAL_EVENT_COLUMNS)


def _variant(rng: np.random.Generator, key: str, value: str, aliases: dict[str, tuple[str, ...]]) -> str:
    """How a person might have spelt a label value (GCP label values are lowercase): a plant by one of its aliases
    or with its country, a cost center without its dash, an owner's address with dots or the domain cut."""
    if key == "plant":
        options = sorted({a.lower() for a in aliases.get(value, ())} - {value}) + [f"{value}-plant"]
        return options[int(rng.integers(len(options)))]
    if key == "cost_center":
        return value.replace("-", "" if rng.random() < 0.5 else "_")
    return value.split("_at_")[0]  # owner without the domain


def messy_labels(rng: np.random.Generator, resources: list, cfg, aliases: dict[str, tuple[str, ...]]) -> None:
    """Carried label values that differ from the truth (`res.carried`), and whole projects without labels."""
    keys = ("owner", "cost_center", "plant")
    projects = sorted({r.project_id for r in resources})
    bare = set(rng.choice(projects, size=int(round(cfg.unlabelled_project_share * len(projects))), replace=False)) \
        if cfg.unlabelled_project_share > 0 else set()
    values = {k: sorted({getattr(r, k) for r in resources}) for k in keys}
    departed = [f"former{i}_at_acme-industrial_com" for i in range(1, 6)]
    for res in resources:
        if res.project_id in bare:
            res.labelled = ()
            continue
        carried = {}
        for key in res.labelled:
            true = getattr(res, key)
            u = rng.random()
            gone = cfg.departed_owner_share if key == "owner" else 0.0  # only owners leave the company
            if u < gone:
                carried[key] = departed[int(rng.integers(len(departed)))]
            elif u < gone + cfg.label_error_share:
                others = [v for v in values[key] if v != true]
                if others:
                    carried[key] = others[int(rng.integers(len(others)))]
            elif u < gone + cfg.label_error_share + cfg.label_variant_share:
                carried[key] = _variant(rng, key, true, aliases)
        res.carried = carried


def late_export_days(rng: np.random.Generator, n: int, share: float) -> np.ndarray:
    """Days added to each row's export time: most rows arrive within hours, `share` of them 1-5 days late."""
    late = rng.random(n) < share
    return np.where(late, rng.integers(1, 6, n), 0)
