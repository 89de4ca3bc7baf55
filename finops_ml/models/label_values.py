"""One spelling per label value: carried labels as people type them ("lyon", "lyn", "cc-4110", "cc4110",
"c_dubois_at_acme-industrial_com", "c_dubois") mapped to the spelling most resources carry, before the labeler
learns from them and before compliance is counted (a FinOps team wants them fixed, not learnt as other values).

Two rules, from the carried labels alone (no truth):
- the same value once case, separators and, for owners, the e-mail domain are set aside: the most common spelling;
- a rare plant or cost center value (carried by fewer than `RARE_SHARE` of the resources that the value of a typical
  labelled resource has) whose
  resources sit in projects that mostly carry one common value of that label: that value (an alias, "lyn" for
  "lyon"). Owners are left to the first rule: a rare owner is as likely a new colleague as a misspelling.
"""

from __future__ import annotations

import re
from collections import Counter

import pandas as pd

SPELLING_TARGETS = ("owner", "cost_center", "plant")
ALIAS_TARGETS = ("cost_center", "plant")
RARE_SHARE = 0.25  # a value carried by fewer resources than this share of the median value's count is rare ...
PROJECT_MAJORITY = 0.6  # ... and becomes its projects' common value when that value has this share of them
ALIAS_OUTNUMBER = 3  # ... and outnumbers the rare value this many times over
FIX_COLUMNS = ["resource_name", "project_id", "label", "carried", "canonical"]


def _key(target: str, value: str) -> str:
    if target == "owner":
        value = re.split(r"_at_|@", value)[0]
    return re.sub(r"[^a-z0-9]+", "", value.lower())


def spelling_map(values: pd.Series, target: str) -> dict[str, str]:
    """carried value -> the most common spelling of the same key (only the values that change)."""
    counts = Counter(v for v in values.dropna())
    by_key: dict[str, list[str]] = {}
    for v in counts:
        by_key.setdefault(_key(target, v), []).append(v)
    out = {}
    for spellings in by_key.values():
        best = max(spellings, key=lambda v: (counts[v], v))
        out.update({v: best for v in spellings if v != best})
    return out


def alias_map(resources: pd.DataFrame, target: str) -> dict[str, str]:
    """rare value -> the common value its resources' projects mostly carry."""
    known = resources[resources[target].notna()]
    counts = known[target].value_counts()
    if len(counts) < 2:
        return {}
    typical = float(known[target].map(counts).median())  # the count of the value a typical resource carries
    rare = set(counts[counts < RARE_SHARE * typical].index)
    common = set(counts.index) - rare
    out = {}
    for value in sorted(rare):
        projects = set(known.project_id[known[target] == value])
        others = known[known.project_id.isin(projects) & (known[target] != value)][target]
        if len(others):
            top, n = Counter(others).most_common(1)[0]
            # an alias is a minority in its own projects: a small legitimate value (a shared project's "global")
            # is not the stray spelling of its few neighbours
            if top in common and n / len(others) >= PROJECT_MAJORITY and n >= ALIAS_OUTNUMBER * counts[value]:
                out[value] = top
    return out


def canonical_labels(resources: pd.DataFrame, targets) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(resources with one spelling per label value, the fixes made: resource_name, project_id, label, carried,
    canonical)."""
    out = resources.copy()
    fixes = []
    for target in targets:
        if target not in out.columns:
            continue
        mapping = spelling_map(out[target], target) if target in SPELLING_TARGETS else {}
        fixed = out[target].map(lambda v: mapping.get(v, v) if isinstance(v, str) else v)
        if target in ALIAS_TARGETS:
            aliases = alias_map(out.assign(**{target: fixed}), target)
            fixed = fixed.map(lambda v: aliases.get(v, v) if isinstance(v, str) else v)
        changed = out[target].notna() & (fixed != out[target])
        fixes.append(pd.DataFrame({"resource_name": out.resource_name[changed], "project_id": out.project_id[changed],
                                   "label": target, "carried": out[target][changed], "canonical": fixed[changed]}))
        out[target] = fixed
    fixes = [f for f in fixes if len(f)]
    return out, (pd.concat(fixes, ignore_index=True) if fixes else pd.DataFrame(columns=FIX_COLUMNS))
