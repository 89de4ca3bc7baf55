"""Auto-labelling of resources that lack owner, cost_center or plant.

One classifier per label, a logistic regression over what a person reads to guess the label:

- the resource name, project, service, SKUs and region as character n-grams (plant aliases and app names in
  imperfect spellings);
- whole metadata values and their pairs (project, service, project x service, workload x service, region, env):
  an owner is usually "who runs this kind of thing here";
- plant aliases learnt from the labelled resources: a word of a name that, among the other labelled resources,
  always goes with one plant ("lyn", "stg", "corp") says that plant, alone and with the project and workload
  (a shared data-platform resource that serves a plant says so in its name);
- the resource's other known labels (its cost center says its plant, its plant and workload its cost center).
  Rows are learnt both with and without them, since many unlabelled resources carry none.

Resources that carry the label train it; accuracy is measured on labelled resources held out from training.
Only predictions whose probability reaches the applying threshold are applied; the others go to a review list.
That threshold is the configured confidence threshold; with `target_precision` > 0 it is raised per label where
cross-validation on the training resources shows predictions at that confidence right less often than wanted.
(Measured on development seeds: a target of 0.98 or 0.95 lowered compliance after from ~0.997 to ~0.96-0.97 and
left the precision of applied labels where it was, ~0.98: the wrong labels left are confident ones, mostly the
generator's ~2% of owners who are a colleague of the expected one. Hence off by default.)
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.pipeline import make_pipeline
from threadpoolctl import threadpool_limits

TARGETS = ("owner", "cost_center", "plant")
ALIAS_MIN_SUPPORT = 2  # a name word says a plant when at least this many other labelled resources agree ...
ALIAS_MIN_PURITY = 0.9  # ... and at least this share of those carrying it have that plant
CV_FOLDS = 4
LR_C = 20.0
PEER_WEIGHT = 1.0


def _tokens(value) -> str:
    return re.sub(r"[^a-z0-9]+", " ", str(value).lower()).strip()


def _words(value) -> list[str]:
    return re.findall(r"[a-z]+", str(value).lower())


def resource_text(resources: pd.DataFrame) -> pd.DataFrame:
    """What a person reads to guess a label: the names split into tokens, and whole metadata values.

    `text` feeds character n-grams (plant aliases, app names in imperfect spellings); `context` holds whole
    values and the project x service pair, since an owner is usually "who runs this kind of thing here".
    """
    text = (resources.resource_name.map(_tokens) + " | " + resources.project_id.map(_tokens) + " | "
            + resources.project_name.map(_tokens) + " | " + resources.service.map(_tokens) + " | "
            + resources.skus.map(_tokens) + " | " + resources.region.map(_tokens))
    service = resources.service.str.replace(r"\W+", "_", regex=True)
    workload = resources.workload.fillna("none")
    context = (resources.project_id + " " + service + " " + resources.project_id + "::" + service + " "
               + workload + "::" + service + " " + resources.region.fillna("") + " env_" + resources.env.fillna(""))
    return pd.DataFrame({"text": text, "context": context})


class PlantAliases:
    """Name words that say a plant, learnt from the resources that carry the plant label; and, per kind of
    resource (workload x service), who owns it in each project (its owner's peers elsewhere)."""

    def fit(self, resources: pd.DataFrame) -> "PlantAliases":
        self.counts_: dict[str, Counter] = defaultdict(Counter)
        if "plant" in resources.columns:
            for name, plant in zip(resources.resource_name, resources.plant):
                if isinstance(plant, str):
                    for w in set(_words(name)):
                        self.counts_[w][plant] += 1
        owners: dict[tuple, dict[str, set]] = defaultdict(lambda: defaultdict(set))
        if "owner" in resources.columns:
            for w, s, p, o in zip(resources.workload.fillna("none"), resources.service, resources.project_id,
                                  resources.owner):
                if isinstance(o, str):
                    owners[(w, s)][p].add(o)
        # plain dicts: the fitted labeler is pickled with the model
        self.counts_ = dict(self.counts_)
        self.owners_ = {kind: dict(by_project) for kind, by_project in owners.items()}
        return self

    def peers(self, workload: str, service: str, project: str) -> list[str]:
        """Owners of the same kind of resource in the other projects: the roles of people are alike across
        plants, so "owned by d elsewhere" says which of this project's people owns it."""
        by_project = self.owners_.get((workload, service), {})
        return sorted(set().union(*(o for p, o in by_project.items() if p != project)) if by_project else set())

    def plants(self, name: str, own_plant=None) -> list[str]:
        """Plants the name's words say; `own_plant`: the resource's own label, left out of the evidence (a resource
        the aliases were learnt from must not vote for itself)."""
        out = set()
        for w in set(_words(name)):
            c = self.counts_.get(w)
            if not c:
                continue
            if isinstance(own_plant, str) and c[own_plant] > 0:
                c = c.copy()
                c[own_plant] -= 1
            total = sum(c.values())
            if total == 0:
                continue
            plant, n = c.most_common(1)[0]
            if n >= ALIAS_MIN_SUPPORT and n / total >= ALIAS_MIN_PURITY:
                out.add(plant)
        return sorted(out)


def label_context(resources: pd.DataFrame, target: str, aliases: PlantAliases, learning: bool,
                  own_labels: bool = True) -> pd.DataFrame:
    """Tokens beyond `resource_text`: the plant aliases of the name (with project and workload) and the resource's
    other known labels. `learning`: the resources are the ones the aliases were learnt from."""
    workload = resources.workload.fillna("none").to_numpy()
    project = resources.project_id.to_numpy()
    service = resources.service.to_numpy()
    own_plant = resources["plant"].to_numpy() if learning and "plant" in resources.columns else [None] * len(resources)
    others = [t for t in TARGETS if t != target and t in resources.columns] if own_labels else []
    values = {t: resources[t].to_numpy() for t in others}
    out, peer_tokens = [], []
    for i, name in enumerate(resources.resource_name.to_numpy()):
        plants = aliases.plants(name, own_plant[i]) or ["none"]
        tokens = [f"{k}alias={p}" for p in plants for k in ("", f"{project[i]}::", f"{workload[i]}::")]
        peers = [f"peer={o}" for o in aliases.peers(workload[i], service[i], project[i])] if target == "owner" else []
        peer_tokens.append(" ".join(peers) or "peer=none")
        for t in others:
            v = values[t][i]
            if isinstance(v, str):
                tokens += [f"own_{t}={v}", f"{workload[i]}::own_{t}={v}"]
        out.append(" ".join(tokens))
    return pd.DataFrame({"labels": out, "peers": peer_tokens}, index=resources.index)


def make_classifier(seed: int):
    features = ColumnTransformer([
        ("text", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True), "text"),
        ("context", TfidfVectorizer(token_pattern=r"\S+", lowercase=False), "context"),
        ("labels", TfidfVectorizer(token_pattern=r"\S+", lowercase=False), "labels"),
        ("peers", TfidfVectorizer(token_pattern=r"\S+", lowercase=False), "peers"),
    ], transformer_weights={"text": 1.0, "context": 1.0, "labels": 1.0, "peers": PEER_WEIGHT})
    return make_pipeline(features, LogisticRegression(C=LR_C, max_iter=3000, random_state=seed))


def _design(resources: pd.DataFrame, target: str, aliases: PlantAliases, learning: bool,
            own_labels: bool = True) -> pd.DataFrame:
    return pd.concat([resource_text(resources), label_context(resources, target, aliases, learning, own_labels)],
                     axis=1)


def _fit_target(resources: pd.DataFrame, target: str, seed: int):
    """The classifier of one label and its plant aliases, from the resources that carry the label.

    Each row is learnt twice when the resource has other labels: with them and without them.
    """
    known = resources[resources[target].notna()]
    aliases = PlantAliases().fit(resources)
    with_own = _design(known, target, aliases, learning=True)
    without = _design(known, target, aliases, learning=True, own_labels=False)
    has_other = with_own["labels"].str.contains("own_", regex=False)
    x = pd.concat([with_own, without[has_other]], ignore_index=True)
    y = pd.concat([known[target], known.loc[has_other.to_numpy(), target]], ignore_index=True)
    with threadpool_limits(1):  # BLAS threads only slow a model this size down (and a lot on a busy machine)
        model = make_classifier(seed).fit(x, y)
    return model, aliases


def _predict_target(model, aliases: PlantAliases, resources: pd.DataFrame,
                    target: str) -> tuple[np.ndarray, np.ndarray]:
    with threadpool_limits(1):
        proba = model.predict_proba(_design(resources, target, aliases, learning=False))
    return model.classes_[proba.argmax(axis=1)], proba.max(axis=1)


def precision_threshold(resources: pd.DataFrame, target: str, floor: float, seed: int,
                        target_precision: float) -> float:
    """The lowest confidence >= `floor` at which cross-validated predictions on the labelled resources are right
    at least `target_precision` of the time (counting every prediction at or above it)."""
    known = resources[resources[target].notna()]
    counts = known[target].value_counts()
    folds = min(CV_FOLDS, int(counts.max()))
    if folds < 2 or len(known) < 20:
        return floor
    y = known[target].to_numpy()
    strat = np.where(known[target].map(counts).to_numpy() >= folds, y, "_rare")
    conf, right = np.empty(len(known)), np.empty(len(known), bool)
    for train_idx, test_idx in StratifiedKFold(folds, shuffle=True, random_state=seed).split(known, strat):
        train = resources.drop(index=known.index[test_idx])
        model, aliases = _fit_target(train, target, seed)
        test = known.iloc[test_idx].assign(**{target: None})
        pred, c = _predict_target(model, aliases, test, target)
        conf[test_idx], right[test_idx] = c, pred == y[test_idx]
    order = np.argsort(-conf, kind="stable")
    c, r = conf[order], right[order]
    precision = np.cumsum(r) / np.arange(1, len(r) + 1)
    ok = (precision >= target_precision) & (c >= floor)
    # the loosest threshold whose predictions at or above it are precise enough; between two confidences
    if not ok.any():
        return max(floor, float(c[0]) + 1e-9)
    i = int(np.nonzero(ok)[0].max())
    below = c[i + 1] if i + 1 < len(c) else 0.0
    return max(floor, float(0.5 * (c[i] + below)))


@dataclass
class ResourceLabeler:
    targets: tuple[str, ...] = TARGETS
    confidence_threshold: float = 0.6
    seed: int = 42
    target_precision: float = 0.0  # 0: apply at confidence_threshold; else raise it per label to reach this (CV)
    models_: dict = field(default_factory=dict)
    aliases_: dict = field(default_factory=dict)
    thresholds_: dict = field(default_factory=dict)

    def fit(self, resources: pd.DataFrame) -> "ResourceLabeler":
        for target in self.targets:
            known = resources[target].notna()
            if resources.loc[known, target].nunique() == 1:
                raise ValueError(f"label {target} has a single value; nothing to learn")
            self.models_[target], self.aliases_[target] = _fit_target(resources, target, self.seed)
            self.thresholds_[target] = self.confidence_threshold if not self.target_precision else (
                precision_threshold(resources, target, self.confidence_threshold, self.seed, self.target_precision))
        return self

    def predict(self, resources: pd.DataFrame) -> pd.DataFrame:
        """Per resource and target: predicted value and confidence (from the resource's other known labels too)."""
        out = resources[["resource_name", "project_id"]].copy()
        for target, model in self.models_.items():
            known = resources.assign(**{target: None}) if target in resources.columns else resources
            pred, conf = _predict_target(model, self.aliases_[target], known, target)
            out[f"{target}_predicted"] = pred
            out[f"{target}_confidence"] = conf
        return out

    def apply(self, resources: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Fill missing labels with confident predictions; return (labelled resources, review list)."""
        pred = self.predict(resources)
        labelled = resources.copy()
        review = []
        for target in self.models_:
            missing = labelled[target].isna()
            confident = pred[f"{target}_confidence"] >= self.thresholds_.get(target, self.confidence_threshold)
            labelled[f"{target}_applied"] = missing & confident
            labelled.loc[missing & confident, target] = pred.loc[missing & confident, f"{target}_predicted"]
            for i in np.nonzero((missing & ~confident).to_numpy())[0]:
                review.append({"resource_name": resources.resource_name.iloc[i],
                               "project_id": resources.project_id.iloc[i], "label": target,
                               "suggestion": pred[f"{target}_predicted"].iloc[i],
                               "confidence": float(pred[f"{target}_confidence"].iloc[i]),
                               "net_cost": float(resources.net_cost.iloc[i])})
        return labelled, pd.DataFrame(review, columns=["resource_name", "project_id", "label", "suggestion",
                                                       "confidence", "net_cost"])


def compliance(resources: pd.DataFrame, targets=TARGETS) -> float:
    """Share of cost whose resources carry all the labels."""
    complete = resources[list(targets)].notna().all(axis=1)
    total = resources.net_cost.clip(lower=0).sum()
    return float(resources.net_cost.clip(lower=0)[complete].sum() / total) if total > 0 else float("nan")


def holdout_split(resources: pd.DataFrame, target: str, test_share: float, seed: int
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) among the resources that carry `target`: the held-out resources accuracy is measured on."""
    known = resources[resources[target].notna()]
    counts = known[target].value_counts()
    stratify = known[target] if counts.min() >= 2 and len(counts) <= len(known) * test_share else None
    return train_test_split(known, test_size=test_share, random_state=seed, stratify=stratify)


def train_and_evaluate(resources: pd.DataFrame, targets: list[str], confidence_threshold: float, test_share: float,
                       seed: int, truth: pd.DataFrame | None = None, target_precision: float = 0.0) -> dict:
    """Held-out accuracy per target, then the production labeler fitted on every labelled resource.

    Coverage is the share of held-out resources whose prediction reaches the applying threshold (the confidence
    threshold, raised per label towards `target_precision` on the training resources; 0 leaves it as configured).
    """
    metrics: dict = {}
    confusion: dict = {}
    for target in targets:
        train, test = holdout_split(resources, target, test_share, seed)
        model = ResourceLabeler((target,), confidence_threshold, seed, target_precision).fit(train)
        # Judged from its name and metadata alone: the other labels hidden too (most unlabelled resources have none).
        pred = model.predict(test.assign(**{t: None for t in TARGETS if t in test.columns}))
        y_true, y_pred = test[target].to_numpy(), pred[f"{target}_predicted"].to_numpy()
        confident = pred[f"{target}_confidence"].to_numpy() >= model.thresholds_[target]
        metrics[f"label_threshold_{target}"] = model.thresholds_[target]
        metrics[f"label_accuracy_{target}"] = float(accuracy_score(y_true, y_pred))
        metrics[f"label_macro_f1_{target}"] = float(f1_score(y_true, y_pred, average="macro"))
        metrics[f"label_coverage_{target}"] = float(confident.mean())
        metrics[f"label_confident_accuracy_{target}"] = (
            float(accuracy_score(y_true[confident], y_pred[confident])) if confident.any() else float("nan"))
        metrics[f"label_test_size_{target}"] = int(len(test))
        classes = sorted(set(y_true) | set(y_pred))
        confusion[target] = {"labels": classes, "matrix": pd.crosstab(
            pd.Categorical(y_true, classes), pd.Categorical(y_pred, classes), dropna=False).to_numpy().tolist()}

    final = ResourceLabeler(tuple(targets), confidence_threshold, seed, target_precision).fit(resources)
    labelled, review = final.apply(resources)
    metrics["label_compliance_before"] = compliance(resources, targets)
    metrics["label_compliance_after"] = compliance(labelled, targets)
    metrics["review_items"] = int(len(review))
    if truth is not None:  # the generator knows the labels the resources should carry
        t = truth.rename(columns={"resource": "resource_name"}).set_index(["resource_name", "project_id"])
        right = total = 0
        for target in targets:
            applied = labelled[labelled[f"{target}_applied"]]
            expected = t.reindex(list(zip(applied.resource_name, applied.project_id)))[target].to_numpy()
            right += int((applied[target].to_numpy() == expected).sum())
            total += len(applied)
        metrics["applied_labels"] = total
        metrics["applied_label_precision"] = right / total if total else float("nan")
    return {"metrics": metrics, "model": final, "labelled": labelled, "review": review, "confusion": confusion}
