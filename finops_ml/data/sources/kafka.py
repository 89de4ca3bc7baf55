"""A bounded read of a Kafka topic of billing events: `kafka://host:port/topic[?start=...&end=...]`.

The reader assigns every partition of the topic itself (no consumer group, no offset commits), starts each at
`start` and stops at `end`, so the same URI read twice gives the same events while nothing new is produced:

  start   earliest (default) | offset:N | an ISO 8601 time (events whose message timestamp is at or after it)
  end     the high watermark when the read starts (default) | offset:N (exclusive) | an ISO 8601 time (exclusive)

Message values are export rows as JSON objects. They are parsed a batch at a time with pyarrow (schema
`EXPORT_SCHEMA`, unknown fields ignored); when a batch fails, each message is parsed on its own and those that are
not JSON objects of the export's shape become `Rejected` records located `partition:offset`.

Brokers differ in how they answer offset look-ups (Tansu 0.6 reports the last batch's base offset + 1 as the high
watermark and answers every timestamp look-up with offset 0), so the reader never relies on them alone: a
partition ends at its end offset or when the broker says the fetch reached the end of the log, whichever comes
first, and time windows are applied to each message's timestamp.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pyarrow.json as pajson

from finops_ml.data.events import EXPORT_SCHEMA
from finops_ml.data.sources import Rejected, SourceBatch
from finops_ml.errors import FinopsError

_PARSE = pajson.ParseOptions(explicit_schema=EXPORT_SCHEMA, unexpected_field_behavior="ignore")
_READ = pajson.ReadOptions(use_threads=True, block_size=16 << 20)


@dataclass
class _Bound:
    kind: str  # "earliest", "latest", "offset" or "time"
    offset: int = 0
    ms: int = 0  # epoch milliseconds for "time"


def _parse_bound(text: str | None, what: str, source: str) -> _Bound | None:
    if text is None or text == "":
        return None
    text = text.strip()
    if text in ("earliest", "beginning"):
        return _Bound("earliest")
    if text in ("latest", "end"):
        return _Bound("latest")
    if text.startswith("offset:"):
        try:
            offset = int(text[len("offset:"):])
        except ValueError:
            offset = -1
        if offset < 0:
            raise FinopsError(f"The {what} '{text}' of {source} is not a valid offset; write offset:N with N >= 0.")
        return _Bound("offset", offset=offset)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise FinopsError(f"The {what} '{text}' of {source} is neither earliest, latest, offset:N nor an ISO 8601 "
                          f"time such as 2025-09-01T00:00:00Z.") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return _Bound("time", ms=int(when.timestamp() * 1000))


def parse_uri(source: str) -> tuple[str, str, dict[str, str]]:
    """(bootstrap, topic, query) of kafka://host:port/topic?start=...&end=..."""
    parts = urlsplit(source)
    topic = parts.path.lstrip("/")
    if parts.scheme != "kafka" or not parts.netloc or not topic or "/" in topic:
        raise FinopsError(f"Source {source} is not a Kafka URI; write kafka://host:port/topic.")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"start", "end", "group"}
    if unknown:
        raise FinopsError(f"Source {source} has unknown parameter(s) {sorted(unknown)}; use start and end.")
    return parts.netloc, topic, query


def _rows(values: list[bytes]) -> pa.Table:
    table = pajson.read_json(io.BytesIO(b"\n".join(values)), read_options=_READ, parse_options=_PARSE)
    if table.num_rows != len(values):  # a value held a newline, or was empty: parse one by one
        raise pa.ArrowInvalid(f"{table.num_rows} rows from {len(values)} messages")
    return table


def _reject_reason(value: bytes | None) -> str | None:
    """Why one message value is not an export row, or None if it is one."""
    if value is None or not value.strip():
        return "message has no value (expected an export row as a JSON object)"
    try:
        record = json.loads(value)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        msg = f"{exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        return f"invalid JSON: {msg}"
    if not isinstance(record, dict):
        return f"record is a {type(record).__name__}, not a JSON object"
    return None


def _parse(values: list[bytes], where: list[str], source: str) -> tuple[pa.Table, list[Rejected]]:
    """Rows of a batch of message values; the values that are not export rows are rejected with a reason."""
    try:
        return _rows(values), []
    except pa.ArrowInvalid:
        pass
    rejected: list[Rejected] = []
    good: list[bytes] = []
    for value, loc in zip(values, where):
        reason = _reject_reason(value)
        if reason is None:
            one_line = value if b"\n" not in value and b"\r" not in value else json.dumps(
                json.loads(value), separators=(",", ":")).encode()
            good.append(one_line)
            continue
        text = value.decode("utf-8", errors="replace") if value is not None else None
        rejected.append(Rejected(source=source, location=loc, reason=reason, record=text))
    if not good:
        return EXPORT_SCHEMA.empty_table(), rejected
    try:
        return _rows(good), rejected
    except pa.ArrowInvalid:
        pass
    tables = []  # valid JSON objects that still do not fit the export's types: one by one
    for value, loc in zip(good, [w for w, v in zip(where, values) if _reject_reason(v) is None]):
        try:
            tables.append(_rows([value]))
        except pa.ArrowInvalid as exc:
            reason = str(exc).removeprefix("JSON parse error: ")
            rejected.append(Rejected(source=source, location=loc, reason=f"not an export row: {reason}",
                                     record=value.decode("utf-8", errors="replace")))
    table = pa.concat_tables(tables) if tables else EXPORT_SCHEMA.empty_table()
    return table, rejected


def read_kafka(source: str, start: str | None = None, end: str | None = None, timeout_s: float = 10.0,
               batch_rows: int = 50_000, group: str | None = None) -> Iterator[SourceBatch]:
    """Batches of billing events from a bounded read of a topic (see the module doc).

    `start` / `end` override the URI's query parameters. `timeout_s` bounds both the first contact with the
    broker and any wait without progress; `group` is only the consumer's group.id (nothing is committed).
    """
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

    from finops_ml.data.kafka_io import check_reachable, client_config

    bootstrap, topic, query = parse_uri(source)
    clean = f"kafka://{bootstrap}/{topic}"
    lo = _parse_bound(start if start is not None else query.get("start"), "start", source) or _Bound("earliest")
    hi = _parse_bound(end if end is not None else query.get("end"), "end", source) or _Bound("latest")
    if lo.kind == "latest":
        raise FinopsError(f"The start of {source} cannot be latest; a bounded read from the end reads nothing.")
    if hi.kind == "earliest":
        raise FinopsError(f"The end of {source} cannot be earliest; a bounded read up to the start reads nothing.")

    consumer = Consumer({
        **client_config(bootstrap),
        "group.id": group or query.get("group") or "finops-ml-reader",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 100,
        "fetch.max.bytes": 64 << 20,
        "max.partition.fetch.bytes": 16 << 20,
        "queued.max.messages.kbytes": 256 << 10,
    })
    try:
        meta = check_reachable(bootstrap, min(timeout_s, 10.0), consumer)
        info = meta.topics.get(topic)
        if info is None or info.error is not None:
            raise FinopsError(f"Topic {topic} does not exist on {bootstrap}; replay events to it first "
                              f"(finops-ml replay FILE --bootstrap {bootstrap} --topic {topic}).")
        partitions = sorted(info.partitions)
        tps = [TopicPartition(topic, p) for p in partitions]
        try:
            marks = {p: consumer.get_watermark_offsets(tp, timeout=timeout_s) for p, tp in zip(partitions, tps)}
            starts = {p: (OFFSET_BEGINNING if lo.kind == "earliest" else lo.offset) for p in partitions}
            if lo.kind == "time":
                found = consumer.offsets_for_times([TopicPartition(topic, p, lo.ms) for p in partitions],
                                                   timeout=timeout_s)
                starts = {tp.partition: (tp.offset if tp.offset >= 0 else OFFSET_END) for tp in found}
        except KafkaException as exc:
            raise FinopsError(f"Offsets of topic {topic} on {bootstrap} cannot be read "
                              f"({exc.args[0].str()}).") from None
        # End offset per partition (exclusive). The high watermark is refined by the first fetch (see module doc).
        ends = {p: (hi.offset if hi.kind == "offset" else marks[p][1]) for p in partitions}
        refine = hi.kind != "offset"
        window = (lo.ms if lo.kind == "time" else None, hi.ms if hi.kind == "time" else None)

        open_ = set(partitions)
        assign = []
        for p, tp in zip(partitions, tps):
            if starts[p] == OFFSET_END or (hi.kind == "offset" and starts[p] != OFFSET_BEGINNING
                                           and starts[p] >= ends[p]) or (hi.kind == "offset" and ends[p] <= 0):
                open_.discard(p)
            else:
                assign.append(TopicPartition(topic, p, starts[p]))
        refined: set[int] = set()
        if assign:
            consumer.assign(assign)

        values: list[bytes] = []
        where: list[str] = []
        first = 0
        last_progress = time.monotonic()
        while open_:
            messages = consumer.consume(num_messages=10_000, timeout=0.2)
            if not messages:
                if time.monotonic() - last_progress > timeout_s:
                    stuck = ", ".join(str(p) for p in sorted(open_))
                    raise FinopsError(f"Reading {clean} made no progress for {timeout_s:g} s on partition(s) {stuck}; "
                                      f"check the broker, or give an end offset within the topic.")
                continue
            last_progress = time.monotonic()
            done: list[int] = []
            for msg in messages:
                p = msg.partition()
                if p not in open_:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        done.append(p)
                        open_.discard(p)
                        continue
                    raise FinopsError(f"Reading {clean} failed on partition {p} ({err.str()}).")
                if refine and p not in refined:
                    refined.add(p)
                    cached = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
                    if cached and cached[1] > ends[p]:
                        ends[p] = cached[1]
                offset = msg.offset()
                if offset >= ends[p]:
                    done.append(p)
                    open_.discard(p)
                    continue
                if offset + 1 >= ends[p]:
                    done.append(p)
                    open_.discard(p)
                ts_type, ts = msg.timestamp()
                if (window[0] is not None and ts < window[0]) or (window[1] is not None and ts >= window[1]):
                    continue
                values.append(msg.value() or b"")
                where.append(f"{p}:{offset}")
                if len(values) >= batch_rows:
                    table, rejected = _parse(values, where, clean)
                    yield SourceBatch(table=table, rejected=rejected, source=clean, first_location=first + 1)
                    first += len(values)
                    values, where = [], []
            if done:
                consumer.incremental_unassign([TopicPartition(topic, p) for p in done])
        if values:
            table, rejected = _parse(values, where, clean)
            yield SourceBatch(table=table, rejected=rejected, source=clean, first_location=first + 1)
    finally:
        consumer.close()
