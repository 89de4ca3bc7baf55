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
