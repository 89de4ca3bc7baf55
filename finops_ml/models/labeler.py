"""Auto-labelling of resources that lack owner, cost_center or plant.

One classifier per label: TF-IDF over character n-grams of the resource name, project id and name,
service, SKUs, region and env, then a logistic regression. Resources that carry the label train it;
accuracy is measured on labelled resources held out from training. Only predictions whose probability
reaches the confidence threshold are applied; the others go to a review list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline

TARGETS = ("owner", "cost_center", "plant")


def _tokens(value) -> str:
    return re.sub(r"[^a-z0-9]+", " ", str(value).lower()).strip()


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


def make_classifier(seed: int):
    features = ColumnTransformer([
        ("text", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True), "text"),
        ("context", TfidfVectorizer(token_pattern=r"\S+", lowercase=False), "context"),
    ])
    return make_pipeline(features, LogisticRegression(C=20.0, max_iter=3000, random_state=seed))


@dataclass
class ResourceLabeler:
    targets: tuple[str, ...] = TARGETS
    confidence_threshold: float = 0.6
    seed: int = 42
    models_: dict = field(default_factory=dict)

    def fit(self, resources: pd.DataFrame) -> "ResourceLabeler":
        text = resource_text(resources)
        for target in self.targets:
            known = resources[target].notna()
            if resources.loc[known, target].nunique() == 1:
                raise ValueError(f"label {target} has a single value; nothing to learn")
            self.models_[target] = make_classifier(self.seed).fit(text[known], resources.loc[known, target])
        return self

    def predict(self, resources: pd.DataFrame) -> pd.DataFrame:
        """Per resource and target: predicted value and confidence."""
        text = resource_text(resources)
        out = resources[["resource_name", "project_id"]].copy()
        for target, model in self.models_.items():
            proba = model.predict_proba(text)
            out[f"{target}_predicted"] = model.classes_[proba.argmax(axis=1)]
            out[f"{target}_confidence"] = proba.max(axis=1)
        return out

    def apply(self, resources: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Fill missing labels with confident predictions; return (labelled resources, review list)."""
        pred = self.predict(resources)
        labelled = resources.copy()
        review = []
        for target in self.models_:
            missing = labelled[target].isna()
            confident = pred[f"{target}_confidence"] >= self.confidence_threshold
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


def train_and_evaluate(resources: pd.DataFrame, targets: list[str], confidence_threshold: float, test_share: float,
                       seed: int, truth: pd.DataFrame | None = None) -> dict:
    """Held-out accuracy per target, then the production labeler fitted on every labelled resource."""
    metrics: dict = {}
    confusion: dict = {}
    for target in targets:
        known = resources[resources[target].notna()]
        counts = known[target].value_counts()
        stratify = known[target] if counts.min() >= 2 and len(counts) <= len(known) * test_share else None
        train, test = train_test_split(known, test_size=test_share, random_state=seed, stratify=stratify)
        model = ResourceLabeler((target,), confidence_threshold, seed).fit(train)
        pred = model.predict(test)
        y_true, y_pred = test[target].to_numpy(), pred[f"{target}_predicted"].to_numpy()
        confident = pred[f"{target}_confidence"].to_numpy() >= confidence_threshold
        metrics[f"label_accuracy_{target}"] = float(accuracy_score(y_true, y_pred))
        metrics[f"label_macro_f1_{target}"] = float(f1_score(y_true, y_pred, average="macro"))
        metrics[f"label_coverage_{target}"] = float(confident.mean())
        metrics[f"label_confident_accuracy_{target}"] = (
            float(accuracy_score(y_true[confident], y_pred[confident])) if confident.any() else float("nan"))
        metrics[f"label_test_size_{target}"] = int(len(test))
        classes = sorted(set(y_true) | set(y_pred))
        confusion[target] = {"labels": classes, "matrix": pd.crosstab(
            pd.Categorical(y_true, classes), pd.Categorical(y_pred, classes), dropna=False).to_numpy().tolist()}

    final = ResourceLabeler(tuple(targets), confidence_threshold, seed).fit(resources)
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
