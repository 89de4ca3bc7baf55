"""Feature views: the SQL in `feature_defs/` run by DuckDB over the events table (BigQuery runs the same views)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd

from finops_ml.errors import FinopsError

FEATURE_DIR = Path(__file__).resolve().parent.parent / "feature_defs"
FEATURE_VIEWS = ("daily_cost", "resources")


def feature_sql(name: str) -> str:
    path = FEATURE_DIR / f"{name}.sql"
    if not path.exists():
        raise FinopsError(f"Feature view {name} has no SQL file {path}; known views: {', '.join(FEATURE_VIEWS)}.")
    return path.read_text()


def run_feature_view(name: str, events_path: str | Path) -> pd.DataFrame:
    """Run one feature view over an events Parquet file (or glob) and return its rows."""
    con = duckdb.connect()
    try:
        con.execute("SET threads TO 2")
        con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{Path(events_path).as_posix()}')")
        return con.execute(feature_sql(name)).df()
    finally:
        con.close()


def complete_daily_grid(daily: pd.DataFrame) -> pd.DataFrame:
    """Every (service, project) series on every day from its first day to the last day of the data, zeros filled."""
    daily = daily.copy()
    daily["day"] = pd.to_datetime(daily["day"])
    last = daily["day"].max()
    parts = []
    for (service, project), g in daily.groupby(["service", "project_id"], sort=True):
        idx = pd.date_range(g["day"].min(), last, freq="D")
        s = g.set_index("day")["net_cost"].reindex(idx, fill_value=0.0)
        parts.append(pd.DataFrame({"day": idx, "service": service, "project_id": project, "net_cost": s.to_numpy()}))
    return pd.concat(parts, ignore_index=True)
