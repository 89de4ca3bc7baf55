"""Read a Cloud Billing export table in BigQuery: `bq://project.dataset.table`.

One metadata call (tables.get: which export columns the table has, how it is partitioned) and ONE query:

    SELECT <the table's columns that are in EXPORT_SCHEMA>
    FROM `project.dataset.table`
    WHERE TRUE
      AND _PARTITIONTIME >= TIMESTAMP_SUB(TIMESTAMP(@start_date), INTERVAL 1 DAY)  -- ingestion-time partitioned
      AND usage_start_time >= TIMESTAMP(@start_date)                                -- start_date given
      AND usage_start_time < TIMESTAMP(DATE_ADD(@end_date, INTERVAL 1 DAY))         -- end_date given (inclusive)
      AND project.id IN UNNEST(@projects)                                           -- projects given

The window is sent as typed query parameters (DATE, ARRAY<STRING>), never formatted into the SQL. The export's
partitions (`_PARTITIONTIME`) follow the export time, which is at or after the usage, so only the lower bound is
pushed onto the partitions (a day earlier: partition days are not UTC days); late line items of the window that
land in later partitions are still read. The rows come back as Arrow pages through the REST API
(`RowIterator.to_arrow_iterable`, no BigQuery Storage API) and are conformed to `EXPORT_SCHEMA`: the export's
nested columns keep their nesting, extra sub-fields (e.g. `project.ancestors`) are dropped, missing ones (a
standard export has no `resource`) are left out or null.
"""

from __future__ import annotations

import os
import re
from datetime import date
from typing import Iterator

import pyarrow as pa

from finops_ml.data.events import EXPORT_SCHEMA, conform_array
from finops_ml.data.sources import SourceBatch
from finops_ml.errors import FinopsError

# project ids may carry a domain ("example.com:proj"); datasets are [A-Za-z0-9_]; tables are looser but never
# contain a backtick, a dot or white space.
_BQ_URI = re.compile(r"^bq://(?P<project>[a-z0-9][a-z0-9:.\-]*[a-z0-9])\.(?P<dataset>[A-Za-z0-9_]+)\.(?P<table>[^`.\s]+)$")


def parse_bq_uri(source: str) -> tuple[str, str, str]:
    """(project, dataset, table) of a `bq://project.dataset.table` URI."""
    m = _BQ_URI.match(source)
    if not m:
        raise FinopsError(
            f"BigQuery source '{source}' is not of the form bq://project.dataset.table "
            "(e.g. bq://my-project.billing.gcp_billing_export_resource_v1_XXXXXX_XXXXXX_XXXXXX)."
        )
    return m["project"], m["dataset"], m["table"]


def _check_date(name: str, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise FinopsError(f"{name} '{value}' is not a date; give it as YYYY-MM-DD.") from None


def default_client(project: str):
    """A BigQuery client with Application Default Credentials (anonymous when BIGQUERY_EMULATOR_HOST is set)."""
    from google.cloud import bigquery

    if os.environ.get("BIGQUERY_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return bigquery.Client(project=project, credentials=AnonymousCredentials())
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        credentials, default_project = google.auth.default(
            scopes=["https://www.googleapis.com/auth/bigquery", "https://www.googleapis.com/auth/cloud-platform"]
        )
    except DefaultCredentialsError:
        raise FinopsError(
            "No Google Cloud credentials found for reading BigQuery; run 'gcloud auth application-default login' "
            "or set GOOGLE_APPLICATION_CREDENTIALS to a service account key file."
        ) from None
    # Jobs run (and are billed) in the caller's default project when there is one, else in the table's project.
    return bigquery.Client(project=default_project or project, credentials=credentials)


def build_query(table_id: str, columns: list[str], start: date | None, end: date | None,
                projects: list[str] | None, ingestion_partitioned: bool):
    """The SQL text and the query parameters of the export read (see the module doc)."""
    from google.cloud import bigquery

    where, params = ["TRUE"], []
    if start is not None:
        if ingestion_partitioned:
            where.append("_PARTITIONTIME >= TIMESTAMP_SUB(TIMESTAMP(@start_date), INTERVAL 1 DAY)")
        where.append("usage_start_time >= TIMESTAMP(@start_date)")
        params.append(bigquery.ScalarQueryParameter("start_date", "DATE", start))
    if end is not None:
        where.append("usage_start_time < TIMESTAMP(DATE_ADD(@end_date, INTERVAL 1 DAY))")
        params.append(bigquery.ScalarQueryParameter("end_date", "DATE", end))
    if projects:
        where.append("project.id IN UNNEST(@projects)")
        params.append(bigquery.ArrayQueryParameter("projects", "STRING", list(projects)))
    sql = (
        "SELECT " + ", ".join(f"`{c}`" for c in columns)
        + f"\nFROM `{table_id}`\nWHERE " + "\n  AND ".join(where)
    )
    return sql, params


def conform_to_export(table: pa.Table) -> pa.Table:
    """The table's EXPORT_SCHEMA columns, in EXPORT_SCHEMA order and types (columns it lacks stay absent)."""
    names, arrays = [], []
    for field in EXPORT_SCHEMA:
        if field.name not in table.column_names:
            continue
        col = table.column(field.name)
        try:
            array = conform_array(col, field.type)
        except (TypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise FinopsError(
                f"Column '{field.name}' of the BigQuery table has type {col.type}, which does not match the "
                f"billing export's {field.type} ({exc}); is this a Cloud Billing export table?"
            ) from None
        names.append(field.name)
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=pa.schema([EXPORT_SCHEMA.field(n) for n in names]))


def read_bigquery(source: str, start_date: str | None = None, end_date: str | None = None,
                  projects: list[str] | None = None, client=None, batch_rows: int = 100_000) -> Iterator[SourceBatch]:
    """Batches of export rows from a BigQuery billing export table (standard or detailed usage cost).

    `start_date` and `end_date` (YYYY-MM-DD, both inclusive) bound `usage_start_time` (UTC); `projects` keeps
    the line items of these project ids. `client` is a `google.cloud.bigquery.Client` (default: one with
    Application Default Credentials).
    """
    from google.api_core import exceptions as gexc
    from google.cloud import bigquery

    project, dataset, table = parse_bq_uri(source)
    start, end = _check_date("start_date", start_date), _check_date("end_date", end_date)
    if start and end and end < start:
        raise FinopsError(f"end_date {end} is before start_date {start}.")
    if batch_rows < 1:
        raise FinopsError(f"batch_rows must be at least 1, not {batch_rows}.")
    client = client if client is not None else default_client(project)
    table_id = f"{project}.{dataset}.{table}"
    try:
        meta = client.get_table(table_id)
        present = {f.name for f in meta.schema}
        columns = [f.name for f in EXPORT_SCHEMA if f.name in present]
        missing = [c for c in ("billing_account_id", "service", "sku", "usage_start_time", "cost") if c not in present]
        if missing:
            raise FinopsError(
                f"BigQuery table {table_id} lacks the billing export column(s) {', '.join(missing)}; give a "
                "standard (gcp_billing_export_v1_*) or detailed (gcp_billing_export_resource_v1_*) export table."
            )
        tp = meta.time_partitioning
        ingestion_partitioned = tp is not None and tp.field is None
        sql, params = build_query(table_id, columns, start, end, projects, ingestion_partitioned)
        job = client.query(sql, job_config=bigquery.QueryJobConfig(query_parameters=params))
        rows = job.result(page_size=batch_rows)
        n = 0
        for page in rows.to_arrow_iterable(bqstorage_client=None):
            batch = conform_to_export(pa.Table.from_batches([page]) if isinstance(page, pa.RecordBatch) else page)
            yield SourceBatch(table=batch, rejected=[], source=source, first_location=n + 1)
            n += batch.num_rows
    except gexc.NotFound as exc:
        raise FinopsError(f"BigQuery table {table_id} was not found ({exc.message}); check the bq:// URI.") from None
    except gexc.Forbidden as exc:
        raise FinopsError(
            f"Access to BigQuery table {table_id} was denied ({exc.message}); the account needs "
            "roles/bigquery.dataViewer on the dataset and roles/bigquery.jobUser on the job's project."
        ) from None
    except gexc.GoogleAPICallError as exc:
        raise FinopsError(f"Reading BigQuery table {table_id} failed: {exc.message}") from None


def summarise_bigquery(source: str, client=None) -> dict:
    """Line items and net cost (USD) per invoice month of an export table, aggregated in BigQuery (one query).

    What the pipeline keeps of a BigQuery source instead of pulling every row: the feature views run in BigQuery
    too (`finops_ml.data.warehouse.run_feature_view_bigquery`), and these totals reconcile with the invoice.
    """
    from google.api_core import exceptions as gexc

    project, dataset, table = parse_bq_uri(source)
    client = client if client is not None else default_client(project)
    table_id = f"{project}.{dataset}.{table}"
    sql = (f"SELECT invoice.month AS invoice_month, COUNT(*) AS line_items, SUM((cost + IFNULL((SELECT SUM(c.amount) "
           f"FROM UNNEST(credits) AS c), 0)) / currency_conversion_rate) AS net_cost FROM `{table_id}` "
           "GROUP BY invoice_month ORDER BY invoice_month")
    try:
        rows = list(client.query(sql).result())
    except gexc.NotFound as exc:
        raise FinopsError(f"BigQuery table {table_id} was not found ({exc.message}); check the bq:// URI.") from None
    except gexc.GoogleAPICallError as exc:
        raise FinopsError(f"Summarising BigQuery table {table_id} failed: {exc.message}") from None
    return {"rows": int(sum(r["line_items"] for r in rows)),
            "cost_by_invoice_month": {r["invoice_month"]: round(float(r["net_cost"]), 2) for r in rows}}
