"""Feature views: the SQL in `feature_defs/` run by DuckDB over the events table, or by BigQuery over an export table.

The SQL files are written in DuckDB's dialect, kept to the part of it that sqlglot transpiles to valid BigQuery
(`feature_sql_for(name, "bigquery", table)`): `UNNEST(x) AS t(c)` becomes `UNNEST(x) AS c`, `IFNULL` becomes
`COALESCE`; `ARRAY_AGG(x ORDER BY y)`, `STRING_AGG(DISTINCT x, sep ORDER BY x)`, `CAST(ts AS DATE)` (the UTC day
in both: DuckDB runs with TimeZone UTC here), `NULLIF` and `COUNT(DISTINCT ...)` pass unchanged. The aggregates'
ORDER BY spells out NULLS FIRST (BigQuery's only order there; DuckDB's default is NULLS LAST), so sqlglot has
nothing it cannot translate and both engines order alike.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import Iterator

import duckdb
import pandas as pd
import sqlglot
from sqlglot import exp

from finops_ml.errors import FinopsError

# feature_defs/ ships as the package finops_ml.feature_defs (pyproject.toml).
FEATURE_DIR = Path(str(files("finops_ml.feature_defs")))
# series_latest: what the online feature store serves (finops_ml.platform.featurestore); the pipeline reads the others.
FEATURE_VIEWS = ("daily_cost", "resource_daily_cost", "resources", "series_latest")
MEMORY_LIMIT = "3GB"


def feature_sql(name: str) -> str:
    path = FEATURE_DIR / f"{name}.sql"
    if not path.exists():
        raise FinopsError(f"Feature view {name} has no SQL file {path}; known views: {', '.join(FEATURE_VIEWS)}.")
    return path.read_text()


def run_feature_view(name: str, events_path: str | Path) -> pd.DataFrame:
    """Run one feature view over an events Parquet file (or glob) and return its rows."""
    with duckdb_session() as con:
        con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{Path(events_path).as_posix()}')")
        return con.execute(feature_sql(name)).df()


# A standard usage cost export has no `resource` column: the views read it as a NULL record there.
_NULL_RESOURCE = "CAST(NULL AS STRUCT<name STRING, global_name STRING>) AS resource"
_BQ_TABLE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:.\-]*\.[A-Za-z0-9_]+\.[^`.\s]+$")


@contextmanager
def duckdb_session(spill_dir: Path | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """DuckDB with bounded memory: past `MEMORY_LIMIT` it spills to `spill_dir` (default: a temporary directory,
    removed afterwards, so nothing is left beside the outputs)."""
    own = spill_dir is None
    spill_dir = Path(tempfile.mkdtemp(prefix="finops-duckdb-")) if own else spill_dir
    con = duckdb.connect()
    try:
        con.execute("SET threads TO 2")
        con.execute("SET TimeZone = 'UTC'")  # CAST(timestamptz AS DATE) takes the UTC day, as BigQuery does
        con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
        con.execute("SET preserve_insertion_order = false")
        # No terminal progress bar: in a pipeline step it only fills the log (the aborts at exit it was once blamed
        # for come from native teardown: finops_ml/process.py). In Jupyter without ipywidgets it is off already, and
        # setting it at all raises: set it only when it is on.
        if con.execute("SELECT current_setting('enable_progress_bar')").fetchone()[0]:
            con.execute("SET enable_progress_bar = false")
        con.execute(f"SET temp_directory = '{spill_dir.as_posix()}'")
        yield con
    finally:
        con.close()
        if own:
            shutil.rmtree(spill_dir, ignore_errors=True)


def export_feature_view(name: str, events_path: str | Path, out_path: str | Path) -> int:
    """Run one feature view over an events Parquet file and write its rows to Parquet; return the row count.

    DuckDB writes the result itself (no round trip through pandas), so building features costs what the query costs.
    """
    with duckdb_session() as con:
        con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{Path(events_path).as_posix()}')")
        con.execute(f"COPY ({feature_sql(name)}) TO '{Path(out_path).as_posix()}' (FORMAT PARQUET)")
        return con.execute(f"SELECT count(*) FROM read_parquet('{Path(out_path).as_posix()}')").fetchone()[0]


def feature_sql_for(name: str, dialect: str = "duckdb", table: str = "events", null_resource: bool = False) -> str:
    """A feature view's SQL for `dialect` ("duckdb" or "bigquery") reading `table` instead of `events`.

    For DuckDB over the `events` view it is the file as it is. For BigQuery, `table` is `project.dataset.table`
    (backticks optional) and the text is sqlglot's transpilation; `null_resource` reads a standard export (no
    `resource` column) through `(SELECT *, NULL resource FROM table)`.
    """
    if dialect not in ("duckdb", "bigquery"):
        raise FinopsError(f"Unknown SQL dialect '{dialect}' for feature view {name}; use duckdb or bigquery.")
    sql = feature_sql(name)
    if dialect == "duckdb" and table == "events" and not null_resource:
        return sql
    if dialect == "bigquery":
        table = table.strip("`")
        if not _BQ_TABLE.match(table):
            raise FinopsError(f"BigQuery table '{table}' is not of the form project.dataset.table.")
        source = f"`{table}`"
    else:
        source = table
    if null_resource:
        source = f"(SELECT *, {_NULL_RESOURCE} FROM {source})"
    replacement = sqlglot.parse_one(f"SELECT * FROM {source} AS events", read=dialect).args["from_"].this
    tree = sqlglot.parse_one(sql, read="duckdb")
    for node in list(tree.find_all(exp.Table)):
        if node.name == "events" and not node.db:
            node.replace(replacement.copy())
    return tree.sql(dialect=dialect, pretty=True)


def run_feature_view_bigquery(name: str, table: str, client) -> pd.DataFrame:
    """Run one feature view in BigQuery over a billing export table: only the view's rows come back.

    `table` is `project.dataset.table` (or `bq://project.dataset.table`); `client` a google.cloud.bigquery.Client.
    The table's schema (one tables.get) tells a standard export, read with a NULL `resource`, from a detailed one.
    """
    from google.api_core import exceptions as gexc

    table = table.removeprefix("bq://").strip("`")
    try:
        columns = {f.name for f in client.get_table(table).schema}
        sql = feature_sql_for(name, "bigquery", table, null_resource="resource" not in columns)
        rows = client.query(sql).result().to_arrow(create_bqstorage_client=False)
    except gexc.GoogleAPICallError as exc:
        raise FinopsError(f"Feature view {name} failed in BigQuery on {table}: {exc.message}") from None
    # DATE columns as datetime64 and arrays as numpy arrays, like DuckDB's .df() of the same view
    return rows.to_pandas(date_as_object=False)
