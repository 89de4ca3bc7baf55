"""The export -> Kafka bridge: a billing export file that lands in a bucket is published to the billing topic.

A Cloud Run function (deploy/bridge/main.py, functions-framework, CloudEvent trigger on GCS object finalize) and
`finops-ml bridge gs://BUCKET/PATH|LOCAL_PATH` run the same `bridge()`:

1. The object (one generation of it) is downloaded and read by the readers ingest uses (JSONL, Parquet, CSV: FOCUS
   or flattened export rows) and validated by ingest's own `validate_batch`: the same verdicts, reasons and event ids.
2. Each valid row goes to the billing topic keyed as `replay` keys it (the series, `service.description|project.id`,
   `CELL_KEY_SQL`; the event id in the `event_id` header), its value the export row as one line of JSON. Each
   rejected record goes to the dead-letter topic as it was read, with the headers the stream uses for its dead
   letters (`error.kind` invalid, `error.reason`) and where it came from (`source.object`, `source.generation`,
   `source.location`: line or row). read = rows + dead letters, always.
3. Exactly once per object generation: the rows, the dead letters and a **marker record** (key
   `gs://BUCKET/NAME#GENERATION`, value the counts) are written in **one Kafka transaction** to the billing, dead-letter
   and marker topics. The transactional id is derived from the marker key, so two deliveries of the same object
   fence each other (the older one's transaction is aborted); after `init_transactions` the marker topic is read to
   its end (read_committed), and a marker found there means the object was published: nothing is sent again. A
   delivery that dies half-way leaves an open transaction that the next delivery's `init_transactions` aborts, so
   read_committed consumers (librdkafka's default, hence `finops-ml stream` and kafka:// ingest) never see its rows.
   Why not a marker object in the bucket: it cannot be written atomically with the messages, so a crash between the
   last message and the marker would publish the file twice on redelivery; the marker record can.
   A local file's "generation" is the MD5 of its content: bridging the same file twice sends nothing twice.
   A new generation of the same object name (the export rewrote it) is a new file and is published; its rows that
   were in the old generation carry the same event ids, which ingest dedupes.

A file the readers cannot read at all (a truncated Parquet file, say) is one dead letter (`error.kind` unreadable,
value: the object's name) plus its marker, so the function does not retry it forever; a Kafka or GCS failure is an
error (the function then fails and Eventarc redelivers the event).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from finops_ml.data.kafka_io import CELL_KEY_SQL, check_reachable, client_config, ensure_topic, json_value_sql
from finops_ml.data.sources.files import CSV_SUFFIXES, JSON_SUFFIXES, PARQUET_SUFFIXES
from finops_ml.errors import FinopsError

log = logging.getLogger(__name__)

SUFFIXES = JSON_SUFFIXES + PARQUET_SUFFIXES + CSV_SUFFIXES
TRANSACTION_TIMEOUT_S = 600  # a file's rows are one transaction (brokers allow up to 15 min by default)
BATCH_ROWS = 20_000  # rows turned into messages per DuckDB query


@dataclass(frozen=True)
class ObjectRef:
    """One generation of a billing export file: gs://BUCKET/NAME and its GCS generation, or a local path and the
    MD5 of its content."""

    uri: str
    generation: str

    @property
    def marker_key(self) -> bytes:
        return f"{self.uri}#{self.generation}".encode()

    @property
    def transactional_id(self) -> str:
        return "finops-bridge-" + hashlib.sha256(self.marker_key).hexdigest()[:32]


def default_marker_topic(topic: str) -> str:
    return f"{topic}-bridge-markers"


# ---- the object ------------------------------------------------------------------------------------------------------

def storage_client():
    """A GCS client with the environment's credentials; with STORAGE_EMULATOR_HOST set, anonymous ones."""
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT") or "local",
                              credentials=AnonymousCredentials())
    return storage.Client()


def _check_suffix(name: str, where: str) -> None:
    if not name.lower().endswith(SUFFIXES):
        raise FinopsError(f"{where} is neither JSONL (.jsonl, .ndjson, .json), Parquet (.parquet) nor CSV (.csv); "
                          "give a billing export file.")


def fetch(source: str, workdir: Path, generation: str | None = None, client=None) -> tuple[Path, ObjectRef]:
    """The local file to read and the object it is: a gs:// object (that generation, or the current one) is
    downloaded into `workdir`, pinned to its generation; a local path is read where it is."""
    if not source.startswith("gs://"):
        path = Path(source)
        _check_suffix(path.name, f"Source file {path}")
        if not path.is_file():
            raise FinopsError(f"Source file {path} does not exist; give a billing export file or gs://BUCKET/PATH.")
        digest = hashlib.md5()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        return path, ObjectRef(str(path.resolve()), digest.hexdigest())
    from google.api_core import exceptions as gexc

    bucket_name, _, name = source[len("gs://"):].partition("/")
    if not bucket_name or not name or name.endswith("/"):
        raise FinopsError(f"{source} names no object; write gs://BUCKET/PATH/TO/FILE.")
    _check_suffix(name, f"Object {source}")
    client = client or storage_client()
    blob = client.bucket(bucket_name).blob(name, generation=int(generation) if generation else None)
    what = f"{source}" + (f" (generation {generation})" if generation else "")
    try:
        blob.reload()  # metadata: the generation to pin the download to
        generation = str(blob.generation)
        blob = client.bucket(bucket_name).blob(name, generation=int(generation))
        local = workdir / Path(name).name
        blob.download_to_filename(str(local))
    except gexc.NotFound:
        raise FinopsError(f"Object {what} does not exist (or was replaced); check the path.") from None
    except gexc.Forbidden as exc:
        raise FinopsError(f"Reading {what} is forbidden ({exc.message}); grant the caller "
                          "roles/storage.objectViewer on the bucket.") from None
    return local, ObjectRef(f"gs://{bucket_name}/{name}", generation)


# ---- Kafka -----------------------------------------------------------------------------------------------------------

def _kafka_error(exc, what: str) -> FinopsError:
    err = exc.args[0] if exc.args else exc
    text = err.str() if hasattr(err, "str") else str(err)
    return FinopsError(f"{what} failed ({text}); nothing of this file is visible to read_committed consumers, and "
                       "delivering the file again is safe.")


def find_marker(bootstrap: str, marker_topic: str, key: bytes, properties: dict | None = None,
                timeout_s: float = 30.0) -> dict | None:
    """The marker record of `key` in the marker topic (read to its end, committed records only), or None."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    meta = check_reachable(bootstrap)
    partitions = len(meta.topics[marker_topic].partitions)
    partition = zlib.crc32(key) % partitions
    consumer = Consumer({**client_config(bootstrap), **(properties or {}), "group.id": "finops-bridge-markers",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "isolation.level": "read_committed", "fetch.wait.max.ms": 50})
    found = None
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(marker_topic, partition), timeout=timeout_s)
        if high <= low:  # nothing ever published there (the usual case for a new file on a new topic)
            return None
        consumer.assign([TopicPartition(marker_topic, partition, OFFSET_BEGINNING)])
        deadline = time.monotonic() + timeout_s
        while True:
            for msg in consumer.consume(1000, timeout=0.2):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        return found
                    raise FinopsError(f"Reading the marker topic {marker_topic} on {bootstrap} failed ({err.str()}).")
                if msg.key() == key:
                    found = json.loads(msg.value())
            if time.monotonic() > deadline:
                raise FinopsError(f"The marker topic {marker_topic} on {bootstrap} was not read to its end within "
                                  f"{timeout_s:g} s; check the broker and deliver the file again.")
    finally:
        consumer.close()


def _producer(bootstrap: str, ref: ObjectRef, properties: dict | None):
    from confluent_kafka import Producer

    return Producer({
        **client_config(bootstrap), **(properties or {}),
        "transactional.id": ref.transactional_id,  # idempotent, acks=all
        "transaction.timeout.ms": TRANSACTION_TIMEOUT_S * 1000,
        "linger.ms": 20, "batch.size": 1_000_000, "batch.num.messages": 10_000, "compression.type": "lz4",
        "queue.buffering.max.messages": 500_000, "queue.buffering.max.kbytes": 1_048_576,
    })


def _send(producer, topic: str, value: bytes, key: bytes | None, headers, partition: int | None = None) -> None:
    while True:
        try:
            if partition is None:
                producer.produce(topic, value, key, headers=headers)
            else:
                producer.produce(topic, value, key, headers=headers, partition=partition)
            return
        except BufferError:  # the local queue is full: let deliveries drain
            producer.poll(0.05)


def _dead_letter_value(record: Any) -> bytes:
    from finops_ml.data.ingest import strict_json

    if isinstance(record, bytes):
        return record
    if isinstance(record, str):  # a line that is no JSON: as it was read
        return record.encode()
    return json.dumps(strict_json(record), default=str, allow_nan=False).encode()


def _publish_rows(producer, path: Path, ref: ObjectRef, topic: str, dead_letter_topic: str) -> dict:
    """Validate the file as ingest does and produce every record (inside the open transaction); the counts."""
    import pyarrow as pa

    from finops_ml.data.events import EXPORT_SCHEMA
    from finops_ml.data.ingest import validate_batch
    from finops_ml.data.sources import read_events
    from finops_ml.data.warehouse import duckdb_session

    rows = dead = read = 0
    origin = [("source.object", ref.uri.encode()), ("source.generation", ref.generation.encode())]
    columns = [(f.name, "TIMESTAMP" if pa.types.is_timestamp(f.type) else "") for f in EXPORT_SCHEMA]
    query = f"SELECT event_id, {CELL_KEY_SQL}, {json_value_sql(columns)} FROM good"
    with duckdb_session() as con:
        con.execute("SET preserve_insertion_order = true")  # rows in the file's order
        for batch in read_events(str(path)):
            read += batch.table.num_rows + len(batch.rejected)
            good, rejected = validate_batch(con, batch)
            for r in rejected:
                _send(producer, dead_letter_topic, _dead_letter_value(r.record), None,
                      [("error.kind", b"invalid"), ("error.reason", r.reason.encode()), *origin,
                       ("source.location", str(r.location).encode())])
                dead += 1
            if good is None:
                continue
            for lo in range(0, good.num_rows, BATCH_ROWS):
                con.register("good", good.slice(lo, BATCH_ROWS))
                for event_id, key, value in con.execute(query).fetchall():
                    _send(producer, topic, value.encode(), key.encode(), [("event_id", event_id.encode())])
                con.unregister("good")
                rows += min(BATCH_ROWS, good.num_rows - lo)
                producer.poll(0)
    return {"read": read, "rows": rows, "dead_letters": dead}


def bridge(source: str, bootstrap: str, topic: str = "billing-events", dead_letter_topic: str | None = None,
           marker_topic: str | None = None, *, generation: str | None = None, properties: dict | None = None,
           storage=None, timeout_s: float = 60.0) -> dict:
    """Publish one billing export file (gs://BUCKET/PATH or a local path) to `topic`, exactly once per object
    generation (see the module's docstring). Returns the summary: object, generation, read, rows, dead_letters,
    skipped (True: its marker was there, nothing was sent), seconds, rows_per_s, the topics."""
    from confluent_kafka import KafkaException

    t0 = time.perf_counter()
    dead_letter_topic = dead_letter_topic or f"{topic}-dlq"
    marker_topic = marker_topic or default_marker_topic(topic)
    with tempfile.TemporaryDirectory(prefix="finops-bridge-") as work:
        path, ref = fetch(source, Path(work), generation, storage)
        for name, partitions in ((topic, 3), (dead_letter_topic, 1), (marker_topic, 1)):
            ensure_topic(bootstrap, name, partitions)
        summary = {"object": ref.uri, "generation": ref.generation, "topic": topic,
                   "dead_letter_topic": dead_letter_topic, "marker_topic": marker_topic}
        producer = _producer(bootstrap, ref, properties)
        try:
            # Fences (aborts) an earlier delivery of this object still in flight, so the marker read next is final.
            producer.init_transactions(timeout_s)
        except KafkaException as exc:
            raise _kafka_error(exc, f"Starting a transaction on {bootstrap}") from None
        marker = find_marker(bootstrap, marker_topic, ref.marker_key, properties)
        if marker is not None:
            return {**summary, **{k: marker.get(k, 0) for k in ("read", "rows", "dead_letters")}, "skipped": True,
                    "marker": marker, "seconds": round(time.perf_counter() - t0, 3), "rows_per_s": 0}
        try:
            producer.begin_transaction()
            try:
                counts = _publish_rows(producer, path, ref, topic, dead_letter_topic)
            except FinopsError as exc:  # the file cannot be read: one dead letter for the object, not endless retries
                producer.abort_transaction(timeout_s)
                producer.begin_transaction()
                _send(producer, dead_letter_topic, ref.uri.encode(), None,
                      [("error.kind", b"unreadable"), ("error.reason", str(exc).encode()),
                       ("source.object", ref.uri.encode()), ("source.generation", ref.generation.encode())])
                counts = {"read": 0, "rows": 0, "dead_letters": 1, "unreadable": str(exc)}
            marker = {**counts, "object": ref.uri, "generation": ref.generation,
                      "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            partitions = len(check_reachable(bootstrap).topics[marker_topic].partitions)
            _send(producer, marker_topic, json.dumps(marker).encode(), ref.marker_key, None,
                  partition=zlib.crc32(ref.marker_key) % partitions)
            producer.commit_transaction(timeout_s)  # flushes; raises if any message was not delivered
        except KafkaException as exc:
            raise _kafka_error(exc, f"Publishing {ref.uri} to {topic} on {bootstrap}") from None
    seconds = time.perf_counter() - t0
    return {**summary, **counts, "skipped": False, "marker": marker, "seconds": round(seconds, 3),
            "rows_per_s": round(counts["read"] / seconds) if seconds > 0 else 0}


# ---- the Cloud Run function ------------------------------------------------------------------------------------------

class BridgeSettings(BaseSettings):
    """The function's environment (FINOPS_BRIDGE_*): where to publish, which objects to take."""

    model_config = SettingsConfigDict(env_prefix="FINOPS_BRIDGE_", extra="ignore")

    bootstrap: str = Field(min_length=1)  # the Kafka cluster, HOST:PORT[,HOST:PORT]
    topic: str = "billing-events"
    dead_letter_topic: str = "billing-events-dlq"
    marker_topic: str = ""  # default: TOPIC-bridge-markers
    prefix: str = ""  # only objects whose name starts with it (the export's folder)
    kafka_properties: dict[str, str] = {}  # extra librdkafka settings (JSON), e.g. security.protocol, sasl.*
    sasl_password: SecretStr | None = None  # from Secret Manager (--set-secrets), never in kafka_properties

    def client_properties(self) -> dict[str, str]:
        props = dict(self.kafka_properties)
        if self.sasl_password is not None:
            props["sasl.password"] = self.sasl_password.get_secret_value()
        return props


def load_settings() -> BridgeSettings:
    try:
        return BridgeSettings()
    except ValidationError as exc:
        err = exc.errors()[0]
        name = "FINOPS_BRIDGE_" + str(err["loc"][0]).upper() if err["loc"] else "FINOPS_BRIDGE_*"
        raise FinopsError(f"The environment variable {name} is invalid ({err['msg']}); set it on the function "
                          "(gcloud functions deploy ... --set-env-vars).") from None


def handle_finalize(data: dict | bytes | str, settings: BridgeSettings | None = None, storage=None) -> dict:
    """What the function does with the data of a `google.cloud.storage.object.v1.finalized` CloudEvent (the
    object's resource: bucket, name, generation, ...): bridge that generation, or skip an object that is no billing
    export file (another suffix, outside FINOPS_BRIDGE_PREFIX)."""
    settings = settings or load_settings()
    if isinstance(data, (bytes, str)):
        data = json.loads(data)
    bucket, name, generation = data["bucket"], data["name"], str(data["generation"])
    uri = f"gs://{bucket}/{name}"
    if not name.startswith(settings.prefix) or not name.lower().endswith(SUFFIXES):
        result = {"object": uri, "generation": generation, "skipped": True,
                  "reason": "not a billing export file (suffix or FINOPS_BRIDGE_PREFIX)"}
    else:
        result = bridge(uri, settings.bootstrap, settings.topic, settings.dead_letter_topic,
                        settings.marker_topic or None, generation=generation,
                        properties=settings.client_properties(), storage=storage)
    # One JSON line on stdout: Cloud Run turns it into a structured log entry.
    print(json.dumps({"severity": "INFO", "message": f"finops-bridge {uri}#{generation}",
                      **{k: v for k, v in result.items() if k != "marker"}}), flush=True)
    return result
