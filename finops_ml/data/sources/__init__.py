"""Billing event sources, chosen by URI: `read_events(source)` yields the same batches whatever the source.

  path or glob of files      .jsonl / .ndjson / .json (export rows as JSON), .parquet (export rows, or FOCUS columns),
                             .csv (FOCUS 1.0-1.2 files, or export rows with dotted column names)
  bq://project.dataset.table BigQuery Cloud Billing export (standard or detailed usage cost)
  kafka://host:port/topic    a bounded read of a topic (billing events as JSON values, keyed by event id)

Every reader yields `SourceBatch`es: an Arrow table of rows in the export's shape (the columns of
`finops_ml.data.events.EXPORT_SCHEMA`, any subset, nested as the export nests them; missing columns are nulls) and the
records it could not turn into rows at all (unparseable JSON, a FOCUS row that maps to nothing), each with where
it came from and why. Ingest validates the rows, quarantines the invalid ones with their reason, computes event
ids, dedupes and reconciles; a reader never drops a record silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import pyarrow as pa


@dataclass
class Rejected:
    """A record a reader could not turn into an export row."""

    source: str  # file, table or topic
    location: str  # line / row number, or partition:offset
    reason: str  # one sentence: what is wrong
    record: Any  # the raw record (text or dict), kept for the quarantine file


@dataclass
class SourceBatch:
    table: pa.Table  # rows in the export shape; may have zero rows
    rejected: list[Rejected] = field(default_factory=list)
    source: str = ""  # where the rows come from (for quarantine and summaries)
    first_location: int = 1  # line / row number of the table's first row in its source (1-based)
    locations: list | None = None  # per-row locations when they are not consecutive from first_location

    def location(self, i: int) -> str:
        return str(self.locations[i]) if self.locations is not None else str(self.first_location + i)


def read_events(source: str, **options) -> Iterator[SourceBatch]:
    """Batches of billing events from a source URI (see the module doc)."""
    if source.startswith("bq://"):
        from finops_ml.data.sources.bigquery import read_bigquery

        yield from read_bigquery(source, **options)
    elif source.startswith("kafka://"):
        from finops_ml.data.sources.kafka import read_kafka

        yield from read_kafka(source, **options)
    else:
        from finops_ml.data.sources.files import read_files

        yield from read_files(source, **options)
