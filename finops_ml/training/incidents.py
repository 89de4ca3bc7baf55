"""Anomaly incidents: the consecutive anomalous days of one cell (service x project) with one cause, merged.

The detector judges daily cells; a person acts on incidents. An incident is a run of anomalous days of the same
cell, direction and cause resource with no day missing; it carries its start, length, $ impact (actual - expected,
summed), % deviation (impact / expected), cause (resource, SKU, owner as an address), status (open when it runs
to the last day of the data) and the latest feedback verdict given on any of its days.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

INCIDENT_COLUMNS = ["incident_id", "start", "end", "days", "service", "project_id", "direction", "actual_usd",
                    "expected_usd", "impact_usd", "pct_deviation", "cause_resource", "cause_sku", "owner",
                    "cost_center", "plant", "status", "verdict", "anomaly_ids"]


def owner_address(value) -> str | None:
    """An owner label as the address it encodes: GCP label values cannot hold '@' or '.', so exports write
    `s_hoffmann_at_acme-industrial_com` for s.hoffmann@acme-industrial.com. Other values are returned as they are."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return None
    text = str(value)
    if "_at_" not in text:
        return text
    local, domain = text.split("_at_", 1)
    return f"{local.replace('_', '.')}@{domain.replace('_', '.')}"


def _text(value) -> str | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def incidents(cells: pd.DataFrame, feedback: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per incident, the largest |impact| first. `cells`: the detector's scored cells (anomaly
    CELL_COLUMNS: day, service, project_id, is_anomaly, direction, net_cost, expected, impact, cause_*);
    `feedback`: the verdicts file (anomaly_id, verdict, marked_at), optional."""
    last_day = pd.to_datetime(cells["day"]).max() if len(cells) else None
    flagged = cells[cells["is_anomaly"]].copy()
    if flagged.empty:
        return pd.DataFrame(columns=INCIDENT_COLUMNS)
    flagged["day"] = pd.to_datetime(flagged["day"])
    flagged["cause_key"] = flagged["cause_resource"].fillna("")
    flagged = flagged.sort_values(["service", "project_id", "direction", "cause_key", "day"])
    keys = ["service", "project_id", "direction", "cause_key"]
    same = (flagged[keys] == flagged[keys].shift()).all(axis=1)
    next_day = flagged["day"].diff() == pd.Timedelta(days=1)
    flagged["incident"] = (~(same & next_day)).cumsum()
    verdicts = {}
    if feedback is not None and len(feedback):
        order = feedback.sort_values("marked_at") if "marked_at" in feedback else feedback
        verdicts = dict(zip(order["anomaly_id"], order["verdict"]))
    rows = []
    for _, g in flagged.groupby("incident", sort=False):
        first = g.iloc[0]
        expected, impact = float(g["expected"].sum()), float(g["impact"].sum())
        marks = [verdicts[a] for a in g["anomaly_id"] if a in verdicts]
        rows.append({
            "incident_id": first["anomaly_id"], "start": str(g["day"].min().date()), "end": str(g["day"].max().date()),
            "days": int(len(g)), "service": first["service"], "project_id": first["project_id"],
            "direction": first["direction"], "actual_usd": round(float(g["net_cost"].sum()), 2),
            "expected_usd": round(expected, 2), "impact_usd": round(impact, 2),
            "pct_deviation": round(100.0 * impact / expected, 1) if expected > 0 else None,
            "cause_resource": _text(first.get("cause_resource")), "cause_sku": _text(first.get("cause_sku")),
            "owner": owner_address(first.get("cause_owner")), "cost_center": _text(first.get("cause_cost_center")),
            "plant": _text(first.get("cause_plant")),
            "status": "open" if g["day"].max() == last_day else "closed",
            "verdict": marks[-1] if marks else None, "anomaly_ids": list(g["anomaly_id"]),
        })
    out = pd.DataFrame(rows, columns=INCIDENT_COLUMNS)
    return out.reindex(out["impact_usd"].abs().sort_values(ascending=False, kind="stable").index).reset_index(
        drop=True)
