"""What makes the synthetic organisation as messy as a real billing export (issue 13), each part behind a knob of
`GeneratorConfig` that is off by default:

- usage noise by kind of resource (`usage_noise: by_kind`): heavy-tailed (Student t, 3 degrees of freedom) and
  autocorrelated (AR(1)) day-to-day variation, from log-sigma ~0.05 for storage to 0.35+ for batch and autoscaled work;
- normal events that look like anomalies and are not (`normal_events`): quarter-end batch jobs, load tests,
  rightsizing steps, a price list change on a date, a decommissioned plant; written to truth/normal_events.csv;
- late rows (`late_row_share`): rows exported days after their usage, as a billing export delivers corrections;
- labels as messy as real ones: spelling variants of carried values (`label_variant_share`), carried labels that are
  wrong (`label_error_share`), owners who left the company (`departed_owner_share`), whole projects without labels
  (`unlabelled_project_share`);
- public holidays by plant country (`plant_holidays`): a plant's projects bill their weekend level on a weekday
  holiday; labelled normal (kind `holiday`, one row per project and day) since a detector without the calendar sees
  a weekday drop;
- committed use discounts that start and expire (`commitments`, kinds `commitment_start` / `commitment_end`);
- one-off charges (`one_off_charges`, kind `one_off_charge` with its `amount_usd`): the support fee on the 1st, a
  commitment's upfront fee on its first day;
- a second billing account in EUR (`eur_billing_account`) for the projects outside the Americas, at a daily rate;
- new projects ramping up (`new_projects`, kind `ramp_up`; built by generator.add_new_projects) and, with
  `normal_events`, the plants' migration waves the generator already makes (kind `migration_wave`).

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
# truth/normal_events.csv: service holds ';'-joined service keys (org.SERVICE_BY_KEY), resources ';'-joined names
# (empty for a charge without a resource); factor multiplies the cost the event touches (empty for a migration wave
# or ramp-up, which start from nothing); amount_usd is a one-off charge's amount.
NORMAL_EVENT_COLUMNS = ["kind", "start", "end", "service", "project_id", "resources", "factor", "amount_usd"]


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


# --- Public holidays by plant country (`plant_holidays`) ----------------------------------------------------------
# A small fixed calendar per country: fixed dates, days counted from Easter Sunday, nth weekdays of a month, and for
# India the two lunar festivals of 2024-2030 (other years keep only the fixed dates). Plants close or run a skeleton
# shift on these days, so their projects' usage dips as on a weekend. Weekends already dip: a holiday on a Saturday
# changes nothing. Regional holidays are those of the plant's region (Stuttgart: Baden-Wuerttemberg).
_FIXED = {
    "FR": ["01-01", "05-01", "05-08", "07-14", "08-15", "11-01", "11-11", "12-25"],
    "DE": ["01-01", "01-06", "05-01", "10-03", "11-01", "12-25", "12-26"],
    "MX": ["01-01", "05-01", "09-16", "12-25"],
    "IN": ["01-26", "08-15", "10-02"],
    "US": ["01-01", "07-04", "12-25"],
    "PL": ["01-01", "01-06", "05-01", "05-03", "08-15", "11-01", "11-11", "12-25", "12-26"],
    "BR": ["01-01", "04-21", "05-01", "09-07", "10-12", "11-02", "11-15", "11-20", "12-25"],
    "JP": ["01-01", "01-02", "01-03", "02-11", "02-23", "03-20", "04-29", "05-03", "05-04", "05-05", "08-11",
           "08-13", "08-14", "08-15", "09-23", "11-03", "11-23"],  # with the Obon plant shutdown (Aug 13-15)
    "SK": ["01-01", "01-06", "05-01", "05-08", "07-05", "08-29", "09-01", "09-15", "11-01", "11-17", "12-24",
           "12-25", "12-26"],
    "CZ": ["01-01", "05-01", "05-08", "07-05", "07-06", "09-28", "10-28", "11-17", "12-24", "12-25", "12-26"],
}
_FROM_EASTER = {"FR": [1, 39, 50], "DE": [-2, 1, 39, 50, 60], "MX": [-3, -2], "PL": [1, 60], "BR": [-48, -47, -2, 60],
                "SK": [-2, 1], "CZ": [-2, 1]}
# (month, weekday Mon=0, n): the n-th such weekday of the month; n = -1 the last one.
_NTH_WEEKDAY = {"MX": [(2, 0, 1), (3, 0, 3), (11, 0, 3)],
                "US": [(1, 0, 3), (5, 0, -1), (9, 0, 1), (11, 3, 4)],
                "JP": [(1, 0, 2), (7, 0, 3), (9, 0, 3), (10, 0, 2)]}
_LUNAR = {"IN": ["2024-03-25", "2024-11-01", "2025-03-14", "2025-10-20", "2026-03-04", "2026-11-08", "2027-03-22",
                 "2027-10-29", "2028-03-11", "2028-10-17", "2029-03-01", "2029-11-05", "2030-03-20",
                 "2030-10-26"]}  # Holi and Diwali


def _easter(year: int) -> pd.Timestamp:
    """Easter Sunday (Gregorian; the anonymous algorithm)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = b // 4, b % 4
    g = (8 * b + 13) // 25
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    l_ = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * l_) // 451
    month = (h + l_ - 7 * m + 114) // 31
    return pd.Timestamp(year, month, (h + l_ - 7 * m + 114) % 31 + 1)


def public_holidays(country: str, years) -> set[pd.Timestamp]:
    """The country's public holidays in `years` (naive dates); an unknown country has none."""
    out = set()
    for year in years:
        out |= {pd.Timestamp(f"{year}-{md}") for md in _FIXED.get(country, [])}
        out |= {_easter(year) + pd.Timedelta(days=k) for k in _FROM_EASTER.get(country, [])}
        for month, weekday, n in _NTH_WEEKDAY.get(country, []):
            month_days = pd.date_range(pd.Timestamp(year, month, 1), periods=pd.Timestamp(year, month, 1).days_in_month)
            out.add(month_days[month_days.dayofweek == weekday][n - 1 if n > 0 else n])
    out |= {pd.Timestamp(d) for d in _LUNAR.get(country, []) if pd.Timestamp(d).year in set(years)}
    return out


def holiday_masks(days: pd.DatetimeIndex, countries) -> dict[str, np.ndarray]:
    """Per country, which of `days` are public holidays on a weekday (weekends dip anyway)."""
    naive = days.tz_localize(None)
    years = sorted(set(naive.year))
    return {c: np.asarray(naive.isin(sorted(public_holidays(c, years))) & (naive.dayofweek < 5)) for c in countries}


def is_plant_project(res) -> bool:
    return not res.project_id.startswith("acme-corp")


def holiday_events(resources: list, days: pd.DatetimeIndex, masks: dict[str, np.ndarray]) -> list[dict]:
    """One normal event per plant project and weekday holiday it was running on (kind `holiday`): the project's
    resources billed at their weekend level that day (factor: their mean weekend factor)."""
    events = []
    by_project: dict[str, list] = {}
    for res in resources:
        if is_plant_project(res):
            by_project.setdefault(res.project_id, []).append(res)
    for pid, members in sorted(by_project.items()):
        for d in np.flatnonzero(masks[members[0].country]):
            on = [r for r in members if r.start <= d < r.end]
            if on:
                events.append(dict(kind="holiday", start=str(days[d].date()), end=str(days[d].date()),
                                   service=";".join(sorted({r.service for r in on})), project_id=pid,
                                   resources=";".join(sorted(r.name for r in on)),
                                   factor=round(float(np.mean([r.weekend for r in on])), 3)))
    return events


# --- Committed use discounts that start and stop (`commitments`) ---------------------------------------------------
# N2 resource-based commitments: 37% off vCPU and memory for one year (GCP list). A commitment covers its project's
# Compute Engine core and RAM usage (the SKUs that otherwise earn a sustained use discount, which it replaces).
CUD_RATE_1Y = 0.37
COMMITMENT_SERVICE = "compute"


def commitments(rng: np.random.Generator, resources: list, days: pd.DatetimeIndex,
                skip: set[str] = frozenset()) -> list[dict]:
    """Projects whose compute gets a one-year commitment during the history (kind `commitment_start`: credits
    appear, net cost drops) and projects whose commitment, bought before the history or when the project moved to
    GCP, expires (kind `commitment_end`: net cost rises back); projects in `skip` (new ones) get none. Sets
    `res.commitment = (first day, end day, rate)` on the covered resources; returns the events (factor: the covered
    SKUs' net cost under the commitment / at list price; at an expiry its inverse)."""
    n_days = len(days)
    first = {}
    for r in resources:  # erp runs under a commitment all along; a commitment needs months of running compute
        if (r.service == COMMITMENT_SERVICE and r.env == "prod" and r.workload != "erp" and r.end >= n_days
                and r.project_id not in skip):
            first[r.project_id] = min(first.get(r.project_id, n_days), r.start)
    projects = sorted(p for p, start in first.items() if start < 0.6 * n_days)
    if len(projects) < 2:
        return []
    events = []

    def event(kind, pid, day, members):
        events.append(dict(kind=kind, start=str(days[day].date()), end=str(days[n_days - 1].date()),
                           service=COMMITMENT_SERVICE, project_id=pid,
                           resources=";".join(sorted(r.name for r in members)),
                           factor=round(1 - CUD_RATE_1Y if kind == "commitment_start" else 1 / (1 - CUD_RATE_1Y), 3)))

    for k, pid in enumerate(rng.choice(projects, size=2 * max(1, len(projects) // 6), replace=False)):
        members = [r for r in resources if r.project_id == pid and r.service == COMMITMENT_SERVICE]
        lo = max(first[pid] + 60, int(0.3 * n_days))
        day = min(int(rng.integers(lo, max(lo + 1, int(0.8 * n_days)))), n_days - 30)
        if k % 2 == 0:  # bought during the history; a year later it expires (when the history is that long)
            window = (day, min(n_days, day + 365))
            event("commitment_start", pid, day, members)
            if window[1] < n_days:
                event("commitment_end", pid, window[1], members)
        else:
            window = (0, day)
            event("commitment_end", pid, day, members)
        for r in members:
            r.commitment = (*window, CUD_RATE_1Y)
    return events


# --- One-off charges (`one_off_charges`) ---------------------------------------------------------------------------
SUPPORT_PROJECT = "acme-corp-it-shared"  # holds the billing account's support contract
SUPPORT_MIN_USD, SUPPORT_SHARE = 500.0, 0.03  # Enhanced Support: the greater of $500 and 3% of last month's spend
COMMITMENT_FEE_DAYS = 30  # a commitment purchase bills its first month upfront, on its first day


# --- A second billing account in EUR (`eur_billing_account`) -------------------------------------------------------
# The European entity (HQ in Belgium) pays for every project outside the Americas in EUR; the Americas' plants stay
# on the USD account. The export's rows of the EUR account carry cost, credits and taxes in EUR and the day's
# currency_conversion_rate (EUR per USD): cost / currency_conversion_rate is the cost in USD.
USD_COUNTRIES = ("US", "MX", "BR")
EUR_BILLING_ACCOUNT_ID = "01E7B2-A93C40-5D1F86"
EUR_PER_USD = 0.92  # where the rate starts; it moves ~0.3% a day and is pulled back towards it


def eur_per_usd(rng: np.random.Generator, n_days: int) -> np.ndarray:
    """A daily EUR-per-USD rate: a mean-reverting random walk in logs (daily sigma 0.3%), rounded as exports do."""
    x = np.empty(n_days)
    prev = 0.0
    for t, shock in enumerate(rng.normal(0.0, 0.003, n_days)):
        prev = 0.98 * prev + shock
        x[t] = prev
    return np.round(EUR_PER_USD * np.exp(x), 6)


def in_eur(country: str) -> bool:
    return country not in USD_COUNTRIES


# --- Migration waves and new projects' ramp-up, labelled normal ---------------------------------------------------
RAMP_DAYS = 21  # a resource reaches its full usage three weeks after it starts (generator._series_costs)
WAVE_DAYS = 90  # a plant's resources move over within three months of its wave (generator.build_organisation)


def migration_waves(resources: list, days: pd.DatetimeIndex, skip: set[str]) -> list[dict]:
    """One normal event per plant project (kind `migration_wave`): from its first resource's arrival until the last
    one that moved with the wave has ramped up; projects in `skip` (new ones, labelled `ramp_up`) are left out."""
    n_days = len(days)
    by_project: dict[str, list] = {}
    for res in resources:
        if is_plant_project(res) and res.project_id not in skip:
            by_project.setdefault(res.project_id, []).append(res)
    events = []
    for pid, members in sorted(by_project.items()):
        wave = min(r.start for r in members)
        moved = [r for r in members if r.start < wave + WAVE_DAYS]
        end = min(n_days - 1, max(r.start for r in moved) + RAMP_DAYS)
        events.append(dict(kind="migration_wave", start=str(days[wave].date()), end=str(days[end].date()),
                           service=";".join(sorted({r.service for r in moved})), project_id=pid,
                           resources=";".join(sorted(r.name for r in moved))))
    return events


# --- Hourly line items (`export_granularity: hourly`) ---------------------------------------------------------------
# How a day's usage spreads over its hours, by service, in the plant's local time: production work runs around the
# clock with a day-shift bump, serving and ML endpoints follow office hours, BigQuery's batch runs at night, storage is
# billed evenly by the byte-second.
UTC_OFFSET = {"europe-west9": 1, "europe-west3": 1, "europe-west1": 1, "europe-west4": 1, "europe-central2": 1,
              "us-south1": -6, "us-east5": -5, "asia-south1": 5, "asia-northeast1": 9, "southamerica-east1": -3}
_LOCAL_HOUR = np.arange(24)
_DAY_SHIFT = (_LOCAL_HOUR >= 8) & (_LOCAL_HOUR < 18)
HOURLY_PROFILE = {
    "around_the_clock": 1.0 + 0.15 * _DAY_SHIFT,
    "office": 0.3 + 1.0 * _DAY_SHIFT,
    "night_batch": 1.0 + 2.0 * ((_LOCAL_HOUR >= 1) & (_LOCAL_HOUR < 5)),
    "even": np.ones(24),
}
PROFILE_OF_SERVICE = {"run": "office", "vertex": "office", "bigquery": "night_batch", "storage": "even"}


def hourly_weights(service: str, region: str) -> np.ndarray:
    """24 weights over UTC hours summing to 1: the service's profile in the region's local time."""
    profile = HOURLY_PROFILE[PROFILE_OF_SERVICE.get(service, "around_the_clock")]
    weights = np.roll(profile, -UTC_OFFSET.get(region, 0))  # UTC hour h is local hour h + offset
    return weights / weights.sum()
