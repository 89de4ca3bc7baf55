"""The labeler: plant aliases from names, owners' peers across plants, a resource's other labels, applying threshold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from finops_ml.models import labeler
from finops_ml.models.labeler import PlantAliases, ResourceLabeler, compliance, precision_threshold, train_and_evaluate

pytestmark = pytest.mark.unit

PLANTS = {  # code: (alias in names, project alias, people by role, ops cost center, engineering cost center)
    "lyon": ("lyn", "lyn", ("c_dubois", "m_lefevre", "a_moreau"), "cc-4110", "cc-4120"),
    "stuttgart": ("stg", "stg", ("j_wagner", "l_becker", "s_hoffmann"), "cc-4210", "cc-4220"),
    "pune": ("pnq", "pnq", ("a_kulkarni", "r_deshpande", "p_joshi"), "cc-4410", "cc-4420"),
}
WORKLOADS = {  # workload: ((service, owner role), ...)
    "mes": (("Compute Engine", 0), ("Cloud SQL", 0), ("Cloud Pub/Sub", 1), ("Cloud Storage", 1)),
    "quality": (("Vertex AI", 2), ("Cloud Run", 2), ("BigQuery", 1), ("Kubernetes Engine", 2)),
}
APPS = {"mes": ("oee", "wms"), "quality": ("vision", "qa")}


def _row(name, project, service, workload, owner, cost_center, plant, region="europe-west1"):
    return dict(resource_name=name, project_id=project, project_name=project.replace("-", " "), service=service,
                region=region, skus=f"{service} usage", env="prod", workload=workload, net_cost=100.0,
                owner=owner, cost_center=cost_center, plant=plant)


def organisation(per_kind: int = 3, skip=()) -> pd.DataFrame:
    """Resources of three plants (mes and quality projects) and a shared data platform, all labelled.

    `skip`: (plant, workload, service) kinds left out.
    """
    rows = []
    for plant, (alias, palias, people, cc_ops, cc_eng) in PLANTS.items():
        for workload, kinds in WORKLOADS.items():
            project = f"acme-{palias}-{workload}-prd"
            for service, role in kinds:
                if (plant, workload, service) in skip:
                    continue
                for n in range(per_kind):
                    app = APPS[workload][n % 2]
                    short = service.split()[-1].lower().replace("/", "")
                    rows.append(_row(f"{alias}-{app}-{short}-{n:02d}", project, service, workload, people[role],
                                     cc_ops if workload == "mes" else cc_eng, plant))
    # The data platform serves plants (its resources' names say which, seen once or not at all here) or the
    # whole company.
    for plant, (alias, _, _, _, cc_eng) in list(PLANTS.items())[:2]:
        rows.append(_row(f"{alias}-lake-dwh-00", "acme-corp-data-platform", "BigQuery", "data-platform",
                         "n_fischer", cc_eng, plant))
    for n in range(6):
        rows.append(_row(f"corp-lake-dwh-{n:02d}", "acme-corp-data-platform", "BigQuery", "data-platform",
                         "n_fischer", "cc-9010", "global"))
    return pd.DataFrame(rows)


def test_plant_aliases_are_words_that_always_go_with_one_plant():
    res = organisation()
    aliases = PlantAliases().fit(res)
    assert aliases.plants("STG_new_thing") == ["stuttgart"]
    assert aliases.plants("lyn-wms-x") == ["lyon"]
    assert aliases.plants("oee-thing") == []  # every plant has an oee app: no plant
    assert aliases.plants("corp-lake-dwh-01") == ["global"]
    # A resource the aliases were learnt from does not vote for itself.
    one = pd.concat([res, pd.DataFrame([_row("zz-unique", "acme-pnq-mes-prd", "Cloud SQL", "mes", "x", "cc-4410",
                                             "pune")])], ignore_index=True)
    aliases = PlantAliases().fit(one)
    assert aliases.plants("zz-unique") == []  # a single resource is too little support
    assert aliases.peers("mes", "Cloud SQL", "acme-lyn-mes-prd") == ["a_kulkarni", "j_wagner", "x"]


def test_a_shared_resource_gets_the_plant_its_name_says():
    res = organisation()
    new = pd.DataFrame([_row("pnq-lake-dwh-99", "acme-corp-data-platform", "BigQuery", "data-platform",
                             None, None, None),
                        _row("lyn_dwh_lake_77", "acme-corp-data-platform", "BigQuery", "data-platform",
                             None, None, None),
                        _row("corp-lake-dwh-99", "acme-corp-data-platform", "BigQuery", "data-platform",
                             None, None, None)])
    pred = ResourceLabeler(seed=1).fit(res).predict(new)
    # Pune: never seen in the data platform, its alias is learnt from Pune's own projects.
    assert pred.plant_predicted.tolist() == ["pune", "lyon", "global"]
    # The cost center of a plant served by the data platform is learnt from the data platform's resources:
    # Lyon's was seen once, Pune's never (the model cannot know the rule "the plant's engineering cost center").
    assert pred.cost_center_predicted.tolist()[1:] == ["cc-4120", "cc-9010"]
    assert pred.owner_predicted.tolist() == ["n_fischer"] * 3


def test_owner_of_a_kind_never_labelled_in_its_plant_comes_from_its_peers_elsewhere():
    # Stuttgart's mes Pub/Sub topics were never labelled; elsewhere that kind is owned by the plant's data
    # engineer (role 1), and Stuttgart's data engineer is l_becker.
    res = organisation(skip={("stuttgart", "mes", "Cloud Pub/Sub")})
    new = pd.DataFrame([_row("stg-wms-pubsub-77", "acme-stg-mes-prd", "Cloud Pub/Sub", "mes", None, None, None)])
    pred = ResourceLabeler(("owner",), seed=1).fit(res).predict(new)
    assert pred.owner_predicted.iloc[0] == "l_becker"


def test_other_known_labels_are_used():
    res = organisation()
    # A name that says nothing, in the data platform: its cost center says its plant.
    new = pd.DataFrame([_row("x-99", "acme-corp-data-platform", "BigQuery", "data-platform", None, "cc-4120", None)])
    model = ResourceLabeler(("plant",), seed=1).fit(res)
    assert model.predict(new).plant_predicted.iloc[0] == "lyon"
    assert model.predict(new.assign(cost_center="cc-4220")).plant_predicted.iloc[0] == "stuttgart"
    assert model.predict(new.assign(cost_center=None)).plant_predicted.iloc[0] == "global"


def test_the_project_consensus_yields_only_to_the_strongest_word_of_a_name():
    res = organisation()
    # "zz" is on two Stuttgart resources only: pure, but thin evidence beside Lyon's "lyn" on dozens.
    res = pd.concat([res, pd.DataFrame([_row(f"zz-oee-engine-{n}", "acme-stg-mes-prd", "Compute Engine", "mes",
                                             "j_wagner", "cc-4210", "stuttgart") for n in range(2)])],
                    ignore_index=True)
    model = ResourceLabeler(("plant",), seed=1).fit(res)
    assert model.aliases_["plant"].plants("lyn-zz-engine-7") == ["lyon", "stuttgart"]
    assert model.aliases_["plant"].strongest("lyn-zz-engine-7") == "lyon"
    new = pd.DataFrame([_row(name, "acme-lyn-mes-prd", "Compute Engine", "mes", None, None, None)
                        for name in ("lyn-zz-engine-7", "stg-oee-engine-7")])
    classifier = np.array(["stuttgart", "stuttgart"], dtype=object)
    pred, _ = model.consensus("plant", new, classifier, np.array([0.9, 0.9]))
    # the Lyon project's agreed plant for the first; the second's name says Stuttgart only: a resource serving it
    assert pred.tolist() == ["lyon", "stuttgart"]


def test_train_and_evaluate_fills_missing_labels_and_measures_them():
    res = organisation(per_kind=4)
    truth = res.rename(columns={"resource_name": "resource"})[["resource", "project_id", "owner", "cost_center",
                                                               "plant"]]
    rng = np.random.default_rng(3)
    unlabelled = rng.random(len(res)) < 0.2
    res.loc[unlabelled, ["owner", "cost_center", "plant"]] = None
    result = train_and_evaluate(res, ["owner", "cost_center", "plant"], 0.6, 0.25, 7, truth)
    m = result["metrics"]
    for t in ("owner", "cost_center", "plant"):
        assert m[f"label_accuracy_{t}"] >= 0.9, (t, m)
        assert m[f"label_threshold_{t}"] == 0.6
    assert m["label_compliance_before"] == pytest.approx(compliance(res))
    assert m["label_compliance_after"] > m["label_compliance_before"] + 0.1
    assert m["applied_labels"] > 0 and m["applied_label_precision"] >= 0.95
    labelled = result["labelled"]
    assert labelled.loc[~unlabelled, ["owner", "cost_center", "plant"]].equals(
        res.loc[~unlabelled, ["owner", "cost_center", "plant"]])  # known labels are never changed
    assert list(result["review"].columns) == ["resource_name", "project_id", "label", "suggestion", "confidence",
                                              "net_cost"]


def test_a_fitted_labeler_survives_a_round_trip_through_joblib(tmp_path):
    import joblib

    res = organisation()
    model = ResourceLabeler(seed=1).fit(res)
    joblib.dump(model, tmp_path / "model.joblib")
    again = joblib.load(tmp_path / "model.joblib")
    new = res.head(5).assign(owner=None, cost_center=None, plant=None)
    pd.testing.assert_frame_equal(again.predict(new), model.predict(new))


def test_precision_threshold_never_below_the_configured_one():
    res = organisation()
    t = precision_threshold(res, "owner", 0.6, 1, 0.99)
    assert 0.6 <= t <= 1.0 + 1e-6
    assert labeler.ResourceLabeler(("owner",), 0.6, 1, 0.99).fit(res).thresholds_["owner"] == t


# ------------------------------------------------------------------------------------------------- evaluation

TRUTH_COLUMNS = ["resource", "project_id", "owner", "cost_center", "plant"]


def _partly_unlabelled(per_kind: int = 4, share: float = 0.2, seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    res = organisation(per_kind=per_kind)
    truth = res.rename(columns={"resource_name": "resource"})[TRUTH_COLUMNS]
    res.loc[np.random.default_rng(seed).random(len(res)) < share, ["owner", "cost_center", "plant"]] = None
    return res, truth


class CheatingLabeler(ResourceLabeler):
    """Answers from the label columns of the resources it is shown, or from the labels it was fitted on: perfect
    on any evaluation that leaks a held-out resource's answer, wrong ("?") on one that does not."""

    def fit(self, resources):
        self.seen_ = {t: {(n, p): v for n, p, v in zip(resources.resource_name, resources.project_id, resources[t])
                          if isinstance(v, str)} for t in self.targets}
        self.thresholds_ = {t: self.confidence_threshold for t in self.targets}
        return self

    def predict(self, resources):
        out = resources[["resource_name", "project_id"]].copy()
        for t in self.targets:
            own = resources[t] if t in resources.columns else pd.Series(None, index=resources.index, dtype=object)
            seen = [self.seen_[t].get(key, "?") for key in zip(resources.resource_name, resources.project_id)]
            out[f"{t}_predicted"] = [o if isinstance(o, str) else s for o, s in zip(own, seen)]
            out[f"{t}_confidence"] = 1.0
        return out


def test_the_evaluation_cannot_show_a_labeler_the_answers_it_is_judged_on(monkeypatch):
    res, truth = _partly_unlabelled()
    shown = []
    original = labeler.without_labels
    monkeypatch.setattr(labeler, "without_labels", lambda r: shown.append(original(r)) or shown[-1])
    monkeypatch.setattr(labeler, "ResourceLabeler", CheatingLabeler)
    m = train_and_evaluate(res, ["owner", "cost_center", "plant"], 0.6, 0.25, 7, truth)["metrics"]
    for t in ("owner", "cost_center", "plant"):
        # every labelled resource was judged, none of them by its own label nor by a model that saw it
        assert m[f"label_test_size_{t}"] == res[t].notna().sum()
        assert m[f"label_accuracy_{t}"] == 0.0
        assert m[f"label_accuracy_{t}_project_holdout"] == 0.0
    assert m["label_applied_precision"] == 0.0
    assert shown and all(not set(labeler.TARGETS) & set(frame.columns) for frame in shown)


def test_folds_hold_out_every_labelled_resource_once_and_projects_whole():
    res, _ = _partly_unlabelled()
    known = res[res.owner.notna()]
    folds = labeler.random_folds(known, "owner", 0.25, 1)
    assert len(folds) == 4 and sorted(np.concatenate(folds)) == list(range(len(known)))
    by_project = labeler.project_folds(known, 0.25)
    assert sorted(np.concatenate(by_project)) == list(range(len(known)))
    projects = [set(known.project_id.iloc[f]) for f in by_project]
    assert all(not a & b for i, a in enumerate(projects) for b in projects[i + 1:])  # a project in one fold only
    assert labeler.project_folds(known[known.project_id == "acme-lyn-mes-prd"], 0.25) == []


def test_a_project_held_out_whole_learns_nothing_from_its_own_resources():
    res, _ = _partly_unlabelled()
    fitted_on = []

    class Spy(CheatingLabeler):
        def fit(self, resources):
            fitted_on.append(set(resources.project_id))
            return super().fit(resources)

    known = res[res.plant.notna()]
    folds = labeler.project_folds(known, 0.25)
    oof = labeler.out_of_fold(lambda ts: Spy(ts), res, "plant", folds, by_project=True)
    for fold, projects in zip(folds, fitted_on):
        assert not projects & set(known.project_id.iloc[fold])
    assert (oof.predicted == "?").all()


def test_compliance_counts_only_correct_labels():
    labelled = pd.DataFrame({
        "resource_name": ["a", "b", "c", "d"], "project_id": "p", "net_cost": [10.0, 20.0, 30.0, 40.0],
        "owner": ["x", "y", "z", None], "owner_applied": [False, True, True, False],
        "plant": ["lyon", "lyon", "pune", "pune"], "plant_applied": [False, False, True, False]})
    truth = pd.DataFrame({"resource_name": ["a", "b", "c", "d"], "project_id": "p",
                          "owner": ["x", "y", "q", "w"], "plant": ["lyon", "lyon", "pune", "pune"]})
    # a: carried (right); b: owner applied right; c: owner applied wrong; d: owner missing
    value, applied, right = labeler.true_compliance(labelled, ["owner", "plant"], truth)
    assert value == pytest.approx(30 / 100) and (applied, right) == (3, 2)
    # Without the truth: an applied label is right with its label's held-out precision.
    expected = labeler.expected_compliance(labelled, ["owner", "plant"], {"owner": 0.5, "plant": 0.8})
    assert expected == pytest.approx((10 + 20 * 0.5 + 30 * 0.5 * 0.8) / 100)
    assert compliance(labelled, ["owner", "plant"]) == pytest.approx(60 / 100)  # right or wrong


def test_the_same_project_majority_baseline():
    rows = [("a", "p1", "lyon"), ("b", "p1", "lyon"), ("c", "p1", "pune"), ("d", "p2", "pune"), ("e", "p2", None),
            ("f", "p3", "pune")]
    res = pd.DataFrame([_row(n, p, "Cloud SQL", "mes", None, None, plant) for n, p, plant in rows])
    model = labeler.MajorityLabeler(("plant",), 0.6).fit(res)
    pred = model.predict(pd.DataFrame([_row(n, p, "Cloud SQL", "mes", None, None, None)
                                       for n, p in (("x", "p1"), ("y", "p2"), ("z", "p9"))]))
    assert pred.plant_predicted.tolist() == ["lyon", "pune", "pune"]  # a project never seen: the overall majority
    assert pred.plant_confidence.tolist() == pytest.approx([2 / 3, 1.0, 3 / 5])
    labelled, review = model.apply(res)
    assert labelled.plant.tolist()[4] == "pune" and labelled.plant_applied.sum() == 1 and review.empty
    overall = labeler.MajorityLabeler(("plant",), 0.6, by_project=False).fit(res).predict(res)
    assert (overall.plant_predicted == "pune").all()


def test_the_owner_of_a_new_project_by_analogy_with_the_other_plants():
    # Stuttgart's quality project was never seen: its BigQuery datasets belong to whoever plays, in Stuttgart,
    # the role that owns quality BigQuery elsewhere (the data engineer, l_becker, known from Stuttgart's MES).
    res = organisation(skip={("stuttgart", "quality", s) for s, _ in WORKLOADS["quality"]})
    aliases = PlantAliases().fit(res)
    assert aliases.analog("owner", "quality", "BigQuery", "acme-stg-quality-prd", ["stuttgart"]) == "l_becker"
    assert aliases.analog("owner", "quality", "BigQuery", "acme-stg-quality-prd", []) is None  # plant unknown
    # Its engineering cost center is only seen on one data-platform dataset: too weak a likeness, no analogy.
    assert aliases.analog("cost_center", "quality", "BigQuery", "acme-stg-quality-prd", ["stuttgart"]) is None
    assert aliases.analog("cost_center", "mes", "Cloud SQL", "acme-lyn-mes-dev", ["lyon"]) == "cc-4110"
    # Stuttgart's ops cost center is seen in its MES project only: a resource of that project gets no analogy.
    assert aliases.analog("cost_center", "mes", "Cloud SQL", "acme-stg-mes-prd", ["stuttgart"]) is None
    # The labeler answers so for a project where no resource carries an owner (it knows nothing of its habits).
    model = ResourceLabeler(("owner",), seed=1).fit(res)
    assert 0.9 <= model.analogy_precision_["owner"] <= 1.0
    new = pd.DataFrame([_row("stg-qa-dwh-77", "acme-stg-quality-prd", "BigQuery", "quality", None, None, None),
                        _row("stg-qa-dwh-78", "acme-stg-mes-prd", "BigQuery", "quality", None, None, None)])
    pred = model.predict(new)
    assert pred.owner_predicted.iloc[0] == "l_becker"
    assert pred.owner_confidence.iloc[0] == model.analogy_precision_["owner"]
    assert pred.owner_confidence.iloc[1] != model.analogy_precision_["owner"]  # a known project: the classifier
    # A new project's words say its plant when at least two other projects of that plant share them.
    assert aliases.project_plants("acme-lyn-historian-prd", "Lyon historian") == ["lyon"]
    assert aliases.project_plants("acme-stg-quality-prd", "Stuttgart quality") == []  # "stg": one project only


def test_too_few_labelled_resources_is_one_clear_sentence():
    from finops_ml.errors import InsufficientData

    res = organisation().assign(owner=None)
    with pytest.raises(InsufficientData, match=r"at least 8 resources carrying each label.*owner on 0"):
        train_and_evaluate(res, ["owner", "plant"], 0.6, 0.25, 1)
    res = organisation().assign(plant="lyon")
    with pytest.raises(InsufficientData, match=r"2 distinct values.*plant on \d+ \(1 distinct\)"):
        train_and_evaluate(res, ["plant"], 0.6, 0.25, 1)
    train_and_evaluate(organisation().assign(owner=None), ["plant"], 0.6, 0.25, 1)  # the other labels still train


def _assert_served_as_the_library(model: ResourceLabeler, new: pd.DataFrame, tmp_path) -> None:
    """The prediction server, loading MODEL as stored, answers NEW as `model.predict` does."""
    import joblib

    from finops_ml.serving.predictors import LabelerPredictor

    joblib.dump(model, tmp_path / "model.joblib")
    predictor = LabelerPredictor(tmp_path)
    instances, parameters = predictor.validate(new.drop(columns="net_cost").to_dict(orient="records"), {})
    served = predictor.predict(instances, parameters)
    library = model.predict(new)
    for target in ("owner", "cost_center", "plant"):
        assert [p[target]["predicted"] for p in served] == library[f"{target}_predicted"].tolist()
        np.testing.assert_allclose([p[target]["confidence"] for p in served], library[f"{target}_confidence"],
                                   rtol=1e-9)


def test_the_prediction_server_answers_by_analogy_as_the_library_does(tmp_path):
    res = organisation(skip={("stuttgart", "quality", s) for s, _ in WORKLOADS["quality"]})
    model = ResourceLabeler(seed=1).fit(res)
    new = pd.DataFrame([_row(f"stg-qa-{s.split()[-1].lower()}-77", "acme-stg-quality-prd", s, "quality", None, None,
                             None) for s, _ in WORKLOADS["quality"]] + [_row("lyn-oee-sql-77", "acme-lyn-mes-prd",
                                                                             "Cloud SQL", "mes", None, None, None)])
    use, _, _ = model.analogy("owner", new)
    assert use[:4].any() and not use[4]
    # a kind of resource never labelled anywhere, in a project where none is labelled: no counterpart, no answer
    new = pd.concat([new, pd.DataFrame([_row("stg-qa-func-77", "acme-stg-quality-prd", "Cloud Functions", "quality",
                                             None, None, None)])], ignore_index=True)
    _assert_served_as_the_library(model, new, tmp_path)


def test_a_new_projects_resource_without_counterpart_is_left_for_review():
    res = organisation(skip={("stuttgart", "quality", s) for s, _ in WORKLOADS["quality"]})
    model = ResourceLabeler(seed=1).fit(res)
    new = pd.DataFrame([_row("stg-qa-func-77", "acme-stg-quality-prd", "Cloud Functions", "quality", None, None,
                             None),
                        _row("lyn-qa-func-77", "acme-lyn-quality-prd", "Cloud Functions", "quality", None, None,
                             None)])
    pred = model.predict(new)
    # the classifier's guess stays a suggestion, never applied, where the project has no labelled resource (owner:
    # the label whose analogy is trusted here) ...
    assert pred.owner_confidence.iloc[0] == 0.0
    assert isinstance(pred.owner_predicted.iloc[0], str)
    # ... not where the project's labelled resources say who and which cost center is usual there
    assert pred.owner_confidence.iloc[1] > 0.5
    labelled, review = model.apply(new)
    assert not labelled.owner_applied.iloc[0] and labelled.owner_applied.iloc[1]


def test_the_training_step_says_in_one_sentence_that_the_labels_are_too_few(tmp_path):
    from finops_ml.config import Config
    from finops_ml.training.steps import train_labeler_step

    # an export where no resource carries owner / cost_center / plant
    organisation().assign(owner=None, cost_center=None, plant=None, first_day="2026-01-01").to_parquet(
        tmp_path / "resources.parquet")
    result = train_labeler_step(str(tmp_path / "resources.parquet"), "", Config(), str(tmp_path / "m"),
                                str(tmp_path / "e"))
    reason = result["not_trained_reason"]  # the step writes why, fails its gates, and the run carries on
    assert result["trained"] is False and result["passed"] is False
    assert reason.count(". ") == 0 and "owner on 0 (0 distinct), cost_center on 0" in reason
    assert not (tmp_path / "m" / "model.joblib").exists()


def test_the_prediction_server_weighs_an_instances_own_labels_as_the_library_does(tmp_path):
    res = organisation()
    model = ResourceLabeler(seed=1).fit(res)
    # a resource of a Lyon project whose own cost center is Stuttgart's: the project's agreed plant is not forced on it
    new = pd.DataFrame([_row("x-77", "acme-lyn-mes-prd", "Cloud SQL", "mes", None, "cc-4220", None),
                        _row("x-78", "acme-lyn-mes-prd", "Cloud SQL", "mes", None, None, None)])
    _assert_served_as_the_library(model, new, tmp_path)


def test_the_project_prior_weighs_the_classifier_by_the_projects_own_labels():
    proba = np.array([[0.5, 0.5, 0.0], [0.6, 0.4, 0.0]])
    counts = {"p1": {"b": 3}, "p2": {"zz-unknown": 5}}
    out = labeler.with_project_prior(proba, ["a", "b", "c"], ["p1", "p2"], counts)
    # p1: a x 1, b x 4 (Laplace), c stays impossible
    assert np.allclose(out[0], [0.2, 0.8, 0.0])
    # p2's labels are none the classifier knows: a flat prior, the classifier as it was
    assert np.allclose(out[1], proba[1])
    assert labeler.project_label_counts(organisation(), "plant")["acme-lyn-mes-prd"] == {"lyon": 12}


def test_the_plant_a_name_says_is_taken_over_the_classifiers():
    res = organisation()
    model = ResourceLabeler(("plant", "owner"), seed=1).fit(res)
    assert model.name_precision_ == 1.0  # every labelled name with an alias says its own plant
    new = pd.DataFrame([_row(name, "acme-corp-data-platform", "BigQuery", "data-platform", None, None, None)
                        for name in ("pnq-lake-dwh-99", "x-99", "corp-lake-dwh-99")])
    pred, conf = model.plant_by_name("plant", new, np.array(["global", "global", "global"], dtype=object),
                                     np.array([0.7, 0.7, 0.95]))
    assert pred.tolist() == ["pune", "global", "global"] and conf.tolist() == [1.0, 0.7, 1.0]
    # not a label a name says
    assert model.plant_by_name("owner", new, pred, conf)[0] is pred


def test_a_shared_projects_resource_gets_the_cost_center_of_its_plant_there():
    res = organisation()
    res = pd.concat([res] + [pd.DataFrame([_row(f"{alias}-lake-dwh-{n:02d}", "acme-corp-data-platform", "BigQuery",
                                                "data-platform", "n_fischer", cc, plant) for n in range(1, 3)])
                             for alias, cc, plant in (("lyn", "cc-4120", "lyon"), ("stg", "cc-4220", "stuttgart"))],
                    ignore_index=True)
    model = ResourceLabeler(("cost_center",), seed=1).fit(res)
    assert "acme-corp-data-platform" not in model.project_values_["cost_center"]  # 6 corp, 3 lyon, 3 stuttgart
    new = pd.DataFrame([_row("lyn_dwh_lake_77", "acme-corp-data-platform", "BigQuery", "data-platform", None, None,
                             None),
                        _row("x-99", "acme-corp-data-platform", "BigQuery", "data-platform", None, None, "stuttgart"),
                        _row("x-98", "acme-corp-data-platform", "BigQuery", "data-platform", None, None, None)])
    pred, conf = model.cost_center_by_plant("cost_center", new, np.array(["cc-9010"] * 3, dtype=object),
                                            np.array([0.5] * 3))
    # by its name's plant, by its own plant label; a resource of no known plant is left to the classifier
    assert pred.tolist() == ["cc-4120", "cc-4220", "cc-9010"] and conf.tolist() == [1.0, 1.0, 0.5]


def test_a_stronger_project_prior_raises_the_projects_own_shares_to_its_power():
    proba = np.array([[0.5, 0.5, 0.0]])
    out = labeler.with_project_prior(proba, ["a", "b", "c"], ["p1"], {"p1": {"b": 3}}, strength=2.0)
    assert np.allclose(out[0], [1 / 17, 16 / 17, 0.0])  # a x 1, b x 4^2


class _Fixed:
    classes_ = np.array(["a", "b"])


def test_the_prior_strength_is_chosen_out_of_fold_on_the_labelled_resources(monkeypatch):
    # 10 projects whose 4 resources are all owned by b; a classifier that says a at 0.8 is outweighed by the
    # project's share of b (~3 other resources: 4 x 0.2 ties 1 x 0.8 at strength 1) only with a stronger prior
    res = pd.DataFrame({"project_id": [f"p{i}" for i in range(10) for _ in range(4)], "owner": "b"})
    monkeypatch.setattr(labeler, "_fit_target", lambda train, target, seed: (_Fixed(), None))
    monkeypatch.setattr(labeler, "_target_proba", lambda m, a, test, t: np.tile([0.8, 0.2], (len(test), 1)))
    assert labeler.prior_strength(res, "owner", seed=0) > 1.0
    # a classifier already right: no strength does better, the plain prior stays
    monkeypatch.setattr(labeler, "_target_proba", lambda m, a, test, t: np.tile([0.2, 0.8], (len(test), 1)))
    assert labeler.prior_strength(res, "owner", seed=0) == labeler.PRIOR_STRENGTH
    # too few labelled resources to judge: the plain prior
    assert labeler.prior_strength(res.head(12), "owner", seed=0) == labeler.PRIOR_STRENGTH


def test_a_labeler_pickled_before_the_prior_strength_weighs_the_project_as_before():
    res = organisation()
    model = ResourceLabeler(("owner",), seed=1).fit(res)
    assert model.prior_strength_["owner"] in labeler.PRIOR_STRENGTHS
    new = res.head(6).assign(owner=None)
    model.prior_strength_ = {"owner": 1.0}
    plain = model.predict(new)
    del model.prior_strength_
    assert model.strength("owner") == 1.0
    pd.testing.assert_frame_equal(model.predict(new), plain)
