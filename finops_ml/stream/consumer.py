"""Real-time cost-anomaly detection on the Kafka billing topic: `finops-ml stream`.

One `StreamProcessor` consumes the billing topic in a consumer group, scores each event with the registered
detector (`finops_ml.models.realtime`: one incremental state per partition), publishes each anomaly once to the alerts
topic (keyed by anomaly id) and hands it to the `AlertDispatcher` (Slack / email, own threads); an event that is
not a billing event goes to the dead-letter topic with its reason in the `error.reason` header.

Delivery guarantees
- At-least-once consumption, exactly-once state: every `checkpoint_interval_s` the processor waits until every
  alert and dead letter produced so far is acknowledged, then saves each partition's detector state *together
  with the offset it covers* (`SnapshotStore`: state file + manifest replaced atomically), then commits those
  offsets to the group. On (re)assignment a partition resumes from its snapshot's offset with its snapshot's
  state, so an event is applied to the state once, whatever crashed when.
- No alert twice: the events after the snapshot are processed again after a crash, and may raise alerts that
  were already published. At start (and at each rebalance) the processor reads the alerts topic back and
  skips the alerts it holds (`alert_key`: the anomaly id, the message key; a retraction of an open alert, status
  header "retracted", is an alert of its own); the dispatcher's outbox does the same for Slack and email. The
  alerts topic must keep its messages (retention by time, not compaction), or a restart cannot see them.
- SIGTERM (and SIGINT) stop consuming, checkpoint, give the dispatcher `drain_timeout_s`, and exit 0.

Partitioning: the detector's state is per daily cell (service x project), and a partition's state lives with
its consumer, so every event of a cell must land on the same partition: `replay` keys messages by cell
(`kafka_io.cell_key_of`), not by event id.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import orjson

from finops_ml.config import Config, StreamConfig
from finops_ml.data.kafka_io import check_reachable, client_config, ensure_topic
from finops_ml.errors import FinopsError
from finops_ml.fileio import read_json, write_json
from finops_ml.models.catalogue import ANOMALY
from finops_ml.stream.alerts import AlertDispatcher, alert_key

log = logging.getLogger("finops_ml.stream.consumer")

SNAPSHOT_VERSION = 1
METADATA_REFRESH_MS = 2000  # how soon a consumer started before its topic exists finds it
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class StreamMetrics:
    """The Prometheus metrics of one processor (own registry: several processors can live in one test process)."""

    def __init__(self, registry=None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter("finops_stream_events", "Messages consumed (billing events and dead letters).",
                              registry=r)
        self.alerts = Counter("finops_stream_alerts", "Anomaly alerts published to the alerts topic.", registry=r)
        self.duplicates = Counter("finops_stream_duplicate_alerts_suppressed",
                                  "Alerts re-detected after a restart and not published again.", registry=r)
        self.dead_letters = Counter("finops_stream_dead_letters", "Events sent to the dead-letter topic.",
                                    registry=r)
        self.errors = Counter("finops_stream_errors", "Errors by kind (kafka, produce, commit, detector).", ["kind"],
                              registry=r)
        self.deliveries = Counter("finops_stream_alert_deliveries", "Slack / email delivery attempts.",
                                  ["channel", "result"], registry=r)
        self.pending = Gauge("finops_stream_alerts_pending", "Alerts waiting for delivery per channel.",
                             ["channel"], registry=r)
        self.lag = Gauge("finops_stream_consumer_lag", "Messages behind the end of each partition.", ["partition"],
                         registry=r)
        self.late_events = Gauge("finops_stream_late_events", "Events of usage days already closed (re-judged).",
                                 registry=r)
        self.too_late_events = Gauge("finops_stream_too_late_events",
                                     "Late events older than rejudge_days: dead-lettered, not judged.", registry=r)
        self.open_cells = Gauge("finops_stream_open_cells", "Daily cells still open in the detector state.",
                                registry=r)
        self.latency = Histogram("finops_stream_detection_latency_seconds",
                                 "Event produced to alert acknowledged by the alerts topic.",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.checkpoints = Counter("finops_stream_checkpoints", "Snapshots of state and offsets.", registry=r)
        self.last_checkpoint = Gauge("finops_stream_last_checkpoint_timestamp_seconds",
                                     "When the last checkpoint finished.", registry=r)

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        """Serve /metrics on `addr`:`port` (0: a free one) in a daemon thread; returns the port."""
        from prometheus_client import start_http_server

        server, _ = start_http_server(port, addr=addr, registry=self.registry)
        return server.server_address[1]


class SnapshotStore:
    """Per-partition snapshots: DIR/<topic>/p<N>.<generation>.state and the manifest DIR/<topic>/p<N>.json.

    The state is written first, then the manifest (atomically) names it with the offset it covers, so a crash at
    any point leaves the previous complete snapshot in place.
    """

    def __init__(self, root: str | Path, topic: str, load_state: Callable[[Path], Any]):
        self.dir = Path(root) / topic
        self.dir.mkdir(parents=True, exist_ok=True)
        self.load_state = load_state

    def load(self, partition: int) -> tuple[Any, int] | None:
        manifest = self.dir / f"p{partition}.json"
        if not manifest.exists():
            return None
        meta = read_json(manifest)
        if meta.get("version") != SNAPSHOT_VERSION:
            raise FinopsError(f"Snapshot {manifest} has version {meta.get('version')}, this build reads "
                              f"{SNAPSHOT_VERSION}; move the state directory away to start from the beginning.")
        return self.load_state(self.dir / meta["state_file"]), int(meta["offset"])

    def save(self, partition: int, state: Any, offset: int) -> None:
        name = f"p{partition}.{time.time_ns()}.state"
        state.save(self.dir / name)
        write_json(self.dir / f"p{partition}.json", {
            "version": SNAPSHOT_VERSION, "partition": partition, "offset": offset, "state_file": name,
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")})
        for old in self.dir.glob(f"p{partition}.*.state"):
            if old.name != name:
                old.unlink(missing_ok=True)


STATUS_HEADER = "finops.status"
REVISION_HEADER = "finops.revision"  # only on a status published again (see alert_key)


def read_alert_ids(bootstrap: str, topic: str, timeout_s: float = 10.0) -> set[str]:
    """The alerts (`alert_key`: anomaly id = message key, with /confirmed or /retracted from the status header and
    the revision header) already in the alerts topic, read from the beginning to the end."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    meta = check_reachable(bootstrap)
    if topic not in meta.topics or meta.topics[topic].error is not None:
        return set()
    partitions = list(meta.topics[topic].partitions)
    consumer = Consumer({**client_config(bootstrap), "group.id": f"{topic}-reader", "enable.auto.commit": False,
                         "enable.partition.eof": True})
    ids: set[str] = set()
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        open_ = set(partitions)
        deadline = time.monotonic() + timeout_s
        while open_:
            msgs = consumer.consume(1000, timeout=0.5)
            if not msgs and time.monotonic() > deadline:
                raise FinopsError(f"Reading the alerts topic {topic} on {bootstrap} did not reach its end within "
                                  f"{timeout_s:g} s; check the broker, then start again.")
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        open_.discard(msg.partition())
                        continue
                    raise FinopsError(f"Reading the alerts topic {topic} failed ({err.str()}).")
                deadline = time.monotonic() + timeout_s
                if msg.key():
                    headers = dict(msg.headers() or ())
                    ids.add(alert_key({"anomaly_id": msg.key().decode(),
                                       "status": headers.get(STATUS_HEADER, b"").decode(),
                                       "revision": int(headers.get(REVISION_HEADER, b"0") or 0)}))
    finally:
        consumer.close()
    return ids


class StreamProcessor:
    """Consume, score, publish; checkpoint state with offsets. `run()` returns a summary when stopped."""

    batch = 2000  # messages per consume() call

    def __init__(self, settings: StreamConfig, new_state: Callable[[], Any], load_state: Callable[[Path], Any],
                 detect: Callable[[dict, Any], list[dict]], invalid_event: type[Exception],
                 dispatcher: AlertDispatcher | None = None, metrics: StreamMetrics | None = None,
                 champion: "ChampionWatcher | None" = None):
        self.s = settings
        self.champion = champion  # a new champion is taken up by every partition's state as it runs
        self.new_state = new_state
        self.detect = detect
        self.invalid_event = invalid_event
        self.dispatcher = dispatcher
        self.metrics = metrics or StreamMetrics()
        self.store = SnapshotStore(settings.state_dir, settings.topic, load_state)
        self.stop_event = threading.Event()
        self.states: dict[int, Any] = {}
        self.positions: dict[int, int] = {}  # next offset to process, per assigned partition
        self.dirty: set[int] = set()
        self.eof: set[int] = set()
        self.published: set[str] = set()
        self.counts = {"events": 0, "alerts": 0, "confirmations": 0, "retractions": 0, "late": 0, "duplicates": 0,
                       "dead_letters": 0,
                       "checkpoints": 0, "resumed_partitions": 0, "model_swaps": 0}
        self._delivery_errors: list[str] = []
        self.first_event_at: float | None = None  # monotonic time of the first event (throughput without start-up)
        self.alert_latencies: list[float] | None = None  # set to a list to record each alert's latency (benchmark)
        self._assigned_once = False
        self._failed = False
        self._closing = False
        self._consumer = None
        self._producer = None

    # -- Kafka plumbing -------------------------------------------------------------------------------------------
    def _on_assign(self, consumer, partitions) -> None:
        from confluent_kafka import OFFSET_BEGINNING

        if self._assigned_once:  # partitions may come from another consumer: learn what it published
            self.published |= read_alert_ids(self.s.bootstrap, self.s.alerts_topic)
        self._assigned_once = True
        for tp in partitions:
            snap = self.store.load(tp.partition)
            if snap is None:
                self.states[tp.partition] = self.new_state()
                tp.offset = OFFSET_BEGINNING  # state and offsets go together: without a snapshot, from the start
                log.info("partition %d: no snapshot, starting from the beginning", tp.partition)
            else:
                self.states[tp.partition], tp.offset = snap
                if self.champion is not None:  # a snapshot saved under an older champion goes on with the current
                    self.states[tp.partition].use_model(self.champion.model)
                self.counts["resumed_partitions"] += 1
                log.info("partition %d: resuming from snapshot at offset %d", tp.partition, tp.offset)
            self.positions[tp.partition] = tp.offset if tp.offset >= 0 else 0
            self.eof.discard(tp.partition)
        consumer.assign(partitions)

    def _on_revoke(self, consumer, partitions) -> None:
        revoked = {tp.partition for tp in partitions}
        if revoked and not self._failed:  # after a failure, the last good snapshots stand
            self.checkpoint(only=revoked)
        for p in revoked:
            self.states.pop(p, None)
            self.positions.pop(p, None)
            self.dirty.discard(p)
            self.eof.discard(p)
            if not self._closing:  # moved to another consumer: its lag is reported there
                try:
                    self.metrics.lag.remove(str(p))
                except KeyError:
                    pass

    def _make_clients(self):
        from confluent_kafka import Consumer, Producer

        base = client_config(self.s.bootstrap)
        consumer = Consumer({**base, "group.id": self.s.group, "enable.auto.commit": False,
                             "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
                             "enable.partition.eof": True, "session.timeout.ms": self.s.session_timeout_ms,
                             "heartbeat.interval.ms": max(self.s.session_timeout_ms // 6, 100),
                             "fetch.wait.max.ms": 50, "queued.min.messages": 20000,
                             # a topic created after the start is found within seconds (the default is 5 min)
                             "topic.metadata.refresh.interval.ms": METADATA_REFRESH_MS,
                             "allow.auto.create.topics": False})
        producer = Producer({**base, "enable.idempotence": True, "acks": "all", "linger.ms": 5,
                             "compression.type": "lz4", "message.timeout.ms": 60000})
        return consumer, producer

    # -- processing -------------------------------------------------------------------------------------------------
    def _dead_letter(self, msg, reason: str, kind: str = "invalid") -> None:
        headers = [("error.kind", kind.encode()), ("error.reason", reason.encode()),
                   ("source.topic", self.s.topic.encode()),
                   ("source.partition", str(msg.partition()).encode()), ("source.offset", str(msg.offset()).encode())]
        self._produce(self.s.dead_letter_topic, msg.value(), msg.key(), headers, None)
        self.counts["dead_letters"] += 1
        self.metrics.dead_letters.inc()

    def _produce(self, topic: str, value, key, headers, on_delivery) -> None:
        def report(err, msg) -> None:
            if err is not None:
                self._delivery_errors.append(f"{topic}: {err.str()}")
                self.metrics.errors.labels("produce").inc()
            elif on_delivery is not None:
                on_delivery()

        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers, on_delivery=report)
                return
            except BufferError:
                self._producer.poll(0.05)

    def _publish(self, anomaly: dict, produced_ms: int | None, partition: int, offset: int | None) -> None:
        anomaly_id = str(anomaly["anomaly_id"])
        key = alert_key(anomaly)
        if key in self.published:
            self.counts["duplicates"] += 1
            self.metrics.duplicates.inc()
            return
        self.published.add(key)
        alert = {**anomaly, "source": {"topic": self.s.topic, "partition": partition, "offset": offset,
                                       "event_produced_ms": produced_ms}}
        if self.s.alert_link:
            alert["link"] = self.s.alert_link.format(anomaly_id=anomaly_id)
        if self.dispatcher is not None:
            self.dispatcher.submit(alert)  # journalled in the outbox before the alert leaves this process
        produced_s = produced_ms / 1000 if produced_ms else time.time()

        def delivered() -> None:
            latency = max(time.time() - produced_s, 0.0)
            self.metrics.alerts.inc()
            self.metrics.latency.observe(latency)
            if self.alert_latencies is not None:
                self.alert_latencies.append(latency)

        headers = [(STATUS_HEADER, str(anomaly.get("status") or "").encode())]
        if anomaly.get("revision"):
            headers.append((REVISION_HEADER, str(anomaly["revision"]).encode()))
        self._produce(self.s.alerts_topic, orjson.dumps(alert, default=str), anomaly_id.encode(), headers, delivered)
        self.counts["alerts"] += 1
        if anomaly.get("status") == "retracted":
            self.counts["retractions"] += 1
        elif anomaly.get("status") == "confirmed":
            self.counts["confirmations"] += 1

    def _process(self, msg) -> None:
        p = msg.partition()
        state = self.states.get(p)
        if state is None:  # not (or no longer) ours
            return
        value = msg.value()
        try:
            try:
                event = orjson.loads(value) if value else None
            except orjson.JSONDecodeError as exc:
                raise self.invalid_event(f"invalid JSON: {exc}") from None
            if not isinstance(event, dict):
                what = "empty" if event is None else "a JSON " + type(event).__name__
                raise self.invalid_event(f"the message is {what}, not a billing event (a JSON object)")
            anomalies = self.detect(event, state)
        except self.invalid_event as exc:
            self._dead_letter(msg, str(exc))
            anomalies = ()
        except Exception as exc:  # noqa: BLE001 - a detector bug must not turn one event into a crash loop
            self.metrics.errors.labels("detector").inc()
            log.exception("the detector failed on %s:%d:%d", self.s.topic, p, msg.offset())
            self._dead_letter(msg, f"the detector failed on this event ({exc.__class__.__name__}: {exc})",
                              "detector")
            anomalies = ()
        else:
            late = getattr(state, "late", "")
            if late:  # shown to the operator; judged with its day re-judged, unless older than rejudge_days
                self.counts["late"] += 1
                self._dead_letter(msg, "late: its usage day was already closed (export-time watermark minus "
                                  "lateness_days); " + ("the day was re-judged with it" if late == "rejudged" else
                                                        "older than rejudge_days, so not judged"), "late")
        self.positions[p] = msg.offset() + 1
        self.dirty.add(p)
        if anomalies:
            ts_type, ts = msg.timestamp()
            for anomaly in anomalies:
                self._publish(anomaly, ts if ts_type != 0 and ts > 0 else None, p, msg.offset())

    def checkpoint(self, only: set[int] | None = None) -> None:
        """Wait for every produced alert / dead letter, snapshot state + offsets, commit the offsets."""
        from confluent_kafka import TopicPartition

        remaining = self._producer.flush(30)
        if remaining or self._delivery_errors:
            what = self._delivery_errors[0] if self._delivery_errors else f"{remaining} message(s) unacknowledged"
            raise FinopsError(f"Publishing alerts / dead letters failed ({what}); no offsets were committed, so a "
                              f"restart processes the same events again.")
        parts = [p for p in self.dirty if only is None or p in only]
        for p in parts:
            self.store.save(p, self.states[p], self.positions[p])
        if parts:
            try:
                self._consumer.commit(offsets=[TopicPartition(self.s.topic, p, self.positions[p]) for p in parts],
                                      asynchronous=False)
            except Exception as exc:  # noqa: BLE001 - the snapshot holds the offsets; the commit is for lag only
                self.metrics.errors.labels("commit").inc()
                log.warning("offset commit failed (the snapshot holds the offsets): %s", exc)
        self.dirty -= set(parts)
        self.counts["checkpoints"] += 1
        self.metrics.checkpoints.inc()
        self.metrics.last_checkpoint.set(time.time())
        self._update_gauges()

    def _update_gauges(self) -> None:
        from confluent_kafka import TopicPartition

        late = too_late = open_cells = 0
        for state in self.states.values():
            counters = getattr(state, "counters", {}) or {}
            late += counters.get("late_events", 0)
            too_late += counters.get("too_late_events", 0)
            open_cells += counters.get("open_cells", 0)
        self.metrics.late_events.set(late)
        self.metrics.too_late_events.set(too_late)
        self.metrics.open_cells.set(open_cells)
        for p, pos in list(self.positions.items()):
            try:
                low, high = self._consumer.get_watermark_offsets(TopicPartition(self.s.topic, p), cached=True)
            except Exception:  # noqa: BLE001 - no fetch answer yet
                continue
            if high is not None and high >= 0:
                self.metrics.lag.labels(str(p)).set(max(high - pos, 0))
        if self.dispatcher is not None:
            for name in self.dispatcher.channels:
                self.metrics.pending.labels(name).set(self.dispatcher.pending(name))

    def _at_end(self) -> bool:
        return bool(self.states) and all(p in self.eof for p in self.states)

    def _close_days(self) -> None:
        for p, state in self.states.items():
            for anomaly in state.flush():
                self._publish(anomaly, None, p, None)
            self.dirty.add(p)

    def run(self) -> dict:
        """Consume until `stop()` (or, with `until_end`, until every partition is read to its end)."""
        from confluent_kafka import KafkaError

        for topic in (self.s.alerts_topic, self.s.dead_letter_topic):
            ensure_topic(self.s.bootstrap, topic)
        self.published = read_alert_ids(self.s.bootstrap, self.s.alerts_topic)
        self._consumer, self._producer = self._make_clients()
        t0 = time.monotonic()
        last_checkpoint = time.monotonic()
        finished = False
        try:
            self._consumer.subscribe([self.s.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
            while not self.stop_event.is_set():
                msgs = self._consumer.consume(self.batch, timeout=0.1)
                for msg in msgs:
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            self.eof.add(msg.partition())
                        else:
                            self.metrics.errors.labels("kafka").inc()
                            log.warning("consumer error: %s", err.str())
                        continue
                    self.eof.discard(msg.partition())
                    self._process(msg)
                n = sum(1 for m in msgs if m.error() is None)
                if n and self.first_event_at is None:
                    self.first_event_at = time.monotonic()
                if n:
                    self.counts["events"] += n
                    self.metrics.events.inc(n)
                self._producer.poll(0)
                if self._delivery_errors:
                    self.checkpoint()  # raises: never commit past an alert that was not published
                if self.s.until_end and self._at_end():
                    self._close_days()
                    finished = True
                    break
                new_model = self.champion.poll() if self.champion is not None else None
                if new_model is not None:
                    for p, state in self.states.items():
                        state.use_model(new_model)
                        self.dirty.add(p)
                    self.counts["model_swaps"] += 1
                if time.monotonic() - last_checkpoint >= self.s.checkpoint_interval_s:
                    self.checkpoint()
                    last_checkpoint = time.monotonic()
            self.checkpoint()
            end = time.monotonic()
            seconds = end - t0
            busy = end - (self.first_event_at or end)
            counters: dict[str, int] = {}
            for state in self.states.values():
                for k, v in (getattr(state, "counters", {}) or {}).items():
                    if isinstance(v, (int, float)):
                        counters[k] = counters.get(k, 0) + v
            partitions = sorted(self.states)
        except BaseException:
            self._failed = True
            raise
        finally:
            self._closing = True
            self._consumer.close()
        return {**self.counts, "seconds": round(seconds, 3), "seconds_from_first_event": round(busy, 3),
                "reached_end": finished,
                "state_counters": counters, "partitions": partitions}

    def stop(self) -> None:
        self.stop_event.set()


def load_registered_detector(registry_dir: str | Path, version: str = "champion", cfg: Config | None = None):
    """The cost-anomaly detector registered under `version` (an alias or a number) and its folder
    (`registered_detector_dir`)."""
    import joblib

    model_dir = registered_detector_dir(registry_dir, version, cfg)
    return joblib.load(model_dir / "model.joblib"), model_dir


def registered_detector_dir(registry_dir: str | Path, version: str = "champion", cfg: Config | None = None) -> Path:
    """The folder of the cost-anomaly detector registered under `version`: in the local registry REGISTRY_DIR, or,
    when `cfg.registry.backend` is vertex, in the Vertex AI Model Registry, its artifacts downloaded from the
    version's artifact URI into REGISTRY_DIR/v<N> (kept: a restart does not download again)."""
    from finops_ml.platform.registry import LocalRegistry

    if cfg is not None and cfg.registry.backend == "vertex":
        from finops_ml.fileio import atomic_dir
        from finops_ml.platform.vertex_registry import VertexRegistry

        vertex = VertexRegistry(cfg)
        entry = vertex.entry(ANOMALY, version)
        model_dir = Path(registry_dir) / ANOMALY / f"v{entry['version']}"
        if not (model_dir / "model.joblib").exists():
            with atomic_dir(model_dir) as tmp:
                vertex.model_dir(ANOMALY, entry["version"], tmp)
        return model_dir

    registry = LocalRegistry(registry_dir)
    if not registry.versions(ANOMALY):
        raise FinopsError(f"No cost-anomaly model is registered in {registry_dir}; run `finops-ml run` first or "
                          f"point --registry at the registry that holds one.")
    try:
        model_dir = registry.model_dir(ANOMALY, version)
    except (KeyError, FileNotFoundError):
        raise FinopsError(f"The registry {registry_dir} has no cost-anomaly version or alias '{version}'; "
                          f"it has versions {registry.versions(ANOMALY)} and aliases "
                          f"{sorted(registry.aliases(ANOMALY))}.") from None
    return model_dir


class ChampionWatcher:
    """The registered detector under an alias (champion) as the stream runs: `poll` looks the alias up every
    `interval_s` seconds and returns the new real-time model when it names another version (else None)."""

    def __init__(self, registry_dir: str | Path, version: str = "champion", cfg: Config | None = None,
                 interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        from finops_ml.models.realtime import RealtimeModel

        self._lookup = lambda: registered_detector_dir(registry_dir, version, cfg)
        self._make = RealtimeModel
        self.interval_s, self.clock = interval_s, clock
        self.model_dir, self.model = self._load(self._lookup())
        self._checked = clock()

    def _load(self, model_dir: Path):
        import joblib

        return model_dir, self._make(joblib.load(model_dir / "model.joblib"))

    def poll(self):
        if not self.interval_s or self.clock() - self._checked < self.interval_s:
            return None
        self._checked = self.clock()
        try:
            model_dir = self._lookup()
            if model_dir == self.model_dir:
                return None
            self.model_dir, self.model = self._load(model_dir)
        except Exception as exc:  # a registry that cannot be read now: keep the model that runs, say why
            log.warning("could not look up the champion detector (%s); keeping %s", exc, self.model_dir)
            return None
        log.info("new champion detector %s: taken up without clearing the stream's state", model_dir)
        return self.model
