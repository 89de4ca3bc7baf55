"""Real-time cost anomaly detection: the batch detector's decisions, reached event by event.

`detect_anomaly_realtime(event, state)` takes one billing export row (a dict, as in events.jsonl or a Kafka message)
and the incremental state of a fitted `CostAnomalyDetector`. The state holds, per resource, what the batch detector's
causal filter holds after each day (its accepted and recent de-seasonalised costs, the length of its current run of
rejected days, its first day, its fitted factors), and, per open day, the running cost of each resource and cell.

- Each event adds its net cost to its resource and cell. The cell is judged at once against the expectation of the
  resources seen so far that day (an *open* alert: time to detection is the time of the event that pushed the cell
  over the threshold). The forest is consulted only when the cell's log ratio alone could reach the threshold (its
  score is the forest's score, below 1, times the log ratio), so almost every event costs a few dict updates.
- A day closes when an event `lateness_days` + 1 days newer arrives (or at `flush`). Closing applies the batch
  detector's update to every resource present that day and decides each cell of the day from the complete day:
  these decisions are the batch detector's (tests compare them). A cell the day closes as anomalous that was not
  alerted yet is returned then (`status` "confirmed"); an open alert the complete day does not confirm is returned
  once more with `status` "retracted".
- Events of a closed day are late: counted, not judged.

Every anomaly names its cause: the resource whose cost rose most above its own expectation, the SKU of that
resource that rose most above its recent daily cost, the resource's labels, and its share of the cell's excess.
"""

from __future__ import annotations

import calendar
import math
import pickle
from collections import deque
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
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
)
from finops_ml.models.trees import ForestScorer

STATE_VERSION = 1


class InvalidEvent(FinopsError):
    """An event that is not a billing export row the detector can judge (the reason says what is wrong)."""


class _Resource:
    __slots__ = ("cell", "first_day", "last_day", "dow", "month_end", "sigma", "accepted", "recent", "rejected_run",
                 "base", "sku_ewma", "labels")

    def __init__(self, cell, first_day, factors, baseline_days):
        self.cell = cell
        self.first_day = first_day
        self.last_day = first_day  # the last day it had cost (updated when a day closes)
        self.dow, self.month_end, self.sigma = factors
        self.accepted: deque = deque(maxlen=baseline_days)
        self.recent: deque = deque(maxlen=baseline_days)
        self.rejected_run = 0
        self.base: float | None = None  # median of `accepted` once it holds MIN_BASELINE_DAYS values
        self.sku_ewma: dict[str, float] = {}
        self.labels: dict[str, str] = {}

    def season(self, calendar_day: tuple[int, bool]) -> float:
        weekday, month_end = calendar_day
        return self.dow[weekday] * self.month_end if month_end else self.dow[weekday]

    def expectation(self, day: int, calendar_day, warmup_days: int) -> tuple[bool, float, float]:
        """(established, expected cost, variance) for `day` from the days closed so far, as the batch filter."""
        if self.base is None or day - self.first_day < warmup_days:
            return False, 0.0, 0.0
        expected = self.base * self.season(calendar_day)
        return True, expected, (self.sigma * (expected + 1.0)) ** 2

    def close(self, day: int, calendar_day, cost: float, established: bool, reject_sigmas: float,
              accept_after_days: int, skus: dict[str, float]) -> None:
        """The batch filter's update with the day's complete cost (see anomaly._robust_baseline)."""
        self.last_day = max(self.last_day, day)
        flat = cost / self.season(calendar_day)
        ok = not established or (abs(math.log((max(flat, 0.0) + 1.0) / (max(self.base, 0.0) + 1.0)))
                                 <= reject_sigmas * self.sigma)
        self.recent.append(flat)
        if ok:
            self.accepted.append(flat)
            self.rejected_run = 0
        else:
            self.rejected_run += 1
            if self.rejected_run >= accept_after_days:  # a lasting change is the new normal
                self.accepted = deque(self.recent, maxlen=self.accepted.maxlen)
                self.rejected_run = 0
        n = len(self.accepted)
        if n >= MIN_BASELINE_DAYS:
            srt = sorted(self.accepted)
            self.base = 0.5 * (srt[(n - 1) // 2] + srt[n // 2])
        for sku in self.sku_ewma.keys() | skus.keys():
            self.sku_ewma[sku] = ((1 - SKU_EWMA_ALPHA) * self.sku_ewma.get(sku, 0.0)
                                  + SKU_EWMA_ALPHA * skus.get(sku, 0.0))


def _calendar_day(day: int) -> tuple[int, bool]:
    """(weekday, whether it is one of the last two days of its month: anomaly._month_end)."""
    d = date.fromordinal(day)
    return d.weekday(), d.day > calendar.monthrange(d.year, d.month)[1] - 2


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
    """What the real-time detector needs of a fitted batch detector, prepared once: its settings and threshold,
    the forest as flat arrays, and each known resource's factors (an unknown resource takes its service's, as in
    batch). Shared, never changed, by every state built from it."""

    def __init__(self, detector: CostAnomalyDetector):
        if detector.factors_ is None or detector.forest_ is None:
            raise FinopsError("The real-time detector needs a fitted CostAnomalyDetector (call fit first).")
        self.threshold = float(detector.threshold_)
        self.warmup_days = detector.warmup_days
        self.baseline_days = detector.baseline_days
        self.reject_sigmas = detector.reject_sigmas
        self.accept_after_days = detector.accept_after_days
        self.forest = ForestScorer(detector.forest_)
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


class RealtimeState:
    """Incremental state of a fitted detector; save / load it to go on after a restart."""

    def __init__(self, model: RealtimeModel, lateness_days: int = 1):
        if lateness_days < 0:
            raise FinopsError(f"lateness_days must be 0 or more, not {lateness_days}.")
        self.version = STATE_VERSION
        self.lateness_days = lateness_days
        self.model = model
        self.resources: dict[tuple, _Resource] = {}
        self.cell_members: dict[tuple, list] = {}
        self.days: dict[int, _Day] = {}
        self.cell_log_ratios: dict[tuple, dict[int, float]] = {}  # the last closed days' log ratio per cell
        self.alerted: dict[str, dict] = {}  # anomaly id -> the anomaly raised (kept until its day closes)
        self.panel_start: int | None = None
        self.watermark: int | None = None
        self.closed_through: int | None = None
        self.counters = {"events": 0, "skipped_events": 0, "late_events": 0, "anomalies": 0, "retracted": 0,
                         "closed_days": 0}
        self._day_of: dict[str, int] = {}

    @classmethod
    def from_detector(cls, detector: CostAnomalyDetector, lateness_days: int = 1) -> "RealtimeState":
        return cls(RealtimeModel(detector), lateness_days)

    # -- persistence -------------------------------------------------------------------------------------------
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
        if not isinstance(state, cls) or getattr(state, "version", None) != STATE_VERSION:
            raise FinopsError(f"Real-time state {path} was written by another version; delete it to start afresh.")
        return state

    def __getstate__(self):
        d = self.__dict__.copy()
        d["_day_of"] = {}
        return d

    # -- events ------------------------------------------------------------------------------------------------
    def _parse_day(self, ts) -> int:
        day = self._day_of.get(ts) if isinstance(ts, str) else None
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
            raise InvalidEvent(f"usage_start_time {ts!r} is not an ISO timestamp") from None
        if dt.tzinfo is not None:
            dt = dt.astimezone(timezone.utc)  # the export's day is the UTC day; a naive timestamp is UTC
        day = dt.toordinal()
        if isinstance(ts, str):
            if len(self._day_of) > 100_000:
                self._day_of.clear()
            self._day_of[ts] = day
        return day

    def event(self, event: dict) -> list[dict]:
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
        resource_obj = event.get("resource") or {}
        resource = (resource_obj.get("name") if isinstance(resource_obj, dict) else None) or ""
        sku_obj = event.get("sku") or {}
        sku = (sku_obj.get("description") if isinstance(sku_obj, dict) else None) or ""
        return self.add_cost(day, service, project, resource, sku, net, event.get("labels"))

    def add_cost(self, day: int, service: str, project: str, resource: str, sku: str, net: float,
                 labels: list | None = None) -> list[dict]:
        """One line item's net cost (day: a date ordinal) into the state; the anomalies it raises or settles."""
        self.counters["events"] += 1
        if self.closed_through is not None and day <= self.closed_through:
            self.counters["late_events"] += 1
            return []
        out: list[dict] = []
        if self.watermark is None or day > self.watermark:
            self.watermark = day
            out.extend(self.close_through(day - self.lateness_days - 1))
        if self.panel_start is None or day < self.panel_start:
            self.panel_start = day

        cell = (service, project)
        key = (service, project, resource)
        res = self.resources.get(key)
        if res is None:
            res = self.resources[key] = _Resource(cell, day, self.model.factors_of(key), self.model.baseline_days)
            self.cell_members.setdefault(cell, []).append(key)
        elif day < res.first_day:
            res.first_day = day
        d = self.days.get(day)
        if d is None:
            d = self.days[day] = _Day(day)
        c = d.cells.get(cell)
        if c is None:
            c = d.cells[cell] = self._open_cell(cell, day, d)
        r = d.resources.get(key)
        if r is None:  # the resource's first event of the day: its expectation, its labels
            established, expected, var = res.expectation(day, d.calendar, self.model.warmup_days)
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

        # The open judgement, with the established resources not seen yet today taken at their expectation:
        # cheap tests first, the forest only when the cell could reach the threshold.
        if c[2] > 0:
            expected_c, actual_c = c[0] + c[3] + c[6], c[2] + c[3] + c[6]
            if actual_c > expected_c:
                lr = math.log((max(actual_c, 0.0) + 1.0) / (max(expected_c, 0.0) + 1.0))
                if lr >= self.model.threshold or self.model.threshold <= 0:
                    aid = anomaly_id(date.fromordinal(day).isoformat(), service, project)
                    if aid not in self.alerted:
                        score = self._score(day, cell, c, lr)
                        found = self._anomaly(day, cell, c, score, "open") if score >= self.model.threshold else None
                        if found is not None:
                            self.alerted[aid] = found
                            self.counters["anomalies"] += 1
                            out.append(found)
        return out

    def _open_cell(self, cell: tuple, day: int, d: _Day) -> list:
        """A cell's first event of the day: its established resources that had cost lately are expected today."""
        pending = {}
        for key in self.cell_members.get(cell, ()):
            res = self.resources[key]
            if res.last_day >= day - 2:
                established, expected, var = res.expectation(day, d.calendar, self.model.warmup_days)
                if established:
                    pending[key] = (expected, var)
        return [0.0, 0.0, 0.0, 0.0, [], pending, sum(p[0] for p in pending.values()),
                sum(p[1] for p in pending.values())]

    def _score(self, day: int, cell: tuple, c: list, lr: float) -> float:
        """The batch detector's score of a cell's (running or complete) day: forest score x log ratio of a rise."""
        if not (lr > 0 and c[2] > 0):
            return 0.0
        excess = c[2] - c[0]
        z = min(max(excess / math.sqrt(c[1] + c[7] + 1.0), -50.0), 50.0)
        past = self.cell_log_ratios.get(cell, {})
        terms = [lr] + [past.get(day - k, 0.0) for k in (1, 2) if day - k >= self.panel_start]
        lr3 = sum(terms) / len(terms)
        return float(self.model.forest.raw(np.array([[z, lr, lr3]]))[0]) * lr

    def _anomaly(self, day, cell, c, score, status) -> dict:
        expected, actual = c[0] + c[3] + c[6], c[2] + c[3] + c[6]
        d = self.days[day]
        best, best_excess = None, -math.inf
        for key in c[4]:
            cost, established, exp_r, _, _ = d.resources[key]
            if established and cost - exp_r > best_excess:
                best, best_excess = key, cost - exp_r
        cause = {"service": cell[0], "project_id": cell[1], "resource": None, "sku": None, "share": None,
                 "labels": {}}
        if best is not None:
            res = self.resources[best]
            skus = d.resources[best][4]
            sku = max(skus, key=lambda s: skus[s] - res.sku_ewma.get(s, 0.0)) if skus else None
            total_excess = c[2] - c[0]
            cause.update(resource=best[2] or None, sku=sku or None, labels=dict(res.labels),
                         share=round(best_excess / total_excess, 4) if total_excess > 0 else None)
        day_iso = date.fromordinal(day).isoformat()
        return {"anomaly_id": anomaly_id(day_iso, *cell), "day": day_iso, "service": cell[0], "project_id": cell[1],
                "actual": actual, "expected": expected, "impact": actual - expected, "score": score,
                "threshold": self.model.threshold, "cause": cause, "status": status,
                "detected_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}

    # -- closing days --------------------------------------------------------------------------------------------
    def close_through(self, last_day: int) -> list[dict]:
        """Close every open day up to `last_day`, oldest first; return what their complete days decide anew."""
        out: list[dict] = []
        for day in sorted(d for d in self.days if d <= last_day):
            out.extend(self._close(day))
        if self.closed_through is None or last_day > self.closed_through:
            if self.panel_start is not None and last_day >= self.panel_start:
                self.closed_through = last_day
        return out

    def flush(self) -> list[dict]:
        """End of the stream: close every open day."""
        return self.close_through(self.watermark) if self.watermark is not None else []

    def _complete(self, day: int, cell: tuple) -> list:
        """A cell's complete day: every resource present judged with the expectation it has now, i.e. before the
        day's own update, as the batch filter (the aggregates of `_Day.cells`, nothing pending)."""
        d = self.days[day]
        final = [0.0, 0.0, 0.0, 0.0, d.cells[cell][4], {}, 0.0, 0.0]
        for key in final[4]:
            r = d.resources[key]
            established, expected, var = self.resources[key].expectation(day, d.calendar, self.model.warmup_days)
            r[1], r[2], r[3] = established, expected, var
            if established:
                final[0] += expected
                final[1] += var
                final[2] += r[0]
            else:
                final[3] += r[0]
        return final

    def judgement(self, day: int, service: str, project: str) -> dict | None:
        """What closing `day` would decide for the cell, score and cause included (None: no cost that day)."""
        if day not in self.days or (service, project) not in self.days[day].cells:
            return None
        cell = (service, project)
        f = self._complete(day, cell)
        lr = math.log((max(f[2] + f[3], 0.0) + 1.0) / (max(f[0] + f[3], 0.0) + 1.0))
        score = self._score(day, cell, f, lr)
        verdict = self._anomaly(day, cell, f, score, "judged")
        return {**verdict, "is_anomaly": score >= self.model.threshold, "new_cost": f[3]}

    def _close(self, day: int) -> list[dict]:
        d = self.days[day]
        out = []
        finals = {cell: self._complete(day, cell) for cell in d.cells}
        for cell, f in finals.items():
            lr = math.log((max(f[2] + f[3], 0.0) + 1.0) / (max(f[0] + f[3], 0.0) + 1.0))
            aid = anomaly_id(date.fromordinal(day).isoformat(), *cell)
            found = None
            if lr >= self.model.threshold or self.model.threshold <= 0:  # else the score cannot reach it
                score = self._score(day, cell, f, lr)
                if score >= self.model.threshold:
                    found = self._anomaly(day, cell, f, score, "confirmed")
            was = self.alerted.pop(aid, None)
            if found is not None and was is None:
                self.counters["anomalies"] += 1
                out.append(found)
            elif found is None and was is not None:
                self.counters["retracted"] += 1
                out.append({**was, "status": "retracted",
                            "detected_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")})
            history = self.cell_log_ratios.setdefault(cell, {})
            history[day] = lr
            for old in [k for k in history if k < day - 1]:
                del history[old]
        for key, r in d.resources.items():
            self.resources[key].close(day, d.calendar, r[0], r[1], self.model.reject_sigmas,
                                      self.model.accept_after_days, r[4])
        del self.days[day]
        self.counters["closed_days"] += 1
        return out


def _factor_tuples(filled) -> list[tuple]:
    dows = filled[[f"dow{w}" for w in range(7)]].to_numpy().tolist()
    return [(tuple(dw), float(me), float(sg)) for dw, me, sg in
            zip(dows, filled["month_end"].to_numpy(), filled["sigma"].to_numpy())]


def detect_anomaly_realtime(event: dict, state: RealtimeState) -> list[dict]:
    """Score one billing event; return the anomalies it raises or settles (usually none). See the module doc."""
    return state.event(event)
