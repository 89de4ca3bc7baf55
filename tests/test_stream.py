"""The stream: alert delivery (outbox, retries, slow channels), the processor on a real broker (dead letters,
snapshots with offsets, no duplicate alert after a restart), and `finops-ml stream` as a process.

A Tansu broker runs for the session (conftest.py); a webhook server (http.server) and an SMTP server (aiosmtpd)
run on 127.0.0.1 and record what they receive. The processor tests here use `ToyState`, a small detector that
keeps the real-time detector's contract (per-cell daily totals, a watermark with lateness, ids at most once,
`InvalidEvent` for bad events), so that they are quick and say exactly which alerts to expect.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import statistics
import threading
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("confluent_kafka")

from finops_ml.config import StreamConfig  # noqa: E402
from finops_ml.data.kafka_io import replay  # noqa: E402
from finops_ml.fileio import atomic_path  # noqa: E402
from finops_ml.stream.alerts import (  # noqa: E402
    AlertDispatcher,
    Outbox,
    RedactSecrets,
    RetryPolicy,
    email_sender,
    senders_from_config,
    slack_sender,
)
from finops_ml.stream.consumer import StreamMetrics, StreamProcessor, read_alert_ids  # noqa: E402
from testsupport import cli  # noqa: E402
from testsupport.alerts import Webhook, smtp_recorder  # noqa: E402
from testsupport.net import free_port  # noqa: E402

# ---------------------------------------------------------------------------------------------------------------
# A toy detector with the real-time contract


class ToyInvalid(ValueError):
    pass


class ToyState:
    """Daily totals per (service, project); a day closes when the watermark passes it by `lateness_days`; a closed
    cell is an anomaly when it exceeds 1.5x the median of its last 7 closed days (at least 5 of them) plus $1."""

    def __init__(self, lateness_days: int = 1):
        self.lateness = lateness_days
        self.open: dict[tuple[str, str, str], float] = {}
        self.history: dict[tuple[str, str], list[float]] = {}
        self.watermark = ""
        self.emitted: set[str] = set()
        self.counters = {"events": 0, "late_events": 0, "open_cells": 0}

    @classmethod
    def from_detector(cls, detector, lateness_days: int = 1) -> "ToyState":
        return cls(lateness_days)

    def save(self, path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_bytes(pickle.dumps(self))

    @classmethod
    def load(cls, path) -> "ToyState":
        return pickle.loads(Path(path).read_bytes())

    def _close(self, before: str) -> list[dict]:
        out = []
        for key in sorted(k for k in self.open if k[0] < before):
            day, service, project = key
            total = self.open.pop(key)
            past = self.history.setdefault((service, project), [])
            expected = statistics.median(past[-7:]) if len(past) >= 5 else None
            past.append(total)
            anomaly_id = f"{day}|{service}|{project}"
            if expected is not None and total > 1.5 * expected + 1 and anomaly_id not in self.emitted:
                self.emitted.add(anomaly_id)
                out.append({"anomaly_id": anomaly_id, "day": day, "service": service, "project_id": project,
                            "actual": total, "expected": expected, "impact": total - expected, "score": 1.0,
                            "threshold": 0.5, "cause": {"resource": None, "sku": None, "labels": {}, "share": 1.0},
                            "detected_at": "now"})
        self.counters["open_cells"] = len(self.open)
        return out

    def flush(self) -> list[dict]:
        return self._close("9999")


def _day_minus(day: str, n: int) -> str:
    from datetime import date, timedelta

    return (date.fromisoformat(day) - timedelta(days=n)).isoformat()


def toy_detect(event: dict, state: ToyState) -> list[dict]:
    if event.get("boom"):
        raise RuntimeError("a bug in the detector")
    try:
        day = event["usage_start_time"][:10]
        service = event["service"]["description"]
        project = event["project"]["id"]
        cost = float(event["cost"]) + sum(c["amount"] for c in event.get("credits") or [])
    except (KeyError, TypeError, ValueError) as exc:
        raise ToyInvalid(f"missing or malformed field {exc}") from None
    state.counters["events"] += 1
    if event.get("cost_type", "regular") != "regular":
        return []
    if state.watermark and day < _day_minus(state.watermark, state.lateness):
        state.counters["late_events"] += 1
        return []
    key = (day, service, project)
    state.open[key] = state.open.get(key, 0.0) + cost
    if day > state.watermark:
        state.watermark = day
        return state._close(_day_minus(day, state.lateness))
    return []


def toy_expected(lines: list[bytes]) -> set[str]:
    """The anomaly ids ToyState raises on these events, in one state (per-cell decisions do not depend on
    which other cells share a state, as long as each cell's events keep their order)."""
    state, ids = ToyState(), set()
    for line in lines:
        try:
            ids |= {a["anomaly_id"] for a in toy_detect(json.loads(line), state)}
        except (ToyInvalid, json.JSONDecodeError, AttributeError, TypeError, RuntimeError):
            pass
    return ids | {a["anomaly_id"] for a in state.flush()}


# ---------------------------------------------------------------------------------------------------------------
# Servers that receive the alerts


@pytest.fixture
def webhook():
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture
def smtp_server():
    with smtp_recorder() as (controller, handler):
        yield controller, handler


def _alert(i: int) -> dict:
    return {"anomaly_id": f"a{i}", "day": "2025-10-01", "service": "Compute Engine", "project_id": "p1",
            "actual": 120.0 + i, "expected": 40.0, "impact": 80.0 + i, "score": 2.0, "threshold": 1.0,
            "cause": {"resource": "vm-1", "sku": "N2 core", "labels": {"owner": "a"}, "share": 0.9},
            "detected_at": "2025-10-02T00:00:00Z"}


def _wait(predicate, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------------------------
# Delivery


@pytest.mark.unit
def test_slack_and_email_receive_the_alert_with_cause_impact_and_id(tmp_path, webhook, smtp_server):
    controller, handler = smtp_server
    senders = {"slack": slack_sender(webhook.url, 5.0),
               "email": email_sender("127.0.0.1", controller.port, "finops@acme.test", ["oncall@acme.test"], 5.0)}
    dispatcher = AlertDispatcher(Outbox(tmp_path / "outbox.jsonl"), senders).start()
    assert dispatcher.submit(_alert(1)) is True
    assert dispatcher.submit(_alert(1)) is False  # the same anomaly is not delivered twice
    assert dispatcher.close(10) == {"slack": 0, "email": 0}
    assert webhook.ids() == ["a1"]
    text = webhook.received[0]["text"]
    assert "Compute Engine" in text and "p1" in text and "$121.00" in text and "$81.00 over" in text
    assert "vm-1" in json.dumps(webhook.received[0]["blocks"])
    [mail] = handler.messages
    assert mail["To"] == "oncall@acme.test" and mail["X-Finops-Anomaly-Id"] == "a1"
    assert "cause: resource vm-1, sku N2 core, 90% of the rise" in mail.get_payload()


@pytest.mark.unit
def test_an_alert_says_its_direction_and_deviation():
    from finops_ml.stream.alerts import alert_text

    rise = alert_text({**_alert(1), "direction": "up", "pct_deviation": 202.5})
    assert "($81.00 over, +202%)" in rise and "impact $81.00, +202% (score 2 >= threshold 1)" in rise
    drop = alert_text({**_alert(2), "actual": 0.0, "impact": -40.0, "direction": "down", "pct_deviation": -100.0,
                       "cause": {"resource": "vm-1", "sku": "N2 core", "share": 1.0}})
    assert "$0.00 against $40.00 expected ($40.00 under, -100%)" in drop and "100% of the drop" in drop


@pytest.mark.unit
def test_failed_deliveries_are_retried_then_kept_pending_and_sent_on_the_next_start(tmp_path, webhook):
    webhook.fail = True
    attempts = []
    dispatcher = AlertDispatcher(Outbox(tmp_path / "outbox.jsonl"), {"slack": slack_sender(webhook.url, 5.0)},
                                 RetryPolicy(attempts=3, backoff_s=0.01),
                                 on_result=lambda c, ok, s: attempts.append(ok)).start()
    dispatcher.submit(_alert(1))
    _wait(lambda: dispatcher.failed["slack"] == 1, what="retries to be exhausted")
    assert attempts == [False, False, False]
    assert dispatcher.close(1) == {"slack": 1}
    assert [a["anomaly_id"] for a in Outbox(tmp_path / "outbox.jsonl").pending("slack")] == ["a1"]

    webhook.fail = False
    again = AlertDispatcher(Outbox(tmp_path / "outbox.jsonl"), {"slack": slack_sender(webhook.url, 5.0)}).start()
    assert again.submit(_alert(1)) is False  # known: re-detection after a restart does not queue it twice
    assert again.close(10) == {"slack": 0}
    assert webhook.ids() == ["a1"]
    third = Outbox(tmp_path / "outbox.jsonl")
    assert third.pending("slack") == [] and "a1" in third


@pytest.mark.unit
def test_a_slow_channel_does_not_hold_up_the_other(tmp_path, webhook, smtp_server):
    controller, handler = smtp_server
    webhook.release.clear()  # Slack hangs until released
    senders = {"slack": slack_sender(webhook.url, 30.0),
               "email": email_sender("127.0.0.1", controller.port, "f@acme.test", ["o@acme.test"], 5.0)}
    dispatcher = AlertDispatcher(Outbox(tmp_path / "outbox.jsonl"), senders).start()
    for i in range(3):
        dispatcher.submit(_alert(i))
    _wait(lambda: len(handler.messages) == 3, what="the emails")
    assert webhook.received == [] and dispatcher.pending("slack") == 3
    webhook.release.set()
    dispatcher.close(10)
    assert sorted(webhook.ids()) == ["a0", "a1", "a2"]


# ---------------------------------------------------------------------------------------------------------------
# The processor on a real broker


def _topic(name: str) -> str:
    return f"stream-{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def sorted_events(tmp_path_factory, small_generated) -> Path:
    """The small organisation's events in time order, as a billing export would arrive."""
    lines = (small_generated / "events.jsonl").read_text().splitlines()
    lines.sort(key=lambda line: json.loads(line)["usage_start_time"])
    path = tmp_path_factory.mktemp("stream") / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _settings(bootstrap: str, topic: str, state_dir: Path, **kw) -> StreamConfig:
    return StreamConfig(bootstrap=bootstrap, topic=topic, alerts_topic=f"{topic}-alerts",
                        dead_letter_topic=f"{topic}-dlq", group=f"{topic}-group", state_dir=str(state_dir),
                        **{"checkpoint_interval_s": 0.5, "until_end": True, "session_timeout_ms": 2000, **kw})


def _processor(settings: StreamConfig, dispatcher=None) -> StreamProcessor:
    return StreamProcessor(settings, new_state=ToyState, load_state=ToyState.load, detect=toy_detect,
                           invalid_event=ToyInvalid, dispatcher=dispatcher, metrics=StreamMetrics())


def _messages(bootstrap: str, topic: str) -> list:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    from finops_ml.data.kafka_io import check_reachable

    partitions = list(check_reachable(bootstrap).topics[topic].partitions)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "check", "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    out, open_ = [], set(partitions)
    deadline = time.monotonic() + 15
    while open_ and time.monotonic() < deadline:
        for m in consumer.consume(500, timeout=0.5):
            if m.error() is None:
                out.append(m)
            elif m.error().code() == KafkaError._PARTITION_EOF:
                open_.discard(m.partition())
    consumer.close()
    return out


@pytest.mark.kafka
def test_stream_publishes_each_anomaly_once_and_dead_letters_bad_events(kafka_bootstrap, sorted_events, tmp_path,
                                                                        webhook, smtp_server):
    controller, handler = smtp_server
    topic = _topic("dlq")
    lines = sorted_events.read_bytes().splitlines()
    bad = [b"{not json", b"[1, 2]", b'{"service": {"description": "BigQuery"}}', b'{"boom": true}']
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(b"\n".join(lines[:3000] + bad + lines[3000:]) + b"\n")
    replay(mixed, kafka_bootstrap, topic, partitions=3, order="file")  # the toy closes days on usage time
    expected = toy_expected(lines)
    assert len(expected) >= 3  # the data does hold anomalies for this test to see

    senders = {"slack": slack_sender(webhook.url, 5.0),
               "email": email_sender("127.0.0.1", controller.port, "f@acme.test", ["o@acme.test"], 5.0)}
    dispatcher = AlertDispatcher(Outbox(tmp_path / "state" / "outbox.jsonl"), senders).start()
    settings = _settings(kafka_bootstrap, topic, tmp_path / "state", alert_link="https://finops.test/a/{anomaly_id}")
    processor = _processor(settings, dispatcher)
    summary = processor.run()
    assert dispatcher.close(10) == {"slack": 0, "email": 0}

    assert summary["reached_end"] and summary["events"] == len(lines) + len(bad)
    assert summary["dead_letters"] == 4 and summary["state_counters"]["events"] == len(lines)
    alerts = _messages(kafka_bootstrap, settings.alerts_topic)
    ids = [m.key().decode() for m in alerts]
    assert sorted(ids) == sorted(expected)  # every anomaly, once
    first = json.loads(alerts[0].value())
    assert first["link"] == f"https://finops.test/a/{first['anomaly_id']}" and first["source"]["topic"] == topic
    assert sorted(webhook.ids()) == sorted(expected)
    assert sorted(m["X-Finops-Anomaly-Id"] for m in handler.messages) == sorted(expected)

    dead = _messages(kafka_bootstrap, settings.dead_letter_topic)
    assert sorted(m.value() for m in dead) == sorted(bad)
    reasons = {m.value(): dict(m.headers()) for m in dead}
    assert reasons[b"{not json"][b"error.reason".decode()].startswith(b"invalid JSON")
    assert b"not a billing event" in reasons[b"[1, 2]"]["error.reason"]
    assert b"missing or malformed field" in reasons[bad[2]]["error.reason"]
    assert reasons[bad[3]]["error.reason"] == b"the detector failed on this event (RuntimeError: a bug in the detector)"
    assert reasons[b"[1, 2]"]["source.topic"] == topic.encode()

    from prometheus_client import generate_latest

    text = generate_latest(processor.metrics.registry).decode()
    assert f"finops_stream_events_total {float(len(lines) + 4)}" in text
    assert f"finops_stream_alerts_total {float(len(expected))}" in text
    assert "finops_stream_dead_letters_total 4.0" in text
    assert 'finops_stream_errors_total{kind="detector"} 1.0' in text
    for p in range(3):  # consumed to the end: no lag on any partition
        assert f'finops_stream_consumer_lag{{partition="{p}"}} 0.0' in text
    assert f"finops_stream_detection_latency_seconds_count {float(len(expected))}" in text


@pytest.mark.kafka
def test_restart_resumes_from_the_snapshot_and_repeats_no_alert(kafka_bootstrap, sorted_events, tmp_path, webhook):
    """A first run stops half-way (state snapshot + offsets); a run that lost its snapshot's last part re-detects
    alerts already published, and publishes none of them again."""
    topic = _topic("restart")
    lines = sorted_events.read_bytes().splitlines()
    half = tmp_path / "half.jsonl"
    half.write_bytes(b"\n".join(lines[: len(lines) // 2]) + b"\n")
    rest = tmp_path / "rest.jsonl"
    rest.write_bytes(b"\n".join(lines[len(lines) // 2:]) + b"\n")
    expected = toy_expected(lines)

    replay(half, kafka_bootstrap, topic, partitions=2, order="file")
    state_dir = tmp_path / "state"
    settings = _settings(kafka_bootstrap, topic, state_dir, until_end=False)
    outbox = tmp_path / "outbox.jsonl"
    dispatcher = AlertDispatcher(Outbox(outbox), {"slack": slack_sender(webhook.url, 5.0)}).start()
    first = _processor(settings, dispatcher)
    thread = threading.Thread(target=first.run)
    thread.start()
    _wait(lambda: first.counts["events"] >= len(lines) // 2, what="the first half")
    first.stop()
    thread.join(20)
    dispatcher.close(10)
    snapshots = {p: json.loads((state_dir / topic / f"p{p}.json").read_text())["offset"] for p in (0, 1)}
    assert sum(snapshots.values()) == len(lines) // 2  # the snapshots cover exactly what was processed
    published_first = read_alert_ids(kafka_bootstrap, settings.alerts_topic)
    assert published_first  # some alerts were raised in the first half

    # Lose the snapshot of partition 0: its events are processed again from the start and re-raise its alerts.
    for f in (state_dir / topic).glob("p0*"):
        f.unlink()
    replay(rest, kafka_bootstrap, topic, partitions=2, order="file")
    dispatcher = AlertDispatcher(Outbox(outbox), {"slack": slack_sender(webhook.url, 5.0)}).start()
    second = _processor(_settings(kafka_bootstrap, topic, state_dir), dispatcher)
    summary = second.run()
    dispatcher.close(10)
    assert summary["duplicates"] > 0  # re-detected ...
    ids = [m.key().decode() for m in _messages(kafka_bootstrap, settings.alerts_topic)]
    assert sorted(ids) == sorted(expected)  # ... but published once, and none lost
    assert sorted(webhook.ids()) == sorted(expected)


@pytest.mark.kafka
def test_a_hanging_webhook_does_not_stall_the_stream(kafka_bootstrap, sorted_events, tmp_path, webhook):
    """Slack hangs on every request: the stream still consumes everything and publishes every alert to the
    alerts topic; the Slack deliveries stay pending in the outbox for the next start."""
    webhook.release.clear()
    topic = _topic("slow")
    lines = sorted_events.read_bytes().splitlines()
    replay(sorted_events, kafka_bootstrap, topic, partitions=3, order="file")
    expected = toy_expected(lines)
    outbox = tmp_path / "outbox.jsonl"
    dispatcher = AlertDispatcher(Outbox(outbox), {"slack": slack_sender(webhook.url, 30.0)}).start()
    settings = _settings(kafka_bootstrap, topic, tmp_path / "state")
    summary = _processor(settings, dispatcher).run()
    assert summary["reached_end"] and summary["events"] == len(lines)
    assert sorted(read_alert_ids(kafka_bootstrap, settings.alerts_topic)) == sorted(expected)
    assert webhook.received == []  # nothing got through while the stream finished
    assert dispatcher.close(0.2) == {"slack": len(expected)}
    assert len(Outbox(outbox).pending("slack")) == len(expected)  # kept for the next start
    webhook.release.set()


@pytest.mark.unit
def test_k8s_manifests_wire_config_secret_state_and_metrics():
    import yaml

    from finops_ml.config import Config

    root = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
    docs = {}
    for path in sorted(root.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[(doc["kind"], doc.get("metadata", {}).get("name"))] = doc
    listed = set(docs[("Kustomization", None)]["resources"])
    assert listed == {p.name for p in root.glob("*.yaml")} - {"kustomization.yaml", "secret.yaml"}
    config_map = docs[("ConfigMap", "finops-ml-stream")]
    cfg = Config.model_validate(yaml.safe_load(config_map["data"]["stream.yaml"])).stream  # a valid config file
    deployment = docs[("Deployment", "finops-ml-stream")]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert container["command"] == ["finops-ml"] and container["args"][:1] == ["stream"]  # the image has no entrypoint
    config_path = container["args"][container["args"].index("--config") + 1]
    assert config_path == f"{mounts['config']}/stream.yaml"
    assert volumes["config"]["configMap"]["name"] == "finops-ml-stream"
    assert cfg.state_dir.startswith(mounts["state"]) and cfg.registry.startswith(mounts["state"])
    pvc = docs[("PersistentVolumeClaim", volumes["state"]["persistentVolumeClaim"]["claimName"])]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]  # partitions move between replicas with their snapshots
    secret = docs[("Secret", container["envFrom"][0]["secretRef"]["name"])]
    assert {cfg.slack_webhook_env, cfg.smtp_password_env} <= set(secret["stringData"])
    assert all(v == "" for v in secret["stringData"].values())  # no secret value committed
    assert container["ports"][0]["containerPort"] == cfg.metrics_port
    assert cfg.metrics_address == "0.0.0.0"  # the kubelet's probes and Prometheus come from outside the pod
    assert pod["terminationGracePeriodSeconds"] > cfg.drain_timeout_s + cfg.checkpoint_interval_s
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(cfg.metrics_port)
    hpa = docs[("HorizontalPodAutoscaler", "finops-ml-stream")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "finops-ml-stream"
    assert {m.get("pods", {}).get("metric", {}).get("name") for m in hpa["spec"]["metrics"]} >= {
        "finops_stream_consumer_lag"}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind, name in (("Service", "finops-ml-stream-metrics"), ("ServiceMonitor", "finops-ml-stream"),
                       ("PodMonitoring", "finops-ml-stream")):
        selector = docs[(kind, name)]["spec"]["selector"]
        assert (selector.get("matchLabels") or selector).items() <= labels.items()


# ---------------------------------------------------------------------------------------------------------------
# The real detector: `finops-ml stream` as a process, and batch / stream agreement

import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import urllib.request  # noqa: E402
from types import SimpleNamespace  # noqa: E402

SCRIPT = str(cli.SCRIPT)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_generated):
    """The small organisation's detector, trained as the pipeline does and registered in a local registry."""
    from finops_ml.config import Config
    from finops_ml.platform.registry import LocalRegistry
    from finops_ml.training.steps import features_step, ingest_step, train_anomaly_step

    work = tmp_path_factory.mktemp("stream-model")
    ingest_step(str(small_generated / "events.jsonl"), str(small_generated / "control_totals.csv"),
                str(work / "events"))
    features_step(str(work / "events"), str(work / "daily.parquet"), str(work / "resource_daily.parquet"),
                  str(work / "resources.parquet"))
    train_anomaly_step(str(work / "resource_daily.parquet"), str(work / "resources.parquet"),
                       str(small_generated / "truth" / "anomaly_cells.csv"), "", Config(), str(work / "model"),
                       str(work / "eval"))
    LocalRegistry(work / "registry").register("cost-anomaly", work / "model", {"anomaly_f1": 1.0}, "test", {})
    import joblib

    return SimpleNamespace(registry=work / "registry", resource_daily=work / "resource_daily.parquet",
                           resources=work / "resources.parquet", detector=joblib.load(work / "model" / "model.joblib"))


def _final_cells(alerts: list[dict]) -> set[tuple[str, str, str]]:
    """(day, service, project_id) of the anomalies that stand: raised (open or confirmed), not retracted."""
    raised = {(a["day"], a["service"], a["project_id"]) for a in alerts if a.get("status") != "retracted"}
    retracted = {(a["day"], a["service"], a["project_id"]) for a in alerts if a.get("status") == "retracted"}
    return raised - retracted


def _reference(bootstrap: str, topic: str, detector, flush: bool = True) -> tuple[set[str], int]:
    """What the stream must publish: one real-time state per partition over the topic's messages in offset order
    (alert keys; `flush`: with the open days closed at the end), and how many messages are billing events."""
    from finops_ml.models.realtime import InvalidEvent, RealtimeState, detect_anomaly_realtime
    from finops_ml.stream.alerts import alert_key

    states: dict[int, RealtimeState] = {}
    keys, valid = set(), 0
    for m in sorted(_messages(bootstrap, topic), key=lambda m: (m.partition(), m.offset())):
        if m.partition() not in states:
            states[m.partition()] = RealtimeState.from_detector(detector)
        state = states[m.partition()]
        try:
            event = json.loads(m.value())
            found = detect_anomaly_realtime(event, state)
        except (InvalidEvent, ValueError, AttributeError, TypeError):
            continue
        valid += 1
        keys |= {alert_key(a) for a in found}
    for state in states.values() if flush else ():
        keys |= {alert_key(a) for a in state.flush()}
    return keys, valid


def _keys(alerts: list) -> list[str]:
    """The alert key of each message of the alerts topic (from its key and headers)."""
    from finops_ml.stream.alerts import alert_key

    return [alert_key({"anomaly_id": m.key().decode(), "status": dict(m.headers())["finops.status"].decode(),
                       "revision": int(dict(m.headers()).get("finops.revision", b"0"))}) for m in alerts]


@pytest.mark.kafka
@pytest.mark.slow
def test_batch_and_stream_find_the_same_anomalies(kafka_bootstrap, sorted_events, trained, tmp_path):
    """Event-first: the events streamed through Kafka as the export delivers them (replay's default order) give the
    batch detector's anomalies: each confirmed once, by the anomaly id the batch writes, and none published twice."""
    import pandas as pd

    from finops_ml.models.realtime import InvalidEvent, RealtimeState, detect_anomaly_realtime

    topic = _topic("agree")
    replay(sorted_events, kafka_bootstrap, topic, partitions=3)
    settings = _settings(kafka_bootstrap, topic, tmp_path / "state")
    processor = StreamProcessor(settings, lambda: RealtimeState.from_detector(trained.detector),
                                RealtimeState.load, detect_anomaly_realtime, InvalidEvent, metrics=StreamMetrics())
    summary = processor.run()
    assert summary["reached_end"] and summary["dead_letters"] == 0 and summary["late"] == 0
    messages = _messages(kafka_bootstrap, settings.alerts_topic)
    keys = _keys(messages)
    assert len(keys) == len(set(keys))  # each message once
    alerts = [json.loads(m.value()) for m in messages]
    cells = trained.detector.score(pd.read_parquet(trained.resource_daily), pd.read_parquet(trained.resources))
    batch = {(str(d.date()), s, p) for d, s, p in cells.loc[cells.is_anomaly, ["day", "service", "project_id"]]
             .itertuples(index=False)}
    assert batch  # the data holds anomalies
    assert _final_cells(alerts) == batch
    confirmed = {a["anomaly_id"] for a in alerts if a["status"] == "confirmed"}
    assert confirmed == set(cells.loc[cells.is_anomaly, "anomaly_id"])  # the ids of anomalies.csv


def _second_champion(trained, tmp_path: Path, **settings) -> Path:
    """The trained detector with other settings, registered as v2 and promoted to champion; its model folder."""
    import joblib

    from finops_ml.platform.registry import LocalRegistry

    registry = tmp_path / "registry"
    import shutil

    shutil.copytree(trained.registry, registry)
    detector = joblib.load(trained.registry / "cost-anomaly" / "v1" / "model.joblib")
    for k, v in settings.items():
        setattr(detector, k, v)
    model = tmp_path / "model-v2"
    model.mkdir()
    joblib.dump(detector, model / "model.joblib")
    LocalRegistry(registry).register("cost-anomaly", model, {"anomaly_f1": 1.0}, "test-v2", {"start": "x"})
    LocalRegistry(registry).promote("cost-anomaly", 2)
    return registry


@pytest.mark.unit
@pytest.mark.slow
def test_the_champion_watcher_takes_up_a_new_champion_and_the_state_keeps_what_it_learnt(trained, sorted_events,
                                                                                          tmp_path):
    import shutil

    from finops_ml.models.realtime import RealtimeState, detect_anomaly_realtime
    from finops_ml.platform.registry import LocalRegistry
    from finops_ml.stream.consumer import ChampionWatcher

    registry = tmp_path / "registry"
    shutil.copytree(trained.registry, registry)
    now = [0.0]
    watcher = ChampionWatcher(registry, "champion", interval_s=60, clock=lambda: now[0])
    first = watcher.model
    state = RealtimeState(first)
    events = [json.loads(line) for line in sorted_events.read_text().splitlines()[:3000]]
    for e in events:
        detect_anomaly_realtime(e, state)
    learnt, days = dict(state.resources), set(state.days)
    now[0] = 61.0
    assert watcher.poll() is None  # same champion: nothing loaded again
    _second_champion(trained, tmp_path / "v2", min_pct_deviation=1000.0)
    shutil.rmtree(registry)
    shutil.copytree(tmp_path / "v2" / "registry", registry)
    assert LocalRegistry(registry).aliases("cost-anomaly")["champion"] == 2
    now[0] = 90.0
    assert watcher.poll() is None  # not yet time to look
    now[0] = 122.0
    second = watcher.poll()
    assert second is not None and second is watcher.model and second is not first
    assert watcher.model_dir.name == "v2" and second.min_pct_deviation == 1000.0
    state.use_model(second)
    assert state.model is second and set(state.days) == days and state.resources.keys() == learnt.keys()
    assert all(state.resources[k] is learnt[k] for k in learnt)  # the same filters, carried on


@pytest.mark.kafka
@pytest.mark.slow
def test_a_running_stream_takes_up_a_new_champion_without_clearing_its_state(kafka_bootstrap, sorted_events,
                                                                             trained, tmp_path):
    """A champion promoted while the stream runs is used from the next look-up on, by every partition's state;
    what is published is what the new champion decides (the reference run with it), nothing twice."""
    from finops_ml.models.realtime import InvalidEvent, RealtimeState, detect_anomaly_realtime
    from finops_ml.stream.consumer import ChampionWatcher

    registry = tmp_path / "registry"
    import shutil

    shutil.copytree(trained.registry, registry)
    watcher = ChampionWatcher(registry, "champion", interval_s=0.01)
    v1 = watcher.model
    topic = _topic("swap")
    replay(sorted_events, kafka_bootstrap, topic, partitions=2)
    _second_champion(trained, tmp_path / "v2", alarm_budget_up=0.05, threshold_up_=1.0)
    shutil.rmtree(registry)
    shutil.copytree(tmp_path / "v2" / "registry", registry)
    time.sleep(0.05)
    settings = _settings(kafka_bootstrap, topic, tmp_path / "state")
    processor = StreamProcessor(settings, lambda: RealtimeState(watcher.model), RealtimeState.load,
                                detect_anomaly_realtime, InvalidEvent, metrics=StreamMetrics(), champion=watcher)
    summary = processor.run()
    assert summary["model_swaps"] == 1 and watcher.model is not v1
    import joblib

    expected, _ = _reference(kafka_bootstrap, topic, joblib.load(watcher.model_dir / "model.joblib"))
    v1_keys, _ = _reference(kafka_bootstrap, topic, trained.detector)
    keys = _keys(_messages(kafka_bootstrap, settings.alerts_topic))
    assert len(keys) == len(set(keys))
    assert set(keys) == expected != v1_keys  # the new champion's decisions, not the old one's


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


class StreamProcess:
    """`finops-ml stream` as a subprocess, its /metrics port read from its first line of output."""

    def __init__(self, args: list[str], env: dict, log: Path):
        self.log = log
        start = log.stat().st_size if log.exists() else 0
        self.out = open(log, "ab")
        self.proc = subprocess.Popen([SCRIPT, "stream", *args], stdout=self.out, stderr=subprocess.STDOUT, env=env)
        self.port = None
        deadline = time.monotonic() + 60
        while self.port is None:
            text = log.read_bytes()[start:].decode()
            if "/metrics" in text:
                self.port = int(re.search(r"metrics on\s+\S*:(\d+)/metrics", text).group(1))
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the stream did not start: {text[-3000:]}")
            time.sleep(0.05)

    def events(self) -> float:
        return _metric(self.port, "finops_stream_events_total")

    def wait(self, timeout_s: float = 60) -> int:
        try:
            return self.proc.wait(timeout_s)
        finally:
            self.out.close()


def _half(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.kafka
@pytest.mark.cli
@pytest.mark.slow
def test_no_alert_lost_or_repeated_across_sigterm_and_kill_9(kafka_bootstrap, sorted_events, trained, tmp_path,
                                                             webhook, smtp_server):
    controller, handler = smtp_server
    topic = _topic("kill")
    lines = sorted_events.read_bytes().splitlines()
    n1, n2 = len(lines) // 3, 2 * len(lines) // 3
    bad = [b"{not json", b'{"service": {"description": "BigQuery"}, "cost": 1}']
    config = tmp_path / "stream.yaml"
    config.write_text(f"stream:\n  checkpoint_interval_s: 3600\n  session_timeout_ms: 2000\n"
                      "  slack_webhook_env: TEST_SLACK_URL\n"
                      f"  smtp_host: 127.0.0.1\n  smtp_port: {controller.port}\n  email_to: [oncall@acme.test]\n"
                      f"  drain_timeout_s: 5\n")
    state_dir = tmp_path / "state"
    args = ["--config", str(config), "--bootstrap", kafka_bootstrap, "--topic", topic, "--alerts-topic",
            f"{topic}-alerts", "--dead-letter-topic", f"{topic}-dlq", "--group", f"{topic}-g", "--state-dir",
            str(state_dir), "--registry", str(trained.registry), "--metrics-port", "0"]
    env = {**os.environ, "TEST_SLACK_URL": webhook.url, "COLUMNS": "200"}
    log = tmp_path / "stream.log"

    # Run 1: the first third (with two bad events), then SIGTERM: drains, snapshots state with offsets, exits 0.
    replay(_half(tmp_path / "a.jsonl", lines[:100] + bad + lines[100:n1]), kafka_bootstrap, topic, partitions=3)
    run = StreamProcess(args, env, log)
    _wait(lambda: run.events() == n1 + len(bad), 60, "the first third")
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait() == 0, log.read_text()[-3000:]
    assert "stream stopped" in log.read_text()
    offsets = sum(json.loads(p.read_text())["offset"] for p in (state_dir / topic).glob("p*.json"))
    assert offsets == n1 + len(bad)  # the snapshots cover everything processed
    after_run1 = read_alert_ids(kafka_bootstrap, f"{topic}-alerts")

    # Run 2: the second third, then kill -9 with no checkpoint since run 1 (interval 3600 s).
    replay(_half(tmp_path / "b.jsonl", lines[n1:n2]), kafka_bootstrap, topic, partitions=3)
    run = StreamProcess(args, env, log)
    _wait(lambda: run.events() == n2 - n1, 60, "the second third")
    published = read_alert_ids(kafka_bootstrap, f"{topic}-alerts")
    _wait(lambda: len(webhook.received) == len(published), 20, "Slack deliveries")
    time.sleep(0.3)
    run.proc.kill()
    run.wait()
    assert sum(json.loads(p.read_text())["offset"] for p in (state_dir / topic).glob("p*.json")) == offsets

    # Run 3: the rest, to the end; the second third is processed again from the snapshot.
    replay(_half(tmp_path / "c.jsonl", lines[n2:]), kafka_bootstrap, topic, partitions=3)
    run = StreamProcess([*args, "--until-end"], env, log)
    assert run.wait(120) == 0, log.read_text()[-3000:]
    summary = json.loads((state_dir / "last_run.json").read_text())

    expected, valid = _reference(kafka_bootstrap, topic, trained.detector)
    alerts = _messages(kafka_bootstrap, f"{topic}-alerts")

    keys = _keys(alerts)
    assert len(keys) == len(set(keys))  # no alert repeated ...
    assert set(keys) == expected  # ... and none lost
    raised_in_run2 = published - after_run1
    assert raised_in_run2  # the killed run did publish alerts (so that run 3 re-detects them) ...
    assert summary["duplicates"] == len(raised_in_run2)  # ... which run 3 re-detected and did not publish again
    assert sorted(webhook.ids()) == sorted(expected)  # Slack: each once
    assert sorted(m["X-Finops-Alert-Key"] for m in handler.messages) == sorted(expected)  # email: each once
    counters = summary["state_counters"]
    assert counters["events"] + counters["skipped_events"] == valid  # every event applied to the state once
    dead = _messages(kafka_bootstrap, f"{topic}-dlq")
    assert sorted(m.value() for m in dead) == sorted(bad)



@pytest.mark.cli
def test_stream_cli_bad_input_is_one_sentence(tmp_path):
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run([SCRIPT, "stream", "--registry", str(tmp_path / "none"), "--bootstrap", "127.0.0.1:1"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "No cost-anomaly model is registered" in result.stderr and result.stderr.count("\n") == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("stream:\n  retry_attempts: 0\n")
    result = subprocess.run([SCRIPT, "stream", "--config", str(bad)], capture_output=True, text=True, timeout=60,
                            env=env)
    assert result.returncode == 1 and "stream.retry_attempts" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# Secrets: a webhook URL is never logged


WEBHOOK_SECRET = "T0AAAAAAA/B0BBBBBBB/xoxSecretPath123"


@pytest.mark.unit
@pytest.mark.parametrize("value, problem", [
    (f"hooks.slack.com/services/{WEBHOOK_SECRET}", "does not start with https://"),
    (f"https://hooks.slack.com/services/{WEBHOOK_SECRET} extra", "space or a control character"),
    (f"https://hooks.slack.com/services/{WEBHOOK_SECRET}\n\n\t", "space or a control character"),
])
def test_a_malformed_webhook_url_is_one_warning_that_never_quotes_it(value, problem, caplog):
    with caplog.at_level("DEBUG"):
        senders = senders_from_config(StreamConfig(), {"FINOPS_SLACK_WEBHOOK_URL": value})
    assert "slack" not in senders
    [record] = caplog.records
    assert record.levelname == "WARNING"
    assert "FINOPS_SLACK_WEBHOOK_URL" in record.getMessage() and problem in record.getMessage()
    assert "xoxSecretPath123" not in caplog.text and "hooks.slack.com" not in caplog.text


@pytest.mark.unit
def test_a_trailing_newline_of_a_kubernetes_secret_is_dropped_silently(webhook, tmp_path, caplog):
    with caplog.at_level("DEBUG"):
        senders = senders_from_config(StreamConfig(), {"FINOPS_SLACK_WEBHOOK_URL": webhook.url + "\n"})
    assert caplog.records == []
    senders["slack"]({"anomaly_id": "a1", "service": "Compute Engine", "project_id": "p", "day": "2026-01-01"})
    assert webhook.ids() == ["a1"]


@pytest.mark.unit
def test_failed_deliveries_log_the_webhook_host_never_its_path(tmp_path, caplog):
    url = f"http://127.0.0.1:{free_port()}/services/{WEBHOOK_SECRET}"  # nothing listens: connection refused
    dispatcher = AlertDispatcher(Outbox(tmp_path / "outbox.jsonl"), {"slack": slack_sender(url, 1.0)},
                                 RetryPolicy(attempts=2, backoff_s=0.01, backoff_max_s=0.01)).start()
    with caplog.at_level("DEBUG"):
        dispatcher.submit({"anomaly_id": "a1"})
        _wait(lambda: dispatcher.failed["slack"] == 1, what="retries to be exhausted")
        dispatcher.close(1)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2 and all("http://127.0.0.1" in w and "/***" in w for w in warnings)
    assert "xoxSecretPath123" not in caplog.text and WEBHOOK_SECRET not in caplog.text


@pytest.mark.unit
def test_the_redaction_filter_masks_a_secret_in_any_log_line():
    url = f"https://hooks.slack.com/services/{WEBHOOK_SECRET}"
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "posting to %s failed (%s)",
                               (url, f"path /services/{WEBHOOK_SECRET}"), None)
    RedactSecrets([url, "hunter2-password"]).filter(record)
    assert record.getMessage() == "posting to https://hooks.slack.com/*** failed (path /***)"


@pytest.mark.unit
def test_metrics_listen_on_the_loopback_interface_by_default():
    cfg = StreamConfig()
    assert cfg.metrics_address == "127.0.0.1"
    metrics = StreamMetrics()
    port = metrics.serve(0, cfg.metrics_address)
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    with pytest.raises(ValueError, match="not an IP address"):
        StreamConfig(metrics_address="everywhere")


@pytest.mark.kafka
def test_a_stream_started_before_its_topic_exists_picks_it_up_within_seconds(kafka_bootstrap, sorted_events,
                                                                              tmp_path):
    """The consumer refreshes its metadata every few seconds (`topic.metadata.refresh.interval.ms`), not every 5
    minutes: events published to a topic created after the stream started are consumed within seconds."""
    topic = _topic("later")
    lines = sorted_events.read_bytes().splitlines()[:3000]
    processor = _processor(_settings(kafka_bootstrap, topic, tmp_path / "state", until_end=False))
    thread = threading.Thread(target=processor.run, daemon=True)
    thread.start()
    try:
        time.sleep(3)  # subscribed to a topic that does not exist yet
        replay(_half(tmp_path / "some.jsonl", lines), kafka_bootstrap, topic, partitions=2, order="file")
        t0 = time.monotonic()
        _wait(lambda: processor.counts["events"] >= len(lines), 15, "the events of the topic created later")
        assert time.monotonic() - t0 < 15
    finally:
        processor.stop()
        thread.join(30)


def _owned(port: int) -> set[int]:
    """The partitions a running stream reports a lag for (those assigned to it)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {int(p) for p in re.findall(r'finops_stream_consumer_lag\{partition="(\d+)"\}', text)}


def _snapshot_offsets(state_dir: Path, topic: str) -> int:
    return sum(json.loads(p.read_text())["offset"] for p in (state_dir / topic).glob("p*.json"))


@pytest.mark.kafka
@pytest.mark.cli
@pytest.mark.slow
def test_scale_out_two_consumers_then_one_killed_and_another_joining_lose_and_repeat_nothing(
        kafka_bootstrap, sorted_events, trained, tmp_path):
    """The runbook's scale-out: two streams of one group share the partitions (snapshots in one state directory);
    one is killed (-9) mid-stream and a third joins; every alert the partitions' events raise is published, none
    twice."""
    topic = _topic("scale")
    lines = sorted_events.read_bytes().splitlines()
    half = len(lines) // 2
    config = tmp_path / "stream.yaml"
    config.write_text("stream:\n  checkpoint_interval_s: 0.5\n  session_timeout_ms: 2000\n")
    state_dir = tmp_path / "state"
    args = ["--config", str(config), "--bootstrap", kafka_bootstrap, "--topic", topic, "--alerts-topic",
            f"{topic}-alerts", "--dead-letter-topic", f"{topic}-dlq", "--group", f"{topic}-g", "--state-dir",
            str(state_dir), "--registry", str(trained.registry), "--metrics-port", "0"]
    env = {**os.environ, "COLUMNS": "200"}
    replay(_half(tmp_path / "a.jsonl", lines[:half]), kafka_bootstrap, topic, partitions=4)
    a = StreamProcess(args, env, tmp_path / "a.log")
    b = StreamProcess(args, env, tmp_path / "b.log")
    c = None
    try:
        _wait(lambda: _snapshot_offsets(state_dir, topic) == half, 90, "the first half, checkpointed")
        _wait(lambda: _owned(a.port) and _owned(b.port), 30, "both consumers holding partitions")
        assert not _owned(a.port) & _owned(b.port) and len(_owned(a.port) | _owned(b.port)) == 4  # shared
        replay(_half(tmp_path / "b.jsonl", lines[half:]), kafka_bootstrap, topic, partitions=4)
        _wait(lambda: a.events() > 0, 30, "the killed consumer at work")
        a.proc.kill()  # no checkpoint, no leave: its partitions move once its session times out
        a.wait()
        c = StreamProcess(args, env, tmp_path / "c.log")
        _wait(lambda: _snapshot_offsets(state_dir, topic) == len(lines), 120, "every event, checkpointed")
        _wait(lambda: _owned(b.port) and _owned(c.port), 30, "the survivor and the newcomer holding partitions")
        for run in (b, c):
            run.proc.send_signal(signal.SIGTERM)
        for run in (b, c):
            assert run.wait() == 0
    finally:
        for run in (a, b, c):
            if run is not None and run.proc.poll() is None:
                run.proc.kill()
                run.wait()
    expected, valid = _reference(kafka_bootstrap, topic, trained.detector, flush=False)
    keys = _keys(_messages(kafka_bootstrap, f"{topic}-alerts"))
    assert expected  # the events raise alerts
    assert len(keys) == len(set(keys))  # none repeated ...
    assert set(keys) == expected  # ... and none lost
