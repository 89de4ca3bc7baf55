"""Predictors: load one model directory, answer validated instances (forecast, anomaly, labeler)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from pydantic import BaseModel, TypeAdapter, ValidationError

from finops_ml.errors import FinopsError
from finops_ml.fileio import read_json
from finops_ml.models import anomaly as anomaly_lib
from finops_ml.models import forecast as forecast_lib
from finops_ml.models import labeler as labeler_lib
from finops_ml.models.catalogue import MODELS
from finops_ml.models.realtime import RealtimeModel, RealtimeState
from finops_ml.models.trees import ForestRegressor
from finops_ml.platform.registry import LocalRegistry
from finops_ml.serving.online_store import OnlineStore, series_history, window_ending
from finops_ml.serving.schemas import (
    MAX_INSTANCES,
    AnomalyInstance,
    ForecastInstance,
    LabelerInstance,
    LabelerParameters,
    NoParameters,
    RequestError,
)


def _num(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


# ---- predictors -----------------------------------------------------------------------------------------------------

class Predictor:
    """Loads one model directory; `predict` takes validated instances and parameters, returns JSON-able dicts."""

    kind: str
    instance_model: type[BaseModel]
    parameters_model: type[BaseModel] = NoParameters
    # The online feature store an instance without a history reads it from (forecast, anomaly); None: off.
    store: OnlineStore | None = None

    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        path = self.model_dir / "model.joblib"
        if not path.exists():
            raise FinopsError(f"No model.joblib in {self.model_dir}; point the server at a registry version "
                              "directory (REGISTRY/<model>/v<N>).")
        self.model = joblib.load(path)
        entry = self.model_dir / "entry.json"
        self.entry = read_json(entry) if entry.exists() else {}
        self._instances = TypeAdapter(list[self.instance_model])

    def describe(self) -> dict:
        return {"model": self.kind, "name": self.entry.get("name", MODELS[self.kind].name),
                "version": self.entry.get("version"), "dir": str(self.model_dir)}

    def validate(self, instances: Any, parameters: Any) -> tuple[list, BaseModel]:
        _check_count(len(instances), MAX_INSTANCES[self.kind], "instances")
        if self.store is not None:
            instances = self.fill_from_store(instances)
        try:
            items = self._instances.validate_python(instances)
        except ValidationError as exc:
            raise RequestError(self._wrong_service(exc, instances) or _describe_error(exc, "instances")) from None
        if self.kind == "forecast":  # a forecast from a history runs the model: heavier than a stored lookup
            _check_count(sum(i.history is not None for i in items), MAX_INSTANCES["forecast_history"],
                         "instances with a history")
        try:
            params = self.parameters_model.model_validate(parameters or {})
        except ValidationError as exc:
            raise RequestError(_describe_error(exc, "parameters")) from None
        return items, params

    def predict(self, instances: list, parameters: BaseModel) -> list[dict]:
        raise NotImplementedError

    def fill_from_store(self, instances: list) -> list:
        """The instances, those without a history given theirs from the online store (before validation: a filled
        instance is then validated and predicted as one that carried it)."""
        return instances

    def _store_series(self, instances: list, has_history) -> dict[int, dict | None]:
        """Index -> the stored history of each instance that lacks one (None: not in the store)."""
        wanted = [i for i, x in enumerate(instances) if isinstance(x, dict) and not has_history(x)
                  and isinstance(x.get("service"), str) and isinstance(x.get("project_id"), str)]
        _check_count(len(wanted), MAX_INSTANCES["forecast_history"], "instances to read from the feature store")
        return {i: series_history(self.store, instances[i]["service"], instances[i]["project_id"]) for i in wanted}

    def _wrong_service(self, exc: ValidationError, instances: list) -> str | None:
        """A sentence when the failing instance is a valid instance of another model (sent to the wrong service)."""
        index = exc.errors()[0]["loc"][0] if exc.errors()[0]["loc"] else 0
        if not isinstance(index, int) or index >= len(instances):
            return None
        for kind, predictor in PREDICTORS.items():
            if kind == self.kind:
                continue
            try:
                predictor.instance_model.model_validate(instances[index])
            except ValidationError:
                continue
            return (f"instances[{index}] is an instance of the {kind} model, but this server serves the {self.kind} "
                    f"model ({MODELS[self.kind].name}); send it to the {kind} service.")
        return None


def _check_count(n: int, limit: int, what: str) -> None:
    if n > limit:
        raise RequestError(f"the request has {n:,} {what}, over this server's limit of {limit:,}; split it into "
                           "smaller requests.", 413)


def _describe_error(exc: ValidationError, root: str) -> str:
    err = exc.errors()[0]
    path = root
    for part in err["loc"]:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    msg = err["msg"].removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more errors)" if exc.error_count() > 1 else ""
    return f"{path}: {msg}{more}."


class ForecastPredictor(Predictor):
    kind = "forecast"
    instance_model = ForecastInstance

    def __init__(self, model_dir: str | Path):
        super().__init__(model_dir)
        if isinstance(self.model, forecast_lib.CostForecaster):
            members = [self.model]
        elif isinstance(self.model, forecast_lib.EnsembleForecaster):
            members = self.model.members
        else:
            raise FinopsError(f"{self.model_dir / 'model.joblib'} is not a cost forecast model.")
        self.max_months = members[0].horizon_days // 31
        # One series is a few dozen rows: a thread pool per call (n_jobs=2) costs more than it saves, and a random
        # forest's trees are walked together (`ForestRegressor`, tested equal).
        from sklearn.ensemble import RandomForestRegressor

        for member in members:
            regressor = member.regressor_  # None: a naive forecast, nothing to prepare
            if isinstance(regressor, RandomForestRegressor) and regressor.n_outputs_ == 1:
                member.regressor_ = ForestRegressor(regressor)
            elif regressor is not None and "n_jobs" in regressor.get_params():
                regressor.set_params(n_jobs=1)
        stored = self.model_dir / "forecast.csv"
        table = pd.read_csv(stored) if stored.exists() else pd.DataFrame(
            columns=["service", "project_id", "month", "forecast", "lo", "hi"])
        ratio = self.entry.get("metrics", {}).get("interval_ratio")
        if ratio is None:  # outside a registry: the stored intervals are the forecast times these ratios
            nz = table[table.forecast > 0]
            ratio = [float((nz.lo / nz.forecast).median()), float((nz.hi / nz.forecast).median())] if len(nz) \
                else [1.0, 1.0]
        self.lo_q, self.hi_q = float(ratio[0]), float(ratio[1])
        # (service, project_id) -> monthly forecasts, computed once
        self.stored: dict[tuple[str, str], list[dict]] = {}
        for (service, project), g in table.sort_values("month").groupby(["service", "project_id"], sort=False):
            self.stored[(service, project)] = [
                {"month": m, "forecast": float(f), "lo": float(lo), "hi": float(hi)}
                for m, f, lo, hi in zip(g.month, g.forecast, g.lo, g.hi)]

    def fill_from_store(self, instances: list) -> list:
        """An instance with neither history nor end_date is forecast from the series' stored history; a series the
        store does not hold keeps the model's stored forecast."""
        out = list(instances)
        for i, stored in self._store_series(instances, lambda x: "history" in x or "end_date" in x).items():
            if stored is not None:
                out[i] = {**out[i], "history": stored["history"], "end_date": stored["end_date"],
                          "first_cost_date": out[i].get("first_cost_date", stored["first_cost_date"])}
        return out

    def predict(self, instances: list[ForecastInstance], parameters: NoParameters) -> list[dict]:
        out = []
        for i, inst in enumerate(instances):
            months = inst.horizon_months or self.max_months
            if months > self.max_months:
                raise RequestError(f"instances[{i}].horizon_months: this model forecasts at most "
                                   f"{self.max_months} months ahead; ask for {self.max_months} or fewer.")
            if inst.history is None:
                rows = self.stored.get((inst.service, inst.project_id))
                if rows is None:
                    raise RequestError(f"instances[{i}]: the model has no stored forecast for service "
                                       f"'{inst.service}' in project '{inst.project_id}' (unknown or without recent "
                                       "cost); send its daily history and end_date to forecast it.")
                out.append({"service": inst.service, "project_id": inst.project_id, "source": "stored",
                            "months": rows[:months]})
            else:
                out.append(self.forecast_history(inst, months))
        return out

    def forecast_history(self, inst: ForecastInstance, months: int) -> dict:
        """The library's forecast of one series from its own history (as `train_and_evaluate` forecasts)."""
        last = pd.Timestamp(inst.end_date)
        history = np.asarray(inst.history, float)
        if inst.first_cost_date is not None:
            # The series' age is a feature: a first cost before the history is one tiny cost that many days earlier
            # (older than the 91 days the other features read, so only the age sees it; a year is the most it uses).
            gap = min((last.date() - inst.first_cost_date).days + 1 - len(history), 366)
            if gap > 0 and len(history) >= 91:
                history = np.concatenate([[1e-9], np.zeros(gap - 1), history])
        panel = forecast_lib.SeriesPanel(pd.DataFrame({"service": [inst.service], "project_id": [inst.project_id]}),
                                         pd.date_range(end=last, periods=len(history), freq="D"), history[None, :])
        days = (last + pd.offsets.MonthEnd(months) - last).days
        fc = self.model.predict(panel, days=days)
        calendar = pd.date_range(last + pd.Timedelta(days=1), periods=days, freq="D").to_numpy().astype("datetime64[M]")
        months = np.unique(calendar)
        totals = np.zeros(len(months))
        if len(fc):  # no row: the series had no recent cost, so the model forecasts nothing (as the library does)
            np.add.at(totals, np.searchsorted(months, fc["day"].to_numpy().astype("datetime64[M]")),
                      fc["forecast"].to_numpy())
        rows = [{"month": str(m), "forecast": float(v), "lo": float(v) * self.lo_q, "hi": float(v) * self.hi_q}
                for m, v in zip(months, totals)]
        return {"service": inst.service, "project_id": inst.project_id, "source": "history", "months": rows}


class AnomalyPredictor(Predictor):
    """The detector on one cell's window, run day by day by the real-time detector (`finops_ml.models.realtime`: the
    batch detector's decisions; the tests hold them equal): the fitted detector is prepared once at load
    (`RealtimeModel`), each request feeds its window into a fresh state and asks for the last day's judgement: its
    direction, $ impact and % deviation, and cause."""

    kind = "anomaly"
    instance_model = AnomalyInstance

    def __init__(self, model_dir: str | Path):
        super().__init__(model_dir)
        m = self.model
        if not isinstance(m, anomaly_lib.CostAnomalyDetector):
            raise FinopsError(f"{self.model_dir / 'model.joblib'} is not a cost anomaly detector.")
        # Fewer days and no resource could be established (warm-up + the baseline's first days): nothing is judged.
        self.min_days = m.warmup_days + anomaly_lib.MIN_BASELINE_DAYS + 1
        self.realtime = RealtimeModel(m)

    def fill_from_store(self, instances: list) -> list:
        """An instance with neither daily_costs nor resources is judged on the cell's stored daily costs, ending on
        its end_date (default: the store's last day)."""
        out = list(instances)
        for i, stored in self._store_series(instances, lambda x: "daily_costs" in x or "resources" in x).items():
            x = out[i]
            if stored is None:
                raise RequestError(f"instances[{i}]: the feature store holds no history for service '{x['service']}' "
                                   f"in project '{x['project_id']}'; send its daily_costs or resources.")
            window = window_ending(stored, x["end_date"], f"instances[{i}]") if "end_date" in x \
                else stored["history"]
            out[i] = {**x, "daily_costs": window, "end_date": x.get("end_date", stored["end_date"])}
        return out

    def predict(self, instances: list[AnomalyInstance], parameters: NoParameters) -> list[dict]:
        out = []
        for i, inst in enumerate(instances):
            n = inst.window_days()
            field = "daily_costs" if inst.daily_costs is not None else "resources"
            if n < self.min_days:
                raise RequestError(f"instances[{i}].{field}: a window of {n} days is too short for this detector; "
                                   f"send at least {self.min_days} days ending on end_date.")
            names, cost = _window_matrix(inst)
            answer = self.judge(inst, names, cost)
            if answer is None:
                raise RequestError(f"instances[{i}].{field}: no cost on end_date (the last value) and no always-on "
                                   "resource that stopped billing: there is nothing to judge that day.")
            out.append(answer)
        return out

    def judge(self, inst: AnomalyInstance, names: list[str], cost: np.ndarray) -> dict | None:
        """The window's last day as the detector decides it (resources x days, NaN: no cost that day); None when
        nothing is judged that day (no cost, and no always-on resource missing)."""
        state = RealtimeState(self.realtime, lateness_days=0)
        end = inst.end_date.toordinal()
        first = end - cost.shape[1] + 1
        for r, t in _present(cost):
            state.add_cost(first + t, inst.service, inst.project_id, names[r], "", float(cost[r, t]))
        state.close_through(end - 1)  # every earlier day, the last ones included when the end date has no cost
        j = state.judgement(end, inst.service, inst.project_id)
        if j is None:
            return None
        anomalous = bool(j["is_anomaly"])
        return {"service": inst.service, "project_id": inst.project_id, "day": inst.end_date.isoformat(),
                "net_cost": _num(j["actual"]), "expected": _num(j["expected"]), "score": _num(j["score"]),
                "threshold": _num(j["threshold"]), "is_anomaly": anomalous, "direction": j["direction"],
                "impact": _num(j["impact"]) if anomalous else 0.0,
                "pct_deviation": (_num(j["pct_deviation"]) if j["pct_deviation"] is not None else None)
                if anomalous else 0.0,
                "new_cost": _num(j["new_cost"]), "cause": j["cause"] if anomalous else None}


def _present(cost: np.ndarray):
    """(resource, day) of every cost of a window, day by day (the order a stream delivers them in)."""
    t_idx, r_idx = np.nonzero(np.isfinite(cost.T))
    return zip(r_idx.tolist(), t_idx.tolist())


def _window_matrix(inst: AnomalyInstance) -> tuple[list[str], np.ndarray]:
    """Resources (sorted, duplicates added up) x days of an anomaly instance, NaN where there was no cost."""
    if inst.daily_costs is not None:
        return [""], np.asarray(inst.daily_costs, float)[None, :]
    rows: dict[str, np.ndarray] = {}
    for r in inst.resources:
        v = np.array([np.nan if c is None else c for c in r.daily_costs], float)
        if r.resource_name in rows:
            w = rows[r.resource_name]
            v = np.where(np.isfinite(w) & np.isfinite(v), w + v, np.where(np.isfinite(w), w, v))
        rows[r.resource_name] = v
    names = sorted(n for n, v in rows.items() if np.isfinite(v).any())
    return names, np.array([rows[n] for n in names]).reshape(len(names), -1)


class LabelerPredictor(Predictor):
    """The labeler's fitted TF-IDF + logistic regression, evaluated on plain strings: each distinct analyzer runs
    once per resource (the three targets share the character n-grams of its name), n-grams are looked up in the
    vocabularies, weighted, normalised and dotted with the coefficients: `ResourceLabeler.predict` without
    DataFrames or scikit-learn's per-call checks (the tests hold the two equal)."""

    kind = "labeler"
    instance_model = LabelerInstance
    parameters_model = LabelerParameters

    def __init__(self, model_dir: str | Path):
        super().__init__(model_dir)
        if not isinstance(self.model, labeler_lib.ResourceLabeler):
            raise FinopsError(f"{self.model_dir / 'model.joblib'} is not a resource labeler.")
        self.analyzers: dict[tuple, Any] = {}
        self.targets = {}
        for target, pipe in self.model.models_.items():
            columns, classifier = pipe[0], pipe[-1]
            blocks, offset = [], 0
            for name, vec, col in columns.transformers_:
                if name == "remainder" or vec == "drop":
                    continue
                key = (col, vec.analyzer, vec.ngram_range, vec.lowercase, vec.token_pattern, vec.preprocessor,
                       vec.tokenizer, vec.strip_accents, vec.stop_words)
                self.analyzers.setdefault(key, vec.build_analyzer())
                blocks.append((key, vec.vocabulary_, vec.idf_, vec.sublinear_tf, vec.norm, offset))
                offset += len(vec.idf_)
            self.targets[target] = (blocks, np.asarray(classifier.coef_), np.asarray(classifier.intercept_),
                                    classifier.classes_)

    def predict(self, instances: list[LabelerInstance], parameters: LabelerParameters) -> list[dict]:
        from collections import Counter

        threshold = parameters.confidence_threshold
        threshold = self.model.confidence_threshold if threshold is None else threshold
        out = []
        aliases = getattr(self.model, "aliases_", {})
        for inst in instances:
            text = _resource_text(inst)
            grams = {key: Counter(analyze(text[key[0]])) for key, analyze in self.analyzers.items() if key[0] in text}
            frame = labeler_frame([inst]) if aliases else None
            o = {"resource_name": inst.resource_name, "project_id": inst.project_id}
            for target, (blocks, coef, intercept, classes) in self.targets.items():
                if target in aliases:  # the label's own tokens: plant aliases, owners' peers, other known labels
                    extra = labeler_lib.label_context(frame, target, aliases[target], learning=False).iloc[0]
                    grams.update({key: Counter(analyze(extra[key[0]])) for key, analyze in self.analyzers.items()
                                  if key[0] in extra.index})
                cols, vals = [], []
                for key, vocab, idf, sublinear, norm, offset in blocks:
                    hits = [(vocab[g], n) for g, n in grams[key].items() if g in vocab]
                    if not hits:
                        continue
                    idx = np.fromiter((h[0] for h in hits), np.int64, len(hits))
                    v = np.fromiter((h[1] for h in hits), np.float64, len(hits))
                    if sublinear:
                        v = np.log(v) + 1.0
                    v *= idf[idx]
                    if norm == "l2":
                        v /= np.sqrt(v @ v)
                    elif norm == "l1":
                        v /= np.abs(v).sum()
                    cols.append(idx + offset)
                    vals.append(v)
                if cols:
                    idx, v = np.concatenate(cols), np.concatenate(vals)
                    decision = coef[:, idx] @ v + intercept
                else:
                    decision = intercept.astype(float)
                if len(classes) <= 2:  # sklearn: expit of the one decision
                    p1 = 1.0 / (1.0 + np.exp(-decision[0]))
                    proba = np.array([1.0 - p1, p1])
                else:  # softmax
                    e = np.exp(decision - decision.max())
                    proba = e / e.sum()
                counts = getattr(self.model, "project_counts_", {}).get(target)
                if counts:  # the project's own shares of each value, as the library weighs them
                    proba = labeler_lib.with_project_prior(proba[None, :], classes, [inst.project_id], counts,
                                                           self.model.strength(target))[0]
                k = int(proba.argmax())
                known = getattr(inst, target)
                predicted, confidence = str(classes[k]), float(proba[k])
                if frame is not None:  # the library's back-offs (analogy, name's plant, ..., project consensus)
                    answer, sure = self.model.refine(target, frame, frame, np.array([predicted], dtype=object),
                                                     np.array([confidence]))
                    predicted, confidence = str(answer[0]), float(sure[0])
                o[target] = {"predicted": predicted, "confidence": confidence, "known": known,
                             "apply": known is None and confidence >= threshold}
            out.append(o)
        return out


def _resource_text(inst: LabelerInstance) -> dict[str, str]:
    """`labeler.resource_text` for one resource, on plain strings (tested equal to it)."""
    tokens = labeler_lib._tokens
    skus = " | ".join(sorted(set(inst.skus))) if isinstance(inst.skus, list) else inst.skus
    text = " | ".join(tokens(v) for v in (inst.resource_name, inst.project_id, inst.project_name, inst.service, skus,
                                          inst.region))
    service = re.sub(r"\W+", "_", inst.service)
    workload = inst.workload if inst.workload is not None else "none"
    context = (f"{inst.project_id} {service} {inst.project_id}::{service} {workload}::{service} "
               f"{inst.region or ''} env_{inst.env or ''}")
    return {"text": text, "context": context}


def labeler_frame(instances: list[LabelerInstance]) -> pd.DataFrame:
    """Labeler instances as rows of the `resources` feature view (what the library's predict takes)."""
    rows = [inst.model_dump() for inst in instances]
    for r in rows:
        if isinstance(r["skus"], list):
            r["skus"] = " | ".join(sorted(set(r["skus"])))
    return pd.DataFrame(rows)


PREDICTORS: dict[str, type[Predictor]] = {"forecast": ForecastPredictor, "anomaly": AnomalyPredictor,
                                          "labeler": LabelerPredictor}


def kind_of(model_dir: str | Path) -> str:
    """Which of the three models a directory holds (from its registry entry, else from the model's class)."""
    model_dir = Path(model_dir)
    entry = model_dir / "entry.json"
    if entry.exists():
        name = read_json(entry).get("name")
        for kind, spec in MODELS.items():
            if name == spec.name:
                return kind
    if not (model_dir / "model.joblib").exists():
        raise FinopsError(f"No model.joblib in {model_dir}; set AIP_STORAGE_URI to a model version directory.")
    model = joblib.load(model_dir / "model.joblib")
    for kind, spec in MODELS.items():
        if isinstance(model, spec.estimator_classes()):
            return kind
    raise FinopsError(f"{model_dir / 'model.joblib'} holds none of the three finops-ml models.")


def resolve_registry(registry: str | Path, models: list[str], alias: str = "champion") -> dict[str, Path]:
    """The version directory of each model under an alias (or a version number) of the local registry."""
    root = Path(registry)
    if not root.is_dir():
        raise FinopsError(f"Registry {root} does not exist; train first (finops-ml run --out DIR makes DIR/registry) "
                          "or pass --registry.")
    reg = LocalRegistry(root)
    dirs = {}
    for kind in models:
        name = MODELS[kind].name
        if not reg.versions(name):
            raise FinopsError(f"Registry {root} has no {name} model; train one (finops-ml run) or serve another "
                              "--model.")
        known = reg.aliases(name)
        if not (str(alias).isdigit() and int(alias) in reg.versions(name)) and alias not in known:
            raise FinopsError(f"Model {name} in {root} has no alias or version '{alias}' (it has: "
                              f"{', '.join(sorted(known)) or 'no aliases'}); pass another --alias.")
        dirs[kind] = reg.model_dir(name, alias)
    return dirs
