"""The export -> Kafka bridge: a billing export file in a bucket published to the billing topic, once.

A real Kafka-protocol broker (the session's Tansu broker, or KAFKA_BOOTSTRAP) and the real google-cloud-storage
client pointed at the recording fake of the GCS JSON API (testsupport/fake_gcp.py) through STORAGE_EMULATOR_HOST.
The function itself runs under functions-framework and receives a CloudEvent over HTTP, as on Cloud Run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

confluent_kafka = pytest.importorskip("confluent_kafka")

from finops_ml.data.bridge import BridgeSettings, bridge, handle_finalize  # noqa: E402
from finops_ml.data.events import BillingEvent, event_id  # noqa: E402
from finops_ml.data.kafka_io import cell_key_of  # noqa: E402
from finops_ml.errors import FinopsError  # noqa: E402
from testsupport import cli  # noqa: E402
from testsupport.fake_gcp import FakeGCP  # noqa: E402
from testsupport.net import free_port, wait_for_port  # noqa: E402

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parent.parent
FOCUS_SAMPLE = ROOT.parent / "shared" / "data" / "focus-1.0-sample" / "focus_sample_1000.csv"


def _topic(name: str) -> str:
    return f"test-bridge-{name}-{uuid.uuid4().hex[:8]}"


def _messages(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[dict]:
    """Every committed message of `topic`, read to the end of each partition."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False, "enable.partition.eof": True, "log_level": 0,
                         "isolation.level": "read_committed", "fetch.wait.max.ms": 50})
    try:
        meta = consumer.list_topics(topic, timeout=10)
        if topic not in meta.topics or meta.topics[topic].error is not None:
            return []
        partitions = list(meta.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        out, ended = [], set()
        deadline = time.monotonic() + timeout_s
        while len(ended) < len(partitions):
            assert time.monotonic() < deadline, f"{topic} was not read to its end"
            for msg in consumer.consume(1000, timeout=0.2):
                if msg.error() is not None:
                    assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error().str()
                    ended.add(msg.partition())
                    continue
                out.append({"partition": msg.partition(), "key": msg.key(), "value": msg.value(),
                            "headers": {k: v.decode() for k, v in (msg.headers() or [])}})
        return out
    finally:
        consumer.close()


@pytest.fixture
def gcs(monkeypatch):
    fake = FakeGCP()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake.endpoint)
    yield fake
    fake.close()


@pytest.fixture
def export_jsonl(small_generated) -> bytes:
    """A few hundred export rows (JSONL), as a billing export file holds them."""
    return b"".join((small_generated / "events.jsonl").read_bytes().splitlines(keepends=True)[:400])


def _settings(bootstrap: str, topic: str) -> BridgeSettings:
    return BridgeSettings(bootstrap=bootstrap, topic=topic, dead_letter_topic=f"{topic}-dlq")


def _finalized(bucket: str, name: str, generation: int) -> dict:
    """The data of a google.cloud.storage.object.v1.finalized CloudEvent (the object's resource)."""
    return {"kind": "storage#object", "bucket": bucket, "name": name, "generation": str(generation),
            "metageneration": "1", "contentType": "application/octet-stream", "size": "1"}


def _check_keys_and_ids(messages: list[dict]) -> None:
    """Keyed as `replay` keys (series), the event id in its header, one partition per series."""
    partition_of: dict[bytes, int] = {}
    for m in messages:
        event = BillingEvent.model_validate_json(m["value"])
        assert m["key"] == cell_key_of(event)
        assert m["headers"]["event_id"] == event_id(event)
        assert partition_of.setdefault(m["key"], m["partition"]) == m["partition"]


@pytest.mark.gcp
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_finalized_object_is_published_once_keyed_by_series(kafka_bootstrap, gcs, export_jsonl, fmt, tmp_path):
    topic = _topic(fmt)
    data = export_jsonl
    if fmt == "parquet":
        import pyarrow.json as pj
        import pyarrow.parquet as pq

        from finops_ml.data.ingest import conform

        (tmp_path / "e.jsonl").write_bytes(export_jsonl)
        pq.write_table(conform(pj.read_json(tmp_path / "e.jsonl")), tmp_path / "e.parquet")
        data = (tmp_path / "e.parquet").read_bytes()
    name = f"billing/2025-09/export-000.{fmt}"
    generation = gcs.put_object("acme-billing-exports", name, data)
    event = _finalized("acme-billing-exports", name, generation)

    first = handle_finalize(event, _settings(kafka_bootstrap, topic))
    assert (first["skipped"], first["read"], first["rows"], first["dead_letters"]) == (False, 400, 400, 0)
    assert first["generation"] == str(generation)
    messages = _messages(kafka_bootstrap, topic)
    assert len(messages) == 400
    _check_keys_and_ids(messages)
    expected_ids = sorted(event_id(BillingEvent.model_validate_json(line)) for line in export_jsonl.splitlines())
    assert sorted(m["headers"]["event_id"] for m in messages) == expected_ids
    # The generation asked for was downloaded, and only it.
    downloads = gcs.sent("GET", r"^/download/storage/v1/b/acme-billing-exports/o/")
    assert downloads and all(d["query"].get("generation") == str(generation) for d in downloads)

    # Eventarc delivers the same event again: nothing is published twice.
    again = handle_finalize(event, _settings(kafka_bootstrap, topic))
    assert again["skipped"] and again["rows"] == 400
    assert len(_messages(kafka_bootstrap, topic)) == 400
    assert _messages(kafka_bootstrap, f"{topic}-dlq") == []
    markers = _messages(kafka_bootstrap, f"{topic}-bridge-markers")
    assert [m["key"] for m in markers] == [f"gs://acme-billing-exports/{name}#{generation}".encode()]
    assert json.loads(markers[0]["value"])["rows"] == 400

    # The export rewrites the object: a new generation is a new file (its rows carry the same event ids).
    newer = gcs.put_object("acme-billing-exports", name, data)
    third = handle_finalize(_finalized("acme-billing-exports", name, newer), _settings(kafka_bootstrap, topic))
    assert not third["skipped"] and third["generation"] == str(newer)
    assert len(_messages(kafka_bootstrap, topic)) == 800


@pytest.mark.gcp
def test_objects_that_are_no_export_file_are_skipped(kafka_bootstrap, gcs):
    settings = BridgeSettings(bootstrap=kafka_bootstrap, topic=_topic("skip"), prefix="billing/")
    gcs.put_object("b", "billing/readme.txt", b"hello")
    gcs.put_object("b", "other/x.jsonl", b"{}")
    assert handle_finalize(_finalized("b", "billing/readme.txt", 1), settings)["skipped"]
    assert handle_finalize(_finalized("b", "other/x.jsonl", 1), settings)["skipped"]
    assert not gcs.sent("GET", r"^/download/")


def test_a_malformed_file_dead_letters_its_bad_rows_with_reasons_and_the_counts_balance(
        kafka_bootstrap, billing_record, tmp_path):
    topic = _topic("bad")
    good = [billing_record(cost=float(i), export_time=f"2025-09-02T07:{i:02d}:00Z") for i in range(5)]
    lines = [json.dumps(good[0]), "{not json", json.dumps(good[1]),
             json.dumps(billing_record(currency="XXX")), json.dumps(good[2]),
             json.dumps({k: v for k, v in billing_record().items() if k != "sku"}), json.dumps(good[3]),
             json.dumps(billing_record(cost_type="refund")), json.dumps(good[4])]
    path = tmp_path / "export.jsonl"
    path.write_text("\n".join(lines) + "\n")

    s = bridge(str(path), kafka_bootstrap, topic)
    assert (s["read"], s["rows"], s["dead_letters"]) == (9, 5, 4) and s["read"] == s["rows"] + s["dead_letters"]
    rows = _messages(kafka_bootstrap, topic)
    assert sorted(BillingEvent.model_validate_json(m["value"]).cost for m in rows) == [0.0, 1.0, 2.0, 3.0, 4.0]
    _check_keys_and_ids(rows)
    dead = _messages(kafka_bootstrap, f"{topic}-dlq")
    by_line = {m["headers"]["source.location"]: m for m in dead}
    assert sorted(by_line, key=int) == ["2", "4", "6", "8"]
    assert all(m["headers"]["error.kind"] == "invalid" and m["key"] is None for m in dead)
    assert all(m["headers"]["source.object"] == str(path.resolve()) for m in dead)
    assert by_line["2"]["headers"]["error.reason"].startswith("invalid JSON")
    assert by_line["2"]["value"] == b"{not json"  # as it was read
    assert "unknown currency 'XXX'" in by_line["4"]["headers"]["error.reason"]
    assert by_line["6"]["headers"]["error.reason"].startswith("sku")
    assert by_line["8"]["headers"]["error.reason"].startswith("cost_type")
    assert json.loads(by_line["4"]["value"])["currency"] == "XXX"

    # Bridging the same file again (same content) sends nothing; changed content is a new file.
    assert bridge(str(path), kafka_bootstrap, topic)["skipped"]
    assert (len(_messages(kafka_bootstrap, topic)), len(_messages(kafka_bootstrap, f"{topic}-dlq"))) == (5, 4)


def test_an_unreadable_file_is_one_dead_letter_not_endless_retries(kafka_bootstrap, export_jsonl, tmp_path):
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    from finops_ml.data.ingest import conform

    topic = _topic("corrupt")
    (tmp_path / "e.jsonl").write_bytes(export_jsonl)
    pq.write_table(conform(pj.read_json(tmp_path / "e.jsonl")), tmp_path / "full.parquet")
    data = (tmp_path / "full.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    s = bridge(str(tmp_path / "cut.parquet"), kafka_bootstrap, topic)
    assert (s["rows"], s["dead_letters"]) == (0, 1) and "cannot be read" in s["unreadable"]
    dead = _messages(kafka_bootstrap, f"{topic}-dlq")
    assert [m["headers"]["error.kind"] for m in dead] == ["unreadable"]
    assert bridge(str(tmp_path / "cut.parquet"), kafka_bootstrap, topic)["skipped"]


@pytest.mark.skipif(not FOCUS_SAMPLE.exists(), reason="FOCUS sample data not present")
def test_a_focus_csv_is_published_as_export_rows(kafka_bootstrap):
    topic = _topic("focus")
    s = bridge(str(FOCUS_SAMPLE), kafka_bootstrap, topic)
    assert s["read"] == s["rows"] + s["dead_letters"] and s["rows"] > 0
    messages = _messages(kafka_bootstrap, topic)
    assert len(messages) == s["rows"]
    _check_keys_and_ids(messages)


@pytest.mark.unit
def test_the_transactional_id_fences_per_object_generation():
    from finops_ml.data.bridge import ObjectRef

    a, b = ObjectRef("gs://b/x.jsonl", "1"), ObjectRef("gs://b/x.jsonl", "2")
    assert a.transactional_id == ObjectRef("gs://b/x.jsonl", "1").transactional_id != b.transactional_id


@pytest.mark.cli
@pytest.mark.gcp
def test_the_cli_bridges_a_gs_object_and_then_sends_nothing(kafka_bootstrap, gcs, export_jsonl, monkeypatch):
    topic = _topic("cli")
    gcs.put_object("exports", "day/export.jsonl", export_jsonl)
    first = cli.finops_ml("bridge", "gs://exports/day/export.jsonl", "--bootstrap", kafka_bootstrap, "--topic", topic)
    assert first.returncode == 0, first.stderr
    assert "400 of 400 rows" in first.stdout and "0 dead letters" in first.stdout
    second = cli.finops_ml("bridge", "gs://exports/day/export.jsonl", "--bootstrap", kafka_bootstrap, "--topic", topic)
    assert second.returncode == 0 and "nothing sent" in second.stdout
    assert len(_messages(kafka_bootstrap, topic)) == 400


@pytest.mark.cli
@pytest.mark.gcp
def test_cli_errors_are_one_sentence(kafka_bootstrap, gcs, tmp_path):
    missing = cli.one_error_sentence(cli.finops_ml("bridge", str(tmp_path / "nope.jsonl"), "--bootstrap",
                                                   kafka_bootstrap, "--topic", "t"))
    assert "does not exist" in missing
    (tmp_path / "x.txt").write_text("x")
    assert "neither JSONL" in cli.one_error_sentence(cli.finops_ml("bridge", str(tmp_path / "x.txt"), "--bootstrap",
                                                                    kafka_bootstrap, "--topic", "t"))
    gone = cli.one_error_sentence(cli.finops_ml("bridge", "gs://exports/none.jsonl", "--bootstrap", kafka_bootstrap,
                                                "--topic", "t"))
    assert "gs://exports/none.jsonl does not exist" in gone
    (tmp_path / "ok.jsonl").write_text("{}\n")
    port = free_port()
    down = cli.one_error_sentence(cli.finops_ml("bridge", str(tmp_path / "ok.jsonl"), "--bootstrap",
                                                f"127.0.0.1:{port}", "--topic", "t", timeout=60))
    assert f"No Kafka broker at 127.0.0.1:{port}" in down


@pytest.mark.unit
def test_a_missing_bootstrap_setting_names_the_variable(monkeypatch):
    from finops_ml.data.bridge import load_settings

    monkeypatch.delenv("FINOPS_BRIDGE_BOOTSTRAP", raising=False)
    with pytest.raises(FinopsError, match="FINOPS_BRIDGE_BOOTSTRAP"):
        load_settings()


@pytest.mark.cli
@pytest.mark.gcp
def test_the_cloud_run_function_under_functions_framework(kafka_bootstrap, gcs, export_jsonl, tmp_path):
    """deploy/bridge/main.py served by functions-framework, a CloudEvent POSTed as Eventarc does (binary mode)."""
    pytest.importorskip("functions_framework")
    import urllib.request

    topic = _topic("fn")
    generation = gcs.put_object("acme-billing-exports", "billing/export.jsonl", export_jsonl)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "FINOPS_BRIDGE_BOOTSTRAP": kafka_bootstrap, "FINOPS_BRIDGE_TOPIC": topic,
           "FINOPS_BRIDGE_DEAD_LETTER_TOPIC": f"{topic}-dlq", "FINOPS_BRIDGE_PREFIX": "billing/"}
    log = open(tmp_path / "function.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "functions_framework", "--source",
                             str(ROOT / "deploy" / "bridge" / "main.py"), "--target", "bridge", "--signature-type",
                             "cloudevent", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        assert wait_for_port(port, 60, proc), (tmp_path / "function.log").read_text()

        def deliver(event_id: str) -> int:
            body = json.dumps(_finalized("acme-billing-exports", "billing/export.jsonl", generation)).encode()
            request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=body, method="POST", headers={
                "Content-Type": "application/json", "ce-specversion": "1.0", "ce-id": event_id,
                "ce-source": "//storage.googleapis.com/projects/_/buckets/acme-billing-exports",
                "ce-type": "google.cloud.storage.object.v1.finalized", "ce-subject": "objects/billing/export.jsonl",
                "ce-time": "2026-11-24T00:00:00Z"})
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status

        assert deliver("1234") == 200
        assert len(_messages(kafka_bootstrap, topic)) == 400
        assert deliver("1234") == 200  # redelivered
        assert len(_messages(kafka_bootstrap, topic)) == 400
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    text = (tmp_path / "function.log").read_text()
    entries = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert [(e["skipped"], e["rows"]) for e in entries] == [(False, 400), (True, 400)], text
