"""Files of billing events: JSONL (export rows as JSON objects), Parquet (export rows, or FOCUS columns: mapped as
a FOCUS CSV is), CSV (FOCUS or flattened export), one path or a glob. Read in batches, so a file of any size
streams in bounded memory."""

from __future__ import annotations

import glob
import io
import json
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.json as pj
import pyarrow.parquet as pq

from finops_ml.data.events import EXPORT_SCHEMA, parse_event
from finops_ml.data.sources import Rejected, SourceBatch
from finops_ml.errors import FinopsError

JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv",)
JSON_BLOCK_BYTES = 64 << 20  # JSONL is parsed in blocks of whole lines of about this size
JSON_BATCH_LINES = 50_000  # lines of a refused block validated one by one, per batch
PARQUET_BATCH_ROWS = 200_000
_JSON_OPTIONS = pj.ParseOptions(explicit_schema=EXPORT_SCHEMA, unexpected_field_behavior="ignore")
_JSON_READ = pj.ReadOptions(block_size=4 << 20)  # Arrow parses a block in parallel chunks of this size


def resolve_files(source: str) -> list[Path]:
    """The files a source names: one path or a glob."""
    paths = sorted(Path(p) for p in glob.glob(source)) if any(c in source for c in "*?[") else [Path(source)]
    if not paths or not all(p.exists() for p in paths):
        raise FinopsError(f"Source {source} does not exist; give an existing JSONL, Parquet or CSV file (or a glob).")
    for p in paths:
        if not p.name.endswith(JSON_SUFFIXES + PARQUET_SUFFIXES + CSV_SUFFIXES):
            raise FinopsError(f"Source file {p} is neither JSONL (.jsonl, .ndjson, .json), Parquet (.parquet) "
                              "nor CSV (.csv).")
    return paths


def read_files(source: str, **_options) -> Iterator[SourceBatch]:
    for path in resolve_files(str(source)):
        if path.name.endswith(PARQUET_SUFFIXES):
            yield from read_parquet(path)
        elif path.name.endswith(CSV_SUFFIXES):
            from finops_ml.data.sources.csv_files import read_csv_events

            yield from read_csv_events(path)
        else:
            yield from read_jsonl(path)


def read_parquet(path: Path) -> Iterator[SourceBatch]:
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise FinopsError(f"Parquet file {path} cannot be read ({exc}); is it a complete Parquet file?") from None
    from finops_ml.data.sources.csv_files import is_focus, read_focus_tables

    names = pf.schema_arrow.names
    if is_focus(names) and "cost" not in names:
        yield from read_focus_tables(_parquet_tables(pf, path, names), names, str(path))
        return
    columns = [name for name in names if name in EXPORT_SCHEMA.names]
    first = 1
    for table in _parquet_tables(pf, path, columns):
        yield SourceBatch(table, source=str(path), first_location=first)
        first += table.num_rows


def _parquet_tables(pf: pq.ParquetFile, path: Path, columns: list[str]) -> Iterator[pa.Table]:
    """The file's rows in tables of PARQUET_BATCH_ROWS; a file corrupted mid-way is one sentence naming the row."""
    read = 0
    batches = pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (OSError, pa.ArrowException) as exc:
            raise FinopsError(f"Parquet file {path} is corrupt after row {read:,} of "
                              f"{pf.metadata.num_rows:,} ({exc}); export it again.") from None
        read += batch.num_rows
        yield pa.Table.from_batches([batch])


def read_jsonl(path: Path) -> Iterator[SourceBatch]:
    """Blocks of whole lines parsed by Arrow in one go (multi-threaded); a block Arrow refuses, or one with blank
    lines, is parsed line by line, so one bad line costs one block's speed, and every bad line is rejected with
    its number and reason."""
    first_line = 1
    rest = b""
    with open(path, "rb") as f:
        while True:
            data = f.read(JSON_BLOCK_BYTES)
            block = rest + data
            if not data:
                if block.strip():
                    block = block if block.endswith(b"\n") else block + b"\n"
                    yield from _json_block(path, block, first_line, block.count(b"\n"))
                return
            cut = block.rfind(b"\n") + 1
            block, rest = block[:cut], block[cut:]
            if block:
                n_lines = block.count(b"\n")
                yield from _json_block(path, block, first_line, n_lines)
                first_line += n_lines


def _json_block(path: Path, block: bytes, first_line: int, n_lines: int) -> Iterator[SourceBatch]:
    try:
        table = pj.read_json(pa.BufferReader(block), parse_options=_JSON_OPTIONS, read_options=_JSON_READ)
        if table.num_rows == n_lines:  # no blank line: row i is line first_line + i
            yield SourceBatch(table, source=str(path), first_location=first_line)
            return
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    lines, numbers = [], []
    for i, line in enumerate(block.split(b"\n")[:n_lines]):
        if line.strip():
            lines.append(line)
            numbers.append(first_line + i)
    for lo in range(0, len(lines), JSON_BATCH_LINES):
        yield _json_chunk(path, lines[lo: lo + JSON_BATCH_LINES], numbers[lo: lo + JSON_BATCH_LINES])


def _json_chunk(path: Path, lines: list[bytes], numbers: list[int]) -> SourceBatch:
    try:
        table = pj.read_json(io.BytesIO(b"\n".join(lines) + b"\n"), parse_options=_JSON_OPTIONS)
        if table.num_rows == len(lines):
            return SourceBatch(table, source=str(path), locations=numbers)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    rows, keep, rejected = [], [], []
    for n, line in zip(numbers, lines):
        text = line.decode("utf-8", errors="replace").rstrip("\n")
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            rejected.append(Rejected(str(path), str(n), f"invalid JSON: {exc.msg} at column {exc.colno}", text))
            continue
        row, reason = parse_event(record)
        if reason:
            rejected.append(Rejected(str(path), str(n), reason, record))
            continue
        row.pop("event_id")
        rows.append(row)
        keep.append(n)
    return SourceBatch(pa.Table.from_pylist(rows, schema=EXPORT_SCHEMA), rejected, str(path), locations=keep)
