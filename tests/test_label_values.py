"""Carried label values brought to one spelling before the labeler learns from them."""

from __future__ import annotations

import pandas as pd
import pytest

from finops_ml.models.label_values import canonical_labels
from finops_ml.models.labeler import project_consensus

pytestmark = pytest.mark.unit


def _resources(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["resource_name", "project_id", "owner", "cost_center", "plant"])


def test_spellings_of_one_value_become_the_most_common_one():
    res = _resources([(f"r{i}", "p1", "c_dubois_at_acme_com", "cc-4110", "lyon") for i in range(6)]
                     + [("r6", "p1", "c_dubois", "cc4110", "lyon"), ("r7", "p1", "C_Dubois@acme.com", "CC_4110", None)])
    fixed, fixes = canonical_labels(res, ["owner", "cost_center", "plant"])
    assert set(fixed.owner) == {"c_dubois_at_acme_com"} and set(fixed.cost_center) == {"cc-4110"}
    assert fixed.plant.isna().sum() == 1  # a missing label stays missing
    assert sorted(fixes.carried) == sorted(["c_dubois", "C_Dubois@acme.com", "cc4110", "CC_4110"])


def test_a_rare_plant_alias_becomes_its_projects_value_but_a_rare_owner_does_not():
    rows = [(f"l{i}", "acme-lyn-mes", f"o{i % 3}", "cc-4110", "lyon") for i in range(20)]
    rows += [(f"s{i}", "acme-stg-mes", f"o{i % 3 + 3}", "cc-4210", "stuttgart") for i in range(20)]
    rows += [("l20", "acme-lyn-mes", "someone_new", "cc-4110", "lyn"), ("s20", "acme-stg-mes", "o3", "cc-4210", "stg")]
    fixed, fixes = canonical_labels(_resources(rows), ["owner", "cost_center", "plant"])
    assert fixed.set_index("resource_name").plant[["l20", "s20"]].tolist() == ["lyon", "stuttgart"]
    assert fixed.set_index("resource_name").owner["l20"] == "someone_new"
    assert set(fixes.label) == {"plant"}


def test_a_rare_value_in_a_mixed_project_is_left_alone():
    rows = [(f"d{i}", "acme-corp-dp", "o1", "cc-9010", ["lyon", "stuttgart"][i % 2]) for i in range(10)]
    rows += [(f"l{i}", "acme-lyn-mes", "o2", "cc-4110", "lyon") for i in range(20)]
    rows += [("d10", "acme-corp-dp", "o1", "cc-9010", "global")]
    fixed, _ = canonical_labels(_resources(rows), ["plant"])
    assert fixed.set_index("resource_name").plant["d10"] == "global"


def test_project_consensus_outvotes_a_wrong_carried_label_only_where_the_project_agrees():
    known = _resources([(f"r{i}", "p1", "o", "cc", "lyon") for i in range(9)] + [("r9", "p1", "o", "cc", "pune")]
                       + [("m0", "mixed", "o", "cc", "lyon"), ("m1", "mixed", "o", "cc", "pune")])
    assert project_consensus(known, "plant") == {"p1": ("lyon", 0.9)}
