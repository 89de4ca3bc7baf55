"""Publishing billing events to Kafka: `replay` sends a JSONL or Parquet file of export rows to a topic.

Each message is keyed by the event's series, `service.description|project.id` (`key="cell"`, the default), so
that every event of a daily cell (day x service x project) lands on the same partition: the real-time detector
(`finops-ml stream`) keeps its state per partition, and with several consumers a cell must always reach the same
one. `key="event"` keys by the stable event id instead (even spread, no per-cell order). Either way the event id
travels in the `event_id` header, a re-sent file carries the same keys and ids, and ingest dedupes it (by the id
computed from the content). The value is the export row as one line of JSON, the form the generator writes.
Records that are not valid billing events are sent too (with no key): ingest and the stream quarantine / dead-letter
them with their reason, and `replay` reports how many there were.

The producer is idempotent with acks=all, so a retry inside the client never duplicates a message.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

from pydantic import ValidationError

from finops_ml.data.events import BillingEvent, event_id
from finops_ml.errors import FinopsError

CONNECT_TIMEOUT_S = 5.0  # how long a broker may take to answer the first metadata request
DEFAULT_PARTITIONS = 3  # partitions of a topic that replay creates


def client_config(bootstrap: str) -> dict[str, Any]:
    """Settings every client of this module shares."""
    return {"bootstrap.servers": bootstrap, "socket.connection.setup.timeout.ms": int(CONNECT_TIMEOUT_S * 1000),
            "log_level": 0}  # client logs off: an unreachable broker is reported once, as a FinopsError


def check_reachable(bootstrap: str, timeout_s: float = CONNECT_TIMEOUT_S, client=None):
    """Cluster metadata, or a FinopsError when no broker answers within `timeout_s`."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    client = client or AdminClient(client_config(bootstrap))
    try:
        return client.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        raise FinopsError(f"No Kafka broker at {bootstrap} answered within {timeout_s:g} s ({exc.args[0].str()}); "
                          f"check the bootstrap address and that the broker is running.") from None


def ensure_topic(bootstrap: str, topic: str, partitions: int = DEFAULT_PARTITIONS,
                 timeout_s: float = CONNECT_TIMEOUT_S) -> int:
    """Create `topic` if the cluster lacks it; return its number of partitions."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(client_config(bootstrap))
    meta = check_reachable(bootstrap, timeout_s, admin)
    if topic in meta.topics and meta.topics[topic].error is None:
        return len(meta.topics[topic].partitions)
    future = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic]
    try:
        future.result(timeout_s)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise FinopsError(f"Topic {topic} cannot be created on {bootstrap} ({exc.args[0].str()}); "
                              f"create it first or check the broker's permissions.") from None
    return partitions


KEYS = ("cell", "event")


def cell_key_of(event: BillingEvent) -> bytes:
    """The series of an event, `service.description|project.id`: the partitioning key of the billing topic."""
    return f"{event.service.description}|{(event.project.id or '') if event.project else ''}".encode()


# The same key in SQL, over a table of valid export rows (the bridge computes it with the event id; the tests compare
# it with cell_key_of).
CELL_KEY_SQL = "concat(service.description, '|', coalesce(project.id, ''))"


def json_value_sql(columns: list[tuple[str, str]]) -> str:
    """A SQL expression giving a row of the columns (name, DuckDB type) as one line of JSON, the form the generator
    writes: timestamps ISO 8601 UTC, sub-second digits only where there are some. Run it with TimeZone UTC."""
    fields = []
    for name, type_ in columns:
        col = f'"{name}"'
        if type_.startswith("TIMESTAMP"):
            col = (f"CASE WHEN microsecond({col}) % 1000000 = 0 THEN strftime({col}, '%Y-%m-%dT%H:%M:%SZ') "
                   f"ELSE strftime({col}, '%Y-%m-%dT%H:%M:%S.%fZ') END")
        fields.append(f'"{name}" := {col}')
    return f"to_json(struct_pack({', '.join(fields)}))::VARCHAR"


def _ids(value: bytes) -> tuple[bytes, bytes, tuple] | None:
    """(event id, cell key, export order key) of a message value, or None if it is no valid billing event."""
    try:
        event = BillingEvent.model_validate_json(value)
    except (ValidationError, ValueError):
        return None
    return event_id(event).encode(), cell_key_of(event), (event.export_time, event.usage_start_time)


ORDERS = ("export", "file")


def export_order(records) -> list:
    """The records (ids, value) as a Cloud Billing export delivers them: by export time, then usage start time (a
    stable sort: rows exported together keep their file order). A record that is no valid billing event keeps its
    place after the valid record before it."""
    keyed, last = [], None
    for i, (ids, value) in enumerate(records):
        if ids is not None:
            last = ids[2]
        keyed.append(((last is not None, last or (), i), (ids, value)))
    keyed.sort(key=lambda item: item[0])
    return [record for _, record in keyed]


def _json_lines(path: Path) -> Iterator[tuple[tuple[bytes, bytes] | None, bytes]]:
    """(ids, value) per non-empty line: the line as it is, with its (event id, cell key) (None: no valid event)."""
    with open(path, "rb") as f:
        for line in f:
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            yield _ids(line), line


def _parquet_rows(path: Path) -> Iterator[tuple[tuple[bytes, bytes] | None, bytes]]:
    """(ids, value) per row: the row as one line of JSON (DuckDB writes it, far faster than via Python objects)."""
    import duckdb

    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        if con.execute("SELECT current_setting('enable_progress_bar')").fetchone()[0]:  # Jupyter: off, and fixed
            con.execute("SET enable_progress_bar = false")
        columns = con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(path)]).fetchall()
    except duckdb.Error as exc:
        raise FinopsError(f"Parquet file {path} cannot be read ({str(exc).splitlines()[0]}); "
                          f"is it a complete Parquet file?") from None
    cursor = con.execute(f"SELECT {json_value_sql([(c[0], c[1]) for c in columns])} FROM read_parquet(?)",
                         [str(path)])
    while rows := cursor.fetchmany(20_000):
        for (text,) in rows:
            value = text.encode()
            yield _ids(value), value
    con.close()


def replay(events_path: str | Path, bootstrap: str, topic: str, batch: int = 10_000, *,
           partitions: int = DEFAULT_PARTITIONS, timeout_s: float = 60.0, key: str = "cell",
           order: str = "export") -> dict:
    """Publish the events of a JSONL or Parquet file to `topic` (created with `partitions` if missing).

    `order="export"` (the default) sends them as a billing export delivers them (`export_order`: by export time;
    a file written by usage day ends with rows exported before its last days), `order="file"` in file order.

    Messages are keyed by cell (`key="cell"`, see the module's docstring) or by event id (`key="event"`).
    Returns {"sent", "invalid", "seconds", "events_per_s"}: messages sent (every record, valid or not), how many of
    them are not valid billing events (sent without a key; ingest quarantines them), and the time taken including
    the final flush. `batch` is the number of messages between two waits for delivery reports.
    """
    from confluent_kafka import KafkaException, Producer

    if key not in KEYS:
        raise FinopsError(f"Replay key '{key}' is unknown; use 'cell' (one partition per series) or 'event'.")
    if order not in ORDERS:
        raise FinopsError(f"Replay order '{order}' is unknown; use 'export' (as a billing export delivers the rows, "
                          f"by export time) or 'file'.")
    path = Path(events_path)
    if not path.is_file():
        raise FinopsError(f"Events file {path} does not exist; give a JSONL or Parquet file of billing events.")
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        records = _parquet_rows(path)
    elif name.endswith((".jsonl", ".ndjson", ".json")):
        records = _json_lines(path)
    else:
        raise FinopsError(f"Events file {path} is neither JSONL (.jsonl, .ndjson, .json) nor Parquet (.parquet).")

    if order == "export":
        records = export_order(records)
    ensure_topic(bootstrap, topic, partitions)
    errors: list[str] = []

    def on_delivery(err, msg) -> None:  # called for failed messages only (delivery.report.only.error)
        if err is not None:
            errors.append(err.str())

    producer = Producer({
        **client_config(bootstrap),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "batch.num.messages": 10_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 500_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "message.timeout.ms": int(timeout_s * 1000),
        "delivery.report.only.error": True,
        "on_delivery": on_delivery,
    })
    sent = invalid = 0
    t0 = time.perf_counter()
    produce, poll = producer.produce, producer.poll
    try:
        by_cell = key == "cell"
        for ids, value in records:
            if ids is None:
                message_key, headers = None, None
            else:
                message_key, headers = (ids[1] if by_cell else ids[0]), [("event_id", ids[0])]
            while True:
                try:
                    produce(topic, value, message_key, headers=headers)
                    break
                except BufferError:  # the local queue is full: let deliveries drain
                    poll(0.05)
            sent += 1
            invalid += ids is None
            if sent % batch == 0:
                poll(0)
                if errors:
                    break
        remaining = producer.flush(timeout_s)
    except KafkaException as exc:
        raise FinopsError(f"Sending to topic {topic} on {bootstrap} failed ({exc.args[0].str()}).") from None
    seconds = time.perf_counter() - t0
    if errors:
        raise FinopsError(f"{len(errors):,} message(s) to topic {topic} on {bootstrap} were not delivered "
                          f"(first error: {errors[0]}); the topic may hold part of {path.name}, and replaying it "
                          f"again is safe (ingest dedupes by event id).")
    if remaining:
        raise FinopsError(f"{remaining:,} message(s) to topic {topic} on {bootstrap} were still undelivered after "
                          f"{timeout_s:g} s; check that the broker is up and replay again (it is safe to).")
    return {"sent": sent, "invalid": invalid, "seconds": round(seconds, 3),
            "events_per_s": round(sent / seconds) if seconds > 0 else 0}
