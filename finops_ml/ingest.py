"""Ingest: parse -> validate (quarantine bad records with a reason) -> dedupe by event id -> reconcile -> Parquet.

Outputs in the target directory, written so that a crash leaves no file that looks complete:
  events.parquet        the events table (export shape + event_id)
  quarantine.jsonl      one line per rejected record: source, line/row, reason, the raw record
  ingest_summary.json   rows, quarantined, duplicates, cost_by_invoice_month, reconciliation
"""

from __future__ import annotations

import glob
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from finops_ml.errors import FinopsError
from finops_ml.events import ARROW_SCHEMA, net_cost_usd, parse_event
from finops_ml.fileio import atomic_path, write_json

JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet", ".pq")


def resolve_files(source: str) -> list[Path]:
    """The files a source names: one path or a glob."""
    paths = sorted(Path(p) for p in glob.glob(source)) if any(c in source for c in "*?[") else [Path(source)]
    if not paths or not all(p.exists() for p in paths):
        raise FinopsError(f"Source {source} does not exist; give an existing JSONL or Parquet file (or a glob).")
    for p in paths:
        if not p.name.endswith(JSON_SUFFIXES + PARQUET_SUFFIXES):
            raise FinopsError(f"Source file {p} is neither JSONL (.jsonl, .ndjson, .json) nor Parquet (.parquet).")
    return paths


def read_records(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """Yield (line or row number, record, parse error) from one file."""
    if path.name.endswith(PARQUET_SUFFIXES):
        try:
            pf = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise FinopsError(f"Parquet file {path} cannot be read ({exc}); is it a complete Parquet file?") from None
        n = 0
        for batch in pf.iter_batches(batch_size=20_000):
            for record in batch.to_pylist():
                n += 1
                yield n, record, None
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield n, line.rstrip("\n"), f"invalid JSON: {exc.msg} at column {exc.colno}"


def read_control_totals(path: str | Path) -> dict[str, float]:
    """Net cost per invoice month from a CSV with columns invoice_month, net_cost."""
    path = Path(path)
    if not path.exists():
        raise FinopsError(f"Control totals file {path} does not exist.")
    df = pd.read_csv(path, dtype={"invoice_month": str})
    if not {"invoice_month", "net_cost"} <= set(df.columns):
        raise FinopsError(f"Control totals file {path} needs the columns invoice_month and net_cost.")
    return {str(m): float(v) for m, v in zip(df.invoice_month, df.net_cost)}


def ingest(source: str, out_dir: str | Path, control_totals: str | Path | None = None,
           batch_size: int = 50_000) -> dict:
    """Read, validate, dedupe and write the events table; return the ingest summary."""
    files = resolve_files(source)
    control = read_control_totals(control_totals) if control_totals else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    stats = {"read": 0, "rows": 0, "quarantined": 0, "duplicates": 0}
    reasons: dict[str, int] = defaultdict(int)
    by_month: dict[str, float] = defaultdict(float)

    with atomic_path(out_dir / "events.parquet") as events_tmp, atomic_path(out_dir / "quarantine.jsonl") as q_tmp:
        writer = pq.ParquetWriter(events_tmp, ARROW_SCHEMA)
        with open(q_tmp, "w") as quarantine:
            batch: list[dict] = []
            for path in files:
                for n, record, error in read_records(path):
                    stats["read"] += 1
                    row, reason = (None, error) if error else parse_event(record)
                    if reason:
                        stats["quarantined"] += 1
                        reasons[reason.split(":")[0]] += 1
                        quarantine.write(json.dumps({"source": str(path), "line": n, "reason": reason,
                                                     "record": record}, default=str) + "\n")
                        continue
                    if row["event_id"] in seen:
                        stats["duplicates"] += 1
                        continue
                    seen.add(row["event_id"])
                    by_month[row["invoice"]["month"]] += net_cost_usd(row)
                    batch.append(row)
                    if len(batch) >= batch_size:
                        writer.write_table(pa.Table.from_pylist(batch, schema=ARROW_SCHEMA))
                        stats["rows"] += len(batch)
                        batch = []
            if batch:
                writer.write_table(pa.Table.from_pylist(batch, schema=ARROW_SCHEMA))
                stats["rows"] += len(batch)
        writer.close()

    cost_by_month = {m: round(v, 2) for m, v in sorted(by_month.items())}
    reconciliation = None
    if control is not None:
        months = sorted(set(control) | set(cost_by_month))
        per_month = {m: round(cost_by_month.get(m, 0.0) - control.get(m, 0.0), 2) for m in months}
        reconciliation = {"control_totals": str(control_totals), "diff_by_invoice_month": per_month,
                          "diff": round(sum(abs(v) for v in per_month.values()), 2)}
    summary = {
        "source": source,
        "files": [str(p) for p in files],
        **stats,
        "quarantine_reasons": dict(reasons),
        "cost_by_invoice_month": cost_by_month,
        "total_net_cost": round(sum(by_month.values()), 2),
        "reconciliation": reconciliation,
        "reconciliation_diff": reconciliation["diff"] if reconciliation else None,
        "events": str(out_dir / "events.parquet"),
        "quarantine": str(out_dir / "quarantine.jsonl"),
    }
    write_json(out_dir / "ingest_summary.json", summary)
    return summary
