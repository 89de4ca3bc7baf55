"""Real-time cost anomaly detection: the batch detector's decisions, reached event by event.

`detect_anomaly_realtime(event, state)` takes one billing export row (a dict, as in events.jsonl or a Kafka message)
and the incremental state of a fitted `CostAnomalyDetector`. The state holds, per resource, what the batch detector's
causal filter holds after each day (its accepted and recent de-seasonalised costs, the length of its current run of
rejected days, its first day and first level, its run of days with cost and its last one, its fitted factors), and,
per open day, the running cost of each resource and cell.

- Each event adds its net cost to its resource and cell. The cell is judged at once against the expectation of the
  resources seen so far that day (an *open* alert, rises only: time to detection is the time of the event that
  pushed the cell over its threshold, its minimum % deviation and its minimum $ impact).
- A day closes when an event `lateness_days` + 1 days newer arrives (or at `flush`); every day in between closes,
  with or without events. Closing judges each cell of the day from the complete day (an always-on resource without
  cost that day counts at 0: a drop; a new resource is judged if it runs away), then applies the batch detector's
  update to every resource: these decisions are the batch detector's (tests compare them). A closed cell's score
  takes its previous closed days into account as the batch one does (`anomaly.persistent_z`); an open judgement
  sees today alone. A cell the day closes as
  anomalous that was not alerted yet is returned then (`status` "confirmed"); an open alert the complete day does
  not confirm is returned once more with `status` "retracted".
- Events of a closed day are late: counted, not judged.

Every anomaly has a direction (up, down), its $ impact and % deviation, and names its cause: the resource that moved
most in that direction against its own expectation, the SKU of that resource that moved most from its recent daily
cost, the resource's labels, and its share of the cell's excess.
"""

from __future__ import annotations

import calendar
import math
import pickle
from collections import deque
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd

from finops_ml.errors import FinopsError
from finops_ml.fileio import atomic_path
from finops_ml.models.anomaly import (
    CAUSE_LABELS,
    MIN_BASELINE_DAYS,
    SKU_EWMA_ALPHA,
    CostAnomalyDetector,
    _fill_factors,
    anomaly_id,
    cell_z,
    persistent_z,
    same_way,
)

STATE_VERSION = 5  # 3: days close on export time; closed days kept to be re-judged. 4: quarter-end factors.
# 5: each cell's excess and variance on its last closed days (the persistent score)
DEFAULT_LATENESS_DAYS = 2  # the export delivers a day's rows up to ~29 h after it ends
DEFAULT_REJUDGE_DAYS = 35


class InvalidEvent(FinopsError):
    """An event that is not a billing export row the detector can judge (the reason says what is wrong)."""


class _Resource:
    __slots__ = ("cell", "first_day", "last_day", "run", "level0", "flat0", "dow", "month_end", "quarter_end",
                 "sigma", "accepted", "recent", "rejected_since", "rejected_run", "base", "previous", "previous_base",
                 "reset_day", "sku_ewma", "labels")

    def __init__(self, cell, first_day, factors, baseline_days):
        self.cell = cell
        self.first_day = first_day
        self.last_day: int | None = None  # the last closed day it had cost
        self.run = 0  # consecutive closed days with cost, up to last_day
        self.level0 = math.nan  # its first level: the larger cost of its first two days, and de-seasonalised
        self.flat0 = math.nan
        self.dow, self.month_end, self.quarter_end, self.sigma = factors
        self.accepted: deque = deque(maxlen=baseline_days)
        self.recent: deque = deque(maxlen=baseline_days)
        self.rejected_since: int | None = None  # the first day of the current run of rejected days
        self.rejected_run = 0  # ... and how many rejected days it holds
        self.base: float | None = None  # median of `accepted` once it holds MIN_BASELINE_DAYS values
        self.previous: deque | None = None  # the accepted days before the last new normal, and their median
        self.previous_base = math.nan
        self.reset_day = -(10 ** 9)
        self.sku_ewma: dict[str, float] = {}
        self.labels: dict[str, str] = {}

    def copy(self) -> "_Resource":
        """Its filter state as it is now (what a re-judged day restores; the labels stay shared)."""
        c = _Resource.__new__(_Resource)
        for name in _Resource.__slots__:
            setattr(c, name, getattr(self, name))
        c.accepted = self.accepted.copy()
        c.recent = self.recent.copy()
        c.previous = None if self.previous is None else self.previous.copy()
        c.sku_ewma = dict(self.sku_ewma)
        return c

    def season(self, calendar_day: tuple[int, bool, bool]) -> float:
        weekday, month_end, quarter_end = calendar_day
        if quarter_end:
            return self.dow[weekday] * self.quarter_end
        return self.dow[weekday] * self.month_end if month_end else self.dow[weekday]

    def established(self, day: int, m: "RealtimeModel") -> bool:
        return self.base is not None and day - self.first_day >= m.warmup_days

    def missing(self, day: int, m: "RealtimeModel") -> bool:
        """Judged at a cost of 0 when it has none today: established, always-on, stopped less than stop_days ago."""
        return (self.last_day is not None and self.established(day, m) and self.run >= m.baseline_days
                and day - self.last_day - 1 < m.stop_days)

    def judge(self, day: int, calendar_day, cost: float | None, m: "RealtimeModel") -> tuple[bool, float, float]:
        """(judged, expected cost, variance) for `day` from the days closed so far, as the batch filter: an
        established resource at its baseline, a runaway new one at 0 (`cost`: the day's cost, None
        where it is absent, when only established resources are judged), else not judged (new spend)."""
        season = self.season(calendar_day)
        if self.established(day, m):
            expected = self.base * season
        elif cost is not None and day - self.first_day >= 2 and self.level0 > 0:
            steep = max(m.runaway_factor, (1.0 + m.runaway_rate) ** (day - self.first_day))
            flat = cost / season  # as the batch filter, which holds costs de-seasonalised
            if not (flat * season >= steep * self.level0 and flat >= steep * self.flat0):
                return False, 0.0, 0.0
            expected = 0.0  # a runaway resource was not expected at all: all its cost is the anomaly
        else:
            return False, 0.0, 0.0
        return True, expected, (self.sigma * (expected + m.eps)) ** 2

    def close(self, day: int, calendar_day, cost: float, present: bool, m: "RealtimeModel",
              skus: dict[str, float]) -> None:
        """The batch filter's update with the day's complete cost (see anomaly._causal_filter): `cost` is the
        day's cost, 0 for a resource judged missing (`present` False)."""
        established = self.established(day, m)
        flat = cost / self.season(calendar_day)
        band = m.reject_sigmas * self.sigma
        ok = not established or abs(math.log((max(flat, 0.0) + m.eps) / (max(self.base, 0.0) + m.eps))) <= band
        if (not ok and established and day - self.reset_day <= m.accept_after_days
                and abs(math.log((max(flat, 0.0) + m.eps) / (max(self.previous_base, 0.0) + m.eps))) <= band):
            self.accepted = self.previous  # back to the level before the new normal: the incident ended
            self.previous, self.previous_base = None, math.nan
            ok = True
        self.recent.append(flat)
        if ok:
            self.accepted.append(flat)
            self.rejected_since, self.rejected_run = None, 0
        else:
            if self.rejected_since is None:
                self.rejected_since = day
            self.rejected_run += 1
            if day - self.rejected_since + 1 >= m.accept_after_days:  # a lasting change is the new normal: its days
                self.previous, self.previous_base, self.reset_day = self.accepted, self.base, day
                since = list(self.recent)[-self.rejected_run:]
                self.accepted = deque(since, maxlen=self.accepted.maxlen)
                self.rejected_since, self.rejected_run = None, 0
        n = len(self.accepted)
        if n >= MIN_BASELINE_DAYS:
            srt = sorted(self.accepted)
            self.base = 0.5 * (srt[(n - 1) // 2] + srt[n // 2])
        else:  # a new normal seen on fewer days than a baseline needs: not judged until it has them
            self.base = None
        if not present:
            return
        age = day - self.first_day
        if age == 0:
            self.level0, self.flat0 = flat * self.season(calendar_day), flat
        elif age == 1:
            cost = flat * self.season(calendar_day)
            self.level0 = cost if math.isnan(self.level0) else max(self.level0, cost)
            self.flat0 = flat if math.isnan(self.flat0) else max(self.flat0, flat)
        self.run = self.run + 1 if self.last_day == day - 1 else 1
        self.last_day = day
        for sku in self.sku_ewma.keys() | skus.keys():
            self.sku_ewma[sku] = ((1 - SKU_EWMA_ALPHA) * self.sku_ewma.get(sku, 0.0)
                                  + SKU_EWMA_ALPHA * skus.get(sku, 0.0))


def _calendar_day(day: int) -> tuple[int, bool, bool]:
    """(weekday, whether it is one of the last two days of its month: anomaly._month_end, and of a quarter's last
    month: anomaly._quarter_end)."""
    d = date.fromordinal(day)
    month_end = d.day > calendar.monthrange(d.year, d.month)[1] - 2
    return d.weekday(), month_end, month_end and d.month % 3 == 0


class _Day:
    """Running costs of one open day: per resource (with the expectation it got at its first event) and per cell."""

    __slots__ = ("calendar", "resources", "cells")

    def __init__(self, day: int):
        self.calendar = _calendar_day(day)
        # resource key -> [cost, established, expected, variance, {sku: cost}]
        self.resources: dict[tuple, list] = {}
        # cell -> [expected of established, variance, cost of established, cost of new, [resource keys],
        #          {resource key: (expected, variance)} of established resources not seen yet today, their sums]
        self.cells: dict[tuple, list] = {}


class RealtimeModel:
    """What the real-time detector needs of a fitted batch detector, prepared once: its settings and thresholds, and
    each known resource's factors (an unknown resource takes its service's, as in batch). Shared, never changed, by
    every state built from it."""

    def __init__(self, detector: CostAnomalyDetector):
        if detector.factors_ is None:
            raise FinopsError("The real-time detector needs a fitted CostAnomalyDetector (call fit first).")
        if not math.isfinite(getattr(detector, "eps_", math.nan)) or not hasattr(detector, "min_impact_by_project"):
            raise FinopsError("This anomaly detector was trained by an older finops-ml; train it again "
                              "(finops-ml run) before streaming or serving it.")
        self.detector = detector
        self.thresholds = detector.thresholds()
        self.threshold = self.thresholds["up"]
        self.min_pct_deviation = detector.min_pct_deviation
        self.warmup_days = detector.warmup_days
        self.baseline_days = detector.baseline_days
        self.reject_sigmas = detector.reject_sigmas
        self.accept_after_days = detector.accept_after_days
        self.stop_days = detector.stop_days
        self.runaway_factor = detector.runaway_factor
        self.runaway_rate = detector.runaway_rate
        self.persist_days = detector.persist_days
        self.eps = detector.eps_
        self._min_impact: dict[tuple, float] = {}
        known = detector.factors_[["service", "project_id", "resource"]]
        filled = _fill_factors(detector.factors_, known)
        self._factors = {k: v for k, v in zip(map(tuple, known.to_numpy()), _factor_tuples(filled))}
        probes = pd.DataFrame({"service": [*known["service"].unique(), "\0unknown"], "project_id": "",
                               "resource": "\0unknown"})
        *by_service, self._neutral = _factor_tuples(_fill_factors(detector.factors_, probes))
        self._service_factors = dict(zip(probes["service"], by_service))

    def factors_of(self, key: tuple) -> tuple:
        f = self._factors.get(key)
        return f if f is not None else self._service_factors.get(key[0], self._neutral)

    def min_impact(self, cell: tuple) -> float:
        v = self._min_impact.get(cell)
        if v is None:
            v = self._min_impact[cell] = self.detector.min_impact_for(*cell)
        return v

    def decide(self, cell: tuple, expected_judged: float, variance: float, cost_judged: float, cost_new: float,
               n_judged: int, past: list | None = None) -> tuple[bool, str, float, float]:
        """(is anomaly, direction, score, deviation %) of a cell's day, as `CostAnomalyDetector.decide`; `past`:
        the cell's (excess, variance) on each of its persist_days - 1 previous days, None where it had none (not
        given: today alone, as an open day's first judgement)."""
        excess = cost_judged - expected_judged
        direction = "down" if excess < 0 else "up"
        z = min(max(float(cell_z(excess, expected_judged, variance, self.eps)), -1e6), 1e6)
        if past is not None and self.persist_days > 1:
            past_excess = past_var = 0.0
            for p in past:
                if p is not None:
                    past_excess += float(same_way(excess, p[0]))
                    past_var += p[1]
            z = min(max(float(persistent_z(z, excess, variance, past_excess, past_var, self.eps)), -1e6), 1e6)
        expected = expected_judged + cost_new
        deviation = 100.0 * excess / expected if expected > 0 else math.nan
        eligible = (n_judged > 0 and excess != 0 and abs(excess) >= self.min_impact(cell)
                    and (math.isnan(deviation) or abs(deviation) >= self.min_pct_deviation))
        return eligible and abs(z) >= self.thresholds[direction], direction, abs(z), deviation


class RealtimeState:
    """Incremental state of a fitted detector; save / load it to go on after a restart.

    `lateness_days`: how long after a usage day its rows may still be exported. The day closes once an event
    exported `lateness_days` after the day's end arrives (the export-time watermark; events without `export_time`
    count at their usage time). `rejudge_days`: how many closed days are kept to be re-judged when a late row of
    theirs arrives anyway (0: none; older late rows are counted in `too_late_events` and not judged)."""

    def __init__(self, model: RealtimeModel, lateness_days: int = DEFAULT_LATENESS_DAYS,
                 rejudge_days: int = DEFAULT_REJUDGE_DAYS):
        if lateness_days < 0:
            raise FinopsError(f"lateness_days must be 0 or more, not {lateness_days}.")
        if rejudge_days < 0:
            raise FinopsError(f"rejudge_days must be 0 or more, not {rejudge_days}.")
        self.version = STATE_VERSION
        self.lateness_days = lateness_days
        self.rejudge_days = rejudge_days
        self.model = model
        self.resources: dict[tuple, _Resource] = {}
        self.cell_members: dict[tuple, list] = {}
        self.days: dict[int, _Day] = {}
        self.alerted: dict[str, dict] = {}  # anomaly id -> the open alert raised (kept until its day closes)
        self.panel_start: int | None = None
        self.watermark: int | None = None  # the newest usage day seen
        self.closed_through: int | None = None
        # Closed days kept for re-judgement (the last `rejudge_days`): each day's costs (None: no event), each
        # resource's filter state before the day's update, and per cell what was published: [last status,
        # {status: times published}, last alert, whether it is an anomaly now].
        self.closed_days: dict[int, _Day | None] = {}
        self.history: dict[int, dict[tuple, _Resource]] = {}
        self.verdicts: dict[int, dict[tuple, list]] = {}
        # Each closed day's (excess, variance) per cell judged that day: the persistent score's previous days.
        self.cell_days: dict[int, dict[tuple, tuple[float, float]]] = {}
        self.late = ""  # the last event: "" in time, "rejudged" (its closed day re-judged) or "too_late"
        self.counters = {"events": 0, "skipped_events": 0, "late_events": 0, "too_late_events": 0,
                         "rejudged_days": 0, "anomalies": 0, "confirmed": 0, "retracted": 0, "revisions": 0,
                         "closed_days": 0}
        self._day_of: dict[str, int] = {}
        self._close_of: dict[str, int] = {}

    @classmethod
    def from_detector(cls, detector: CostAnomalyDetector, lateness_days: int = DEFAULT_LATENESS_DAYS,
                      rejudge_days: int = DEFAULT_REJUDGE_DAYS) -> "RealtimeState":
        return cls(RealtimeModel(detector), lateness_days, rejudge_days)

    # -- persistence -------------------------------------------------------------------------------------------
    def use_model(self, model: RealtimeModel) -> None:
        """Go on with another fitted detector (a new champion): its thresholds, minimum impacts and factors from now
        on; what the state learnt of each resource (baseline, open and closed days, alerts raised) is kept."""
        if model is self.model:
            return
        self.model = model
        for key, res in self.resources.items():
            res.dow, res.month_end, res.quarter_end, res.sigma = model.factors_of(key)

    def save(self, path: str | Path) -> None:
        """Write the whole state atomically (a crash leaves the previous snapshot in place)."""
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                pickle.dump(self, f, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def load(cls, path: str | Path) -> "RealtimeState":
        path = Path(path)
        try:
            with open(path, "rb") as f:
                state = pickle.load(f)
        except FileNotFoundError:
            raise FinopsError(f"Real-time state {path} does not exist; start from a registered detector "
                              "instead.") from None
        except Exception as exc:
            raise FinopsError(f"Real-time state {path} cannot be read ({exc.__class__.__name__}); "
                              "delete it to start from the registered detector.") from None
        version = getattr(state, "version", None)
        if not isinstance(state, cls) or version != STATE_VERSION:
            raise FinopsError(f"Real-time state {path} has format version {version}, and this finops-ml reads "
                              f"version {STATE_VERSION} only (cells now keep their last days' excess for the "
                              "persistent score, resources carry a quarter-end factor, days close on export time and "
                              "closed days are re-judged); move the state directory away to replay the topic from its "
                              "start.")
        return state

    def __getstate__(self):
        d = self.__dict__.copy()
        d["_day_of"] = {}
        d["_close_of"] = {}
        return d

    # -- events ------------------------------------------------------------------------------------------------
    def _parse_day(self, ts) -> int:
        """The UTC usage day of a usage_start_time."""
        return self._day_cached(self._day_of, ts, "usage_start_time", lambda dt: dt.toordinal())

    def _closes_through(self, ts) -> int:
        """The last usage day an event exported at `ts` closes: the day before (ts - lateness_days)."""
        return self._day_cached(self._close_of, ts, "export_time",
                                lambda dt: (dt - timedelta(days=self.lateness_days)).toordinal() - 1)

    @staticmethod
    def _day_cached(cache: dict, ts, field: str, day_of) -> int:
        """`day_of` the timestamp `ts` (ISO text or datetime; the export's days are UTC days, a naive timestamp is
        UTC), cached per text: an export repeats the same few timestamps on thousands of rows."""
        day = cache.get(ts) if isinstance(ts, str) else None
        if day is not None:
            return day
        try:
            if isinstance(ts, datetime):
                dt = ts
            elif isinstance(ts, str):
                dt = datetime.fromisoformat(ts.replace("Z", "+00:00") if ts.endswith("Z") else ts)
            else:
                raise ValueError
        except ValueError:
            raise InvalidEvent(f"{field} {ts!r} is not an ISO timestamp") from None
        if dt.tzinfo is not None:
            dt = dt.astimezone(timezone.utc)
        day = day_of(dt)
        if isinstance(ts, str):
            if len(cache) > 100_000:
                cache.clear()
            cache[ts] = day
        return day

    def _resource(self, key: tuple, cell: tuple, day: int) -> _Resource:
        """The state of a resource billed on `day`: known, or new from that day on (its factors from the model)."""
        res = self.resources.get(key)
        if res is None:
            res = self.resources[key] = _Resource(cell, day, self.model.factors_of(key), self.model.baseline_days)
            self.cell_members.setdefault(cell, []).append(key)
        elif day < res.first_day and res.last_day is None:
            res.first_day = day
        return res

    def event(self, event: dict) -> list[dict]:
        self.late = ""
        try:
            if event.get("cost_type", "regular") != "regular":  # taxes, adjustments: not usage, never judged
                self.counters["skipped_events"] += 1
                return []
            service = event["service"]["description"]
            project = event["project"]["id"]
            ts = event["usage_start_time"]
            cost = event["cost"]
            credits = event.get("credits") or ()
            rate = event.get("currency_conversion_rate", 1.0)
        except (KeyError, TypeError, AttributeError) as exc:
            raise InvalidEvent(f"missing field {exc}") from None
        if not isinstance(service, str) or not isinstance(project, str) or not service or not project:
            raise InvalidEvent("service.description and project.id must be non-empty strings")
        if type(cost) not in (float, int) or not math.isfinite(cost):
            raise InvalidEvent(f"cost {cost!r} is not a finite number")
        if type(rate) not in (float, int) or not rate > 0:
            raise InvalidEvent(f"currency_conversion_rate {rate!r} is not a positive number")
        try:
            net = (cost + sum(c["amount"] for c in credits)) / rate
        except (KeyError, TypeError):
            raise InvalidEvent("credits must be a list of {amount: number}") from None
        day = self._parse_day(ts)
        exported = event.get("export_time")
        closes = self._closes_through(exported) if exported else None
        resource_obj = event.get("resource") or {}
        resource = (resource_obj.get("name") if isinstance(resource_obj, dict) else None) or ""
        sku_obj = event.get("sku") or {}
        sku = (sku_obj.get("description") if isinstance(sku_obj, dict) else None) or ""
        return self.add_cost(day, service, project, resource, sku, net, event.get("labels"), closes)

    def add_cost(self, day: int, service: str, project: str, resource: str, sku: str, net: float,
                 labels: list | None = None, closes_through: int | None = None) -> list[dict]:
        """One line item's net cost (day: a date ordinal) into the state; the anomalies it raises or settles.

        `closes_through`: the last day its export time closes (None: `lateness_days` + 1 days before its own day).
        A row of a day already closed is late: the day is re-judged for its cell (within `rejudge_days`)."""
        self.counters["events"] += 1
        self.late = ""
        out: list[dict] = []
        if day > (self.watermark if self.watermark is not None else -(10 ** 9)):
            self.watermark = day
        if closes_through is None:
            closes_through = day - self.lateness_days - 1
        closes_through = min(closes_through, self.watermark)  # never a day newer than any usage seen
        if self.closed_through is None or closes_through > self.closed_through:
            out.extend(self.close_through(closes_through))
        if self.closed_through is not None and day <= self.closed_through:
            self.late = "rejudged"
            self.counters["late_events"] += 1
            out.extend(self._rejudge(day, service, project, resource, sku, net, labels))
            return out
        if self.panel_start is None or day < self.panel_start:
            self.panel_start = day

        m = self.model
        cell = (service, project)
        key = (service, project, resource)
        res = self._resource(key, cell, day)
        d = self.days.get(day)
        if d is None:
            d = self.days[day] = _Day(day)
        c = d.cells.get(cell)
        if c is None:
            c = d.cells[cell] = self._open_cell(cell, day, d)
        r = d.resources.get(key)
        if r is None:  # the resource's first event of the day: its expectation, its labels
            established, expected, var = res.judge(day, d.calendar, None, m)
            r = d.resources[key] = [0.0, established, expected, var, {}]
            c[4].append(key)
            if established:
                c[0] += expected
                c[1] += var
            pending = c[5].pop(key, None)
            if pending is not None:
                c[6] -= pending[0]
                c[7] -= pending[1]
            for item in labels or ():
                if isinstance(item, dict) and item.get("key") in CAUSE_LABELS:
                    res.labels[item["key"]] = item.get("value")
        r[0] += net
        skus = r[4]
        skus[sku] = skus.get(sku, 0.0) + net
        if r[1]:
            c[2] += net
        else:
            c[3] += net
            if day - res.first_day >= 2 and not res.established(day, m):  # a new resource: has it run away?
                judged, expected, var = res.judge(day, d.calendar, r[0], m)
                if judged:
                    r[1], r[2], r[3] = True, expected, var
                    c[0], c[1], c[2], c[3] = c[0] + expected, c[1] + var, c[2] + r[0], c[3] - r[0]

        # The open judgement of a rise, with the established resources not seen yet today taken at their
        # expectation: cheap tests first.
        excess = c[2] - c[0]
        if excess > 0 and excess >= m.min_impact(cell):
            expected_c = c[0] + c[3] + c[6]
            if expected_c <= 0 or 100.0 * excess / expected_c >= m.min_pct_deviation:
                aid = anomaly_id(date.fromordinal(day).isoformat(), service, project)
                if aid not in self.alerted:
                    found, direction, score, deviation = m.decide(cell, c[0] + c[6], c[1] + c[7], c[2] + c[6], c[3],
                                                                  1)
                    if found and direction == "up":
                        anomaly = self._anomaly(day, cell, c, score, deviation, "up", "open")
                        self.alerted[aid] = anomaly
                        self.counters["anomalies"] += 1
                        out.append(anomaly)
        return out

    def _open_cell(self, cell: tuple, day: int, d: _Day) -> list:
        """A cell's first event of the day: its established resources that had cost lately are expected today."""
        pending = {}
        for key in self.cell_members.get(cell, ()):
            res = self.resources[key]
            if res.last_day is not None and res.last_day >= day - 2:
                established, expected, var = res.judge(day, d.calendar, None, self.model)
                if established:
                    pending[key] = (expected, var)
        return [0.0, 0.0, 0.0, 0.0, [], pending, sum(p[0] for p in pending.values()),
                sum(p[1] for p in pending.values())]

    def _anomaly(self, day, cell, c, score, deviation, direction, status) -> dict:
        """The alert of a cell's day (`c`: its aggregates; judged resources' [cost, judged, expected, ...] by key in
        the day's resources, or in c[8] for a complete day)."""
        expected, actual = c[0] + c[3] + c[6], c[2] + c[3] + c[6]
        rows = c[8] if len(c) > 8 else self.days[day].resources
        best, best_move = None, -math.inf
        sign = 1.0 if direction == "up" else -1.0
        for key in c[4]:
            cost, judged, exp_r = rows[key][:3]
            if judged and sign * (cost - exp_r) > best_move:
                best, best_move = key, sign * (cost - exp_r)
        cause = {"service": cell[0], "project_id": cell[1], "resource": None, "sku": None, "share": None,
                 "labels": {}}
        total_excess = c[2] - c[0]
        if best is not None:
            res = self.resources[best]
            skus = rows[best][4]
            if direction == "up":
                sku = max(skus, key=lambda s: skus[s] - res.sku_ewma.get(s, 0.0)) if skus else None
            else:
                moves = {s: skus.get(s, 0.0) - res.sku_ewma.get(s, 0.0) for s in skus.keys() | res.sku_ewma.keys()}
                sku = min(moves, key=moves.get) if moves else None
            cause.update(resource=best[2] or None, sku=sku or None, labels=dict(res.labels),
                         share=round(sign * best_move / total_excess, 4) if total_excess != 0 else None)
        day_iso = date.fromordinal(day).isoformat()
        return {"anomaly_id": anomaly_id(day_iso, *cell), "day": day_iso, "service": cell[0], "project_id": cell[1],
                "direction": direction, "actual": actual, "expected": expected, "impact": actual - expected,
                "pct_deviation": deviation if math.isfinite(deviation) else None, "score": score,
                "threshold": self.model.thresholds[direction], "cause": cause, "status": status,
                "detected_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}

    # -- closing days --------------------------------------------------------------------------------------------
    def close_through(self, last_day: int) -> list[dict]:
        """Close every day up to `last_day` (with or without events), oldest first; return what they decide anew."""
        out: list[dict] = []
        if self.panel_start is None or last_day < self.panel_start:
            return out
        first = self.panel_start if self.closed_through is None else self.closed_through + 1
        for day in range(first, last_day + 1):
            if day in self.days or self.resources:
                out.extend(self._close(day))
        if self.closed_through is None or last_day > self.closed_through:
            self.closed_through = last_day
        keep_from = self.closed_through - self.rejudge_days + 1
        for kept in (self.closed_days, self.history, self.verdicts):
            for old in [d for d in kept if d < keep_from]:
                del kept[old]
        for old in [d for d in self.cell_days if d <= keep_from - self.model.persist_days]:
            del self.cell_days[old]  # a re-judged day needs its cell's previous days
        return out

    def flush(self) -> list[dict]:
        """End of the stream: close every open day."""
        return self.close_through(self.watermark) if self.watermark is not None else []

    def _complete(self, day: int, d: "_Day | None", cells=None) -> dict[tuple, list]:
        """Each cell's complete day (`d`: its costs; `cells`: only these): every resource with cost judged with the
        expectation it has now, i.e. before the day's own update (a new one judged if it runs away), and every
        always-on resource without cost judged missing at 0, as the batch filter. Per cell: [expected of judged,
        variance, cost of judged, cost of new, [resource keys], {}, 0, 0, {key: [cost, judged, expected, variance,
        skus]}, judged count]."""
        present = d.resources if d is not None else {}
        calendar_day = d.calendar if d is not None else _calendar_day(day)
        finals: dict[tuple, list] = {}
        m = self.model
        for cell in (self.cell_members if cells is None else cells):
            f = None
            for key in self.cell_members.get(cell, ()):
                r = present.get(key)
                res = self.resources[key]
                if r is None:
                    if not res.missing(day, m):
                        continue
                    _, expected, var = res.judge(day, calendar_day, None, m)
                    row = [0.0, True, expected, var, {}]
                else:
                    judged, expected, var = res.judge(day, calendar_day, r[0], m)
                    row = [r[0], judged, expected, var, r[4]]
                if f is None:
                    f = finals[cell] = [0.0, 0.0, 0.0, 0.0, [], {}, 0.0, 0.0, {}, 0]
                f[4].append(key)
                f[8][key] = row
                if row[1]:
                    f[0] += row[2]
                    f[1] += row[3]
                    f[2] += row[0]
                    f[9] += 1
                else:
                    f[3] += row[0]
        return finals

    def judgement(self, day: int, service: str, project: str) -> dict | None:
        """What closing `day` would decide for the cell, score and cause included (None: nothing judged that day)."""
        cell = (service, project)
        f = self._complete(day, self.days.get(day), (cell,)).get(cell)
        if f is None:
            return None
        found, direction, score, deviation = self.model.decide(cell, f[0], f[1], f[2], f[3], f[9],
                                                               self._past(day, cell))
        verdict = self._anomaly(day, cell, f, score, deviation, direction, "judged")
        return {**verdict, "is_anomaly": found, "new_cost": f[3]}

    def _past(self, day: int, cell: tuple) -> list:
        """The cell's (excess, variance) on its persist_days - 1 closed days before `day` (None: not judged)."""
        return [self.cell_days.get(day - j, {}).get(cell) for j in range(1, self.model.persist_days)]

    def _settle(self, day: int, cell: tuple, found: dict | None, was: dict | None) -> list[dict]:
        """Publish what a (re-)judged cell's day decides against what was published of it: `confirmed` when it is an
        anomaly not confirmed yet, `retracted` when an open or confirmed alert no longer stands. A status is
        published once per anomaly; only a verdict that a later re-judgement flips back publishes it again, with
        `revision` 2, 3, ... (its own alert key), so that the last message of an anomaly id always says what
        stands."""
        rec = self.verdicts.get(day, {}).get(cell)
        if rec is None:
            rec = ["open", {"open": 1}, was, False] if was is not None else [None, {}, None, False]
        last, statuses = rec[0], rec[1]
        rec[3] = found is not None  # the verdict
        status = ("confirmed" if found is not None and last != "confirmed"
                  else "retracted" if found is None and last in ("open", "confirmed") else None)
        if status is None:
            return []
        if last is None:
            self.counters["anomalies"] += 1
        self.counters[status] += 1
        n = statuses[status] = statuses.get(status, 0) + 1
        if status == "confirmed":
            alert = dict(found)
            rec[2] = found
        else:
            alert = {**rec[2], "status": "retracted",
                     "detected_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
        if n > 1:
            alert["revision"] = n
            self.counters["revisions"] += 1
        rec[0] = status
        if self.rejudge_days:
            self.verdicts.setdefault(day, {})[cell] = rec
        return [alert]

    def _close(self, day: int) -> list[dict]:
        d = self.days.pop(day, None)
        out = self._close_cells(day, d, None)
        if self.rejudge_days:
            self.closed_days[day] = d
        self.counters["closed_days"] += 1
        return out

    def _close_cells(self, day: int, d: "_Day | None", cells) -> list[dict]:
        """Judge the cells (None: all) of a complete day, publish what changed, then apply the day's update to their
        resources (keeping each one's state before it, to re-judge the day)."""
        out = []
        m = self.model
        finals = self._complete(day, d, cells)
        day_iso = date.fromordinal(day).isoformat()
        judged = self.cell_days.setdefault(day, {})
        for cell, f in finals.items():
            is_anomaly, direction, score, deviation = m.decide(cell, f[0], f[1], f[2], f[3], f[9],
                                                               self._past(day, cell))
            judged[cell] = (f[2] - f[0], f[1])
            found = self._anomaly(day, cell, f, score, deviation, direction, "confirmed") if is_anomaly else None
            was = self.alerted.pop(anomaly_id(day_iso, *cell), None)
            out.extend(self._settle(day, cell, found, was))
        calendar_day = d.calendar if d is not None else _calendar_day(day)
        history = self.history.setdefault(day, {}) if self.rejudge_days else None
        for f in finals.values():
            for key, row in f[8].items():
                present = d is not None and key in d.resources
                res = self.resources[key]
                if history is not None:
                    history[key] = res.copy()
                res.close(day, calendar_day, row[0], present, m, row[4])
        return out

    def _rejudge(self, day: int, service: str, project: str, resource: str, sku: str, net: float,
                 labels) -> list[dict]:
        """A late row: add it to its closed day, put its cell's resources back as they were before that day, and
        close the cell's days again up to the last closed one; return what changed (confirmed / retracted)."""
        if day not in self.closed_days and not (self.panel_start is not None and day < self.panel_start
                                                and self.closed_through - day < self.rejudge_days):
            self.counters["too_late_events"] += 1
            self.late = "too_late"
            return []
        cell = (service, project)
        key = (service, project, resource)
        # the cell's resources as they were before `day`: their first kept state from `day` on
        for k in self.cell_members.get(cell, ()):
            for dd in range(day, self.closed_through + 1):
                snap = self.history.get(dd, {}).get(k)
                if snap is not None:
                    current = self.resources[k]
                    snap = snap.copy()
                    snap.labels = current.labels
                    self.resources[k] = snap
                    break
        res = self._resource(key, cell, day)
        for item in labels or ():
            if isinstance(item, dict) and item.get("key") in CAUSE_LABELS:
                res.labels[item["key"]] = item.get("value")
        if day < self.panel_start:  # before the first day seen: the days between count as closed, without events
            for dd in range(day, self.panel_start):
                self.closed_days.setdefault(dd, None)
            self.panel_start = day
        d = self.closed_days.get(day)
        if d is None:
            d = self.closed_days[day] = _Day(day)
        r = d.resources.get(key)
        if r is None:
            r = d.resources[key] = [0.0, False, 0.0, 0.0, {}]
        r[0] += net
        r[4][sku] = r[4].get(sku, 0.0) + net
        for dd in range(day, self.closed_through + 1):  # re-closing writes them again, for the days it closes them
            kept = self.history.get(dd)
            for k in self.cell_members[cell] if kept else ():
                kept.pop(k, None)
        out = []
        for dd in range(day, self.closed_through + 1):
            out.extend(self._close_cells(dd, self.closed_days.get(dd), (cell,)))
        self.counters["rejudged_days"] += self.closed_through - day + 1
        return out


def _factor_tuples(filled) -> list[tuple]:
    dows = filled[[f"dow{w}" for w in range(7)]].to_numpy().tolist()
    return [(tuple(dw), float(me), float(qe), float(sg)) for dw, me, qe, sg in
            zip(dows, filled["month_end"].to_numpy(), filled["quarter_end"].to_numpy(), filled["sigma"].to_numpy())]


def detect_anomaly_realtime(event: dict, state: RealtimeState) -> list[dict]:
    """Score one billing event; return the anomalies it raises or settles (usually none). See the module doc."""
    return state.event(event)
