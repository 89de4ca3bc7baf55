"""Ingest: read a source -> validate (quarantine bad records with a reason) -> event ids -> dedupe -> reconcile.

Outputs in the target directory, each replaced only when the ingest succeeds:
  events.parquet        the events table (export shape + event_id); an existing table is merged with the new
                        events, so re-ingesting the same window adds nothing
  quarantine.jsonl      one line per rejected record: ingest_id, source, location (line, row or
                        partition:offset), reason, the raw record; each ingest appends its own lines
  ingest_summary.json   read = rows (new events) + quarantined + duplicates; cost_by_invoice_month and the
                        reconciliation against control totals are those of the resulting events table

Validation and event ids are computed per batch by DuckDB over Arrow (no Python loop over rows); batches stream
through a staging file, and the dedupe runs in DuckDB, so memory stays bounded whatever the source's size.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from finops_ml.data.events import ARROW_SCHEMA, COST_TYPES, CURRENCIES, EXPORT_SCHEMA, conform_array, parse_event
from finops_ml.data.sources import Rejected, SourceBatch, read_events
from finops_ml.data.warehouse import duckdb_session
from finops_ml.errors import FinopsError
from finops_ml.fileio import atomic_path, exclusive_lock, write_json

# The same parts, in the same order, as finops_ml.data.events.event_id (which the tests compare with this).
EVENT_ID_SQL = "md5(concat_ws('|', " + ", ".join([
    "billing_account_id", "service.id", "sku.id", "coalesce(project.id, '')",
    "coalesce(nullif(resource.global_name, ''), nullif(resource.name, ''), '')", "coalesce(location.location, '')",
    "epoch_us(usage_start_time)", "epoch_us(usage_end_time)", "cost_type", "invoice.month",
    "coalesce(adjustment_info.id, '')", "epoch_us(export_time)",
]) + "))"

_CURRENCY_LIST = ", ".join(f"'{c}'" for c in sorted(CURRENCIES))
_COST_TYPE_LIST = ", ".join(f"'{c}'" for c in COST_TYPES)
REASON_SQL = f"""CASE
  WHEN billing_account_id IS NULL OR billing_account_id = '' THEN 'billing_account_id: missing'
  WHEN service IS NULL OR coalesce(service.id, '') = '' OR coalesce(service.description, '') = ''
    THEN 'service: id and description are required'
  WHEN sku IS NULL OR coalesce(sku.id, '') = '' OR coalesce(sku.description, '') = ''
    THEN 'sku: id and description are required'
  WHEN usage_start_time IS NULL THEN 'usage_start_time: missing'
  WHEN usage_end_time IS NULL THEN 'usage_end_time: missing'
  WHEN export_time IS NULL THEN 'export_time: missing'
  WHEN cost IS NULL OR isnan(cost) OR isinf(cost) THEN 'cost: missing or not a finite number'
  WHEN currency IS NULL THEN 'currency: missing'
  WHEN currency NOT IN ({_CURRENCY_LIST}) THEN 'record: unknown currency ''' || currency || ''''
  WHEN currency_conversion_rate IS NULL OR NOT currency_conversion_rate > 0
    THEN 'currency_conversion_rate: must be greater than 0'
  WHEN invoice IS NULL OR invoice.month IS NULL OR NOT regexp_full_match(invoice.month, '\\d{{4}}(0[1-9]|1[0-2])')
    THEN 'invoice.month: must be YYYYMM'
  WHEN cost_type IS NULL OR cost_type NOT IN ({_COST_TYPE_LIST})
    THEN 'cost_type: must be one of {", ".join(COST_TYPES)}'
  WHEN usage_end_time < usage_start_time THEN 'record: usage_end_time is before usage_start_time'
  WHEN cost_type = 'regular' AND usage.amount < 0 THEN 'record: negative usage.amount on a regular line item'
  WHEN len(list_filter(credits, c -> c.amount IS NULL OR NOT c.amount <= 0)) > 0
    THEN 'credits: every credit amount must be a number <= 0'
END"""
NET_COST_USD_SQL = "(cost + IFNULL(list_sum(list_transform(credits, c -> c.amount)), 0)) / currency_conversion_rate"


def conform(table: pa.Table) -> pa.Table:
    """A reader's table in EXPORT_SCHEMA; raises pa.ArrowInvalid when a value cannot be cast."""
    n = table.num_rows
    columns = [conform_array(table.column(f.name), f.type) if f.name in table.column_names
               else pa.nulls(n, f.type) for f in EXPORT_SCHEMA]
    return pa.Table.from_arrays(columns, schema=EXPORT_SCHEMA)


def _rowwise(batch: SourceBatch) -> SourceBatch:
    """Slow path for a batch Arrow cannot cast: validate each row with the pydantic schema."""
    rows, keep, rejected = [], [], list(batch.rejected)
    for i, record in enumerate(batch.table.to_pylist()):
        row, reason = parse_event(record)
        if reason:
            rejected.append(Rejected(batch.source, batch.location(i), reason, record))
        else:
            row.pop("event_id")
            rows.append(row)
            keep.append(batch.location(i))
    return SourceBatch(pa.Table.from_pylist(rows, schema=EXPORT_SCHEMA), rejected, batch.source, locations=keep)


class _Quarantine:
    def __init__(self, file, ingest_id: str):
        self.file, self.ingest_id, self.count, self.reasons = file, ingest_id, 0, Counter()

    def add(self, source: str, location: str, reason: str, record) -> None:
        self.count += 1
        self.reasons[reason.split(":")[0]] += 1
        self.file.write(json.dumps({"ingest_id": self.ingest_id, "source": source, "location": location,
                                    "reason": reason, "record": strict_json(record)},
                                   default=str, allow_nan=False) + "\n")


def strict_json(value):
    """`value` with the floats strict JSON has no token for (NaN, Infinity) as their text: a quarantine line must
    parse with any JSON parser."""
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)  # 'NaN', 'Infinity', '-Infinity'
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def validate_batch(con: duckdb.DuckDBPyConnection, batch: SourceBatch) -> tuple[pa.Table | None, list[Rejected]]:
    """The batch's valid rows with their event ids (EXPORT_SCHEMA with `event_id` in front; None when there are
    none), and every other record as a `Rejected` with its location and reason: the reader's own rejects first, then
    the rows the schema refuses. Ingest quarantines the rejects; the export bridge dead-letters them."""
    try:
        table = conform(batch.table)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        batch = _rowwise(batch)
        table = batch.table
    rejected = list(batch.rejected)
    if table.num_rows == 0:
        return None, rejected
    # Only the id and the verdict come back from DuckDB: the rows stay in Arrow.
    con.register("batch", table)
    checked = con.execute(f"SELECT {EVENT_ID_SQL} AS event_id, {REASON_SQL} AS reason FROM batch").arrow()
    checked = checked.read_all() if hasattr(checked, "read_all") else checked
    con.unregister("batch")
    invalid = pa.compute.is_valid(checked.column("reason"))
    if pa.compute.any(invalid).as_py():
        for i in pa.compute.indices_nonzero(invalid).to_pylist():
            rejected.append(Rejected(batch.source, batch.location(i), checked.column("reason")[i].as_py(),
                                     table.slice(i, 1).to_pylist()[0]))
    good = table.add_column(0, "event_id", checked.column("event_id").cast(pa.string()))
    good = good.filter(pa.compute.invert(invalid))
    return (good if good.num_rows else None), rejected


def require_billing_rows(summary: dict) -> dict:
    """The summary of an ingest that left billing rows to train on; else one sentence saying so."""
    if not summary["table_rows"]:
        raise FinopsError(f"Source {summary['source']} holds no billing rows ({summary['read']:,} records read, "
                          f"{summary['quarantined']:,} quarantined: see {summary['quarantine']}); give a billing "
                          "export with line items.")
    return summary


def read_control_totals(path: str | Path) -> dict[str, float]:
    """Net cost per invoice month from a CSV with columns invoice_month, net_cost."""
    path = Path(path)
    if not path.exists():
        raise FinopsError(f"Control totals file {path} does not exist.")
    df = pd.read_csv(path, dtype={"invoice_month": str})
    if not {"invoice_month", "net_cost"} <= set(df.columns):
        raise FinopsError(f"Control totals file {path} needs the columns invoice_month and net_cost.")
    return {str(m): float(v) for m, v in zip(df.invoice_month, df.net_cost)}


def reconcile(cost_by_month: dict[str, float], control_totals: str | Path) -> dict:
    """Differences, to the cent, between net cost per invoice month and the control totals (the invoice)."""
    control = read_control_totals(control_totals)
    months = sorted(set(control) | set(cost_by_month))
    per_month = {m: round(cost_by_month.get(m, 0.0) - control.get(m, 0.0), 2) for m in months}
    return {"control_totals": str(control_totals), "diff_by_invoice_month": per_month,
            "diff": round(sum(abs(v) for v in per_month.values()), 2)}


def ingest(source: str, out_dir: str | Path, control_totals: str | Path | None = None, **source_options) -> dict:
    """Read, validate, dedupe and write the events table; return the ingest summary."""
    started = time.perf_counter()
    source = str(source)
    if control_totals:
        read_control_totals(control_totals)  # a bad control file fails before any work
    out_dir = Path(out_dir)
    with exclusive_lock(out_dir, "ingest"):
        return _ingest_locked(source, out_dir, control_totals, started, **source_options)


def _remove_leftovers(out_dir: Path) -> None:
    """Work files of an ingest that was killed (SIGKILL leaves them): only the lock holder may remove them."""
    for leftover in out_dir.glob(".ingest.*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in out_dir.glob(".*.partial"):
        leftover.unlink(missing_ok=True)


def _ingest_locked(source: str, out_dir: Path, control_totals, started: float, **source_options) -> dict:
    _remove_leftovers(out_dir)
    events_path = out_dir / "events.parquet"
    quarantine_path = out_dir / "quarantine.jsonl"
    ingest_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix=".ingest.", dir=out_dir))
    try:
        staging = work / "staging.parquet"
        read = staged = 0
        with duckdb_session(work) as con, atomic_path(quarantine_path) as q_tmp, open(q_tmp, "w") as q_file:
            if quarantine_path.exists():  # earlier ingests' records stay; this one's are appended
                with open(quarantine_path) as previous:
                    shutil.copyfileobj(previous, q_file)
            quarantine = _Quarantine(q_file, ingest_id)
            writer = pq.ParquetWriter(staging, ARROW_SCHEMA)
            # Batch k is written on a second thread while batch k+1 is read and checked (Arrow and DuckDB release
            # the GIL); at most one write is in flight, and its error surfaces here.
            with ThreadPoolExecutor(max_workers=1) as pool:  # waits for the write in flight, even on error
                pending = None
                for batch in read_events(source, **source_options):
                    read += batch.table.num_rows + len(batch.rejected)
                    good, rejected = validate_batch(con, batch)
                    for r in rejected:
                        quarantine.add(r.source, r.location, r.reason, r.record)
                    if good is None:
                        continue
                    if pending is not None:
                        pending.result()
                    pending = pool.submit(writer.write_table, good)
                    staged += good.num_rows
                if pending is not None:
                    pending.result()
            writer.close()

            existing = pq.ParquetFile(events_path).metadata.num_rows if events_path.exists() else 0
            staged_ids = f"SELECT event_id FROM read_parquet('{staging.as_posix()}')"
            repeated = con.execute(f"SELECT count(*) - count(DISTINCT event_id) FROM ({staged_ids})").fetchone()[0]
            table_tmp = work / "events.parquet"
            if not existing and not repeated:
                os.replace(staging, table_tmp)  # nothing to dedupe: the staged rows are the table
            else:
                union = f"SELECT *, 1 AS _src FROM read_parquet('{staging.as_posix()}')"
                if existing:
                    union = f"SELECT *, 0 AS _src FROM read_parquet('{events_path.as_posix()}') UNION ALL " + union
                con.execute(f"""COPY (SELECT * EXCLUDE (_src) FROM ({union})
                                QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY _src) = 1)
                                TO '{table_tmp.as_posix()}' (FORMAT PARQUET, ROW_GROUP_SIZE 256000)""")
            table_rows = con.execute(f"SELECT count(*) FROM read_parquet('{table_tmp.as_posix()}')").fetchone()[0]
            by_month = dict(con.execute(f"""SELECT invoice.month, round(sum({NET_COST_USD_SQL}), 2)
                                            FROM read_parquet('{table_tmp.as_posix()}') GROUP BY 1 ORDER BY 1""")
                            .fetchall())
            os.replace(table_tmp, events_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    new_rows = table_rows - existing
    reconciliation = reconcile(by_month, control_totals) if control_totals else None
    summary = {
        "ingest_id": ingest_id,
        "source": source,
        "read": read,
        "rows": new_rows,
        "quarantined": quarantine.count,
        "duplicates": staged - new_rows,
        "table_rows": table_rows,
        "quarantine_reasons": dict(quarantine.reasons),
        "cost_by_invoice_month": by_month,
        "total_net_cost": round(sum(by_month.values()), 2),
        "reconciliation": reconciliation,
        "reconciliation_diff": reconciliation["diff"] if reconciliation else None,
        "seconds": round(time.perf_counter() - started, 2),
        "events": str(events_path),
        "quarantine": str(out_dir / "quarantine.jsonl"),
    }
    write_json(out_dir / "ingest_summary.json", summary)
    return summary
