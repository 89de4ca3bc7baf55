"""`finops-ml stream`: real-time anomaly detection on the Kafka billing topic (see finops_ml.stream.consumer)."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from finops_ml.config import load_config
from finops_ml.errors import FinopsError

console = Console()


def stream(
    config: Optional[Path] = typer.Option(None, help="YAML config (default: configs/local.yaml); section `stream`."),
    bootstrap: Optional[str] = typer.Option(None, help="Kafka bootstrap servers HOST:PORT (overrides the config)."),
    topic: Optional[str] = typer.Option(None, help="Billing events topic."),
    alerts_topic: Optional[str] = typer.Option(None, help="Topic the alerts are published to (keyed by anomaly id)."),
    dead_letter_topic: Optional[str] = typer.Option(None, help="Topic for events that are not billing events."),
    group: Optional[str] = typer.Option(None, help="Consumer group."),
    state_dir: Optional[Path] = typer.Option(None, help="Snapshots of the detector state and the alert outbox."),
    registry: Optional[Path] = typer.Option(None, help="Model registry holding the cost-anomaly detector."),
    model_version: Optional[str] = typer.Option(None, help="Registry alias or version of the detector."),
    metrics_port: Optional[int] = typer.Option(None, help="Port of the Prometheus /metrics endpoint (0: any free)."),
    metrics_address: Optional[str] = typer.Option(None, help="Interface of /metrics (default: the config's, "
                                                             "127.0.0.1; 0.0.0.0 in a pod)."),
    until_end: bool = typer.Option(False, "--until-end", help="Stop at the end of the topic, closing the open days "
                                                             "(a bounded run: backfills, tests, benchmarks)."),
):
    """Score the billing stream event by event; publish each anomaly once to the alerts topic, Slack and email."""
    from finops_ml.fileio import write_json
    from finops_ml.stream.alerts import (
        AlertDispatcher,
        Outbox,
        RedactSecrets,
        RetryPolicy,
        secret_values,
        senders_from_config,
    )
    from finops_ml.stream.consumer import ChampionWatcher, StreamMetrics, StreamProcessor

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {"bootstrap": bootstrap, "topic": topic, "alerts_topic": alerts_topic,
                 "dead_letter_topic": dead_letter_topic, "group": group,
                 "state_dir": str(state_dir) if state_dir else None, "registry": str(registry) if registry else None,
                 "model_version": model_version, "metrics_port": metrics_port,
                 "metrics_address": metrics_address, "until_end": until_end or None}
    full = load_config(config).with_updates("The command-line options",
                                            stream={k: v for k, v in overrides.items() if v is not None})
    cfg = full.stream
    redact = RedactSecrets(secret_values(cfg))
    for handler in logging.getLogger().handlers:
        handler.addFilter(redact)

    # registry.backend vertex: the champion of the Vertex AI Model Registry, cached in the stream's registry folder
    # prepared once, shared by the state of every partition; a new champion replaces it as the stream runs
    champion = ChampionWatcher(cfg.registry, cfg.model_version, full, cfg.model_check_interval_s)
    from finops_ml.models.realtime import InvalidEvent, RealtimeState, detect_anomaly_realtime

    state_root = Path(cfg.state_dir)
    metrics = StreamMetrics()
    try:
        port = metrics.serve(cfg.metrics_port, cfg.metrics_address)
    except OSError as exc:
        raise FinopsError(f"The /metrics endpoint cannot listen on {cfg.metrics_address} port {cfg.metrics_port} "
                          f"({exc.strerror}); choose another with --metrics-port (0 picks a free one) or "
                          "--metrics-address.") from None

    def on_result(channel: str, ok: bool, seconds: float) -> None:
        metrics.deliveries.labels(channel, "ok" if ok else "error").inc()

    senders = senders_from_config(cfg)
    dispatcher = AlertDispatcher(Outbox(state_root / "alerts_outbox.jsonl"), senders,
                                 RetryPolicy(cfg.retry_attempts, cfg.retry_backoff_s, cfg.retry_backoff_max_s),
                                 on_result).start()
    processor = StreamProcessor(
        cfg, new_state=lambda: RealtimeState(champion.model, cfg.lateness_days, cfg.rejudge_days),
        load_state=RealtimeState.load, detect=detect_anomaly_realtime, invalid_event=InvalidEvent,
        dispatcher=dispatcher, metrics=metrics, champion=champion)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: processor.stop())
    console.print(f"stream: {cfg.topic} on {cfg.bootstrap} (group {cfg.group}) -> alerts {cfg.alerts_topic}, "
                  f"dead letters {cfg.dead_letter_topic}; detector {champion.model_dir}; channels "
                  f"{', '.join(senders) or 'none'}; metrics on {cfg.metrics_address}:{port}/metrics", highlight=False)
    try:
        summary = processor.run()
    finally:
        pending = dispatcher.close(cfg.drain_timeout_s)
    summary.update(pending_deliveries=pending, delivered=dispatcher.delivered, finished_at=time.time())
    write_json(state_root / "last_run.json", summary)
    rate = summary["events"] / summary["seconds"] if summary["seconds"] else 0.0
    console.print(f"stream stopped: {summary['events']:,} events ({rate:,.0f}/s), {summary['alerts']:,} alerts "
                  f"published, {summary['duplicates']:,} re-detected alerts not repeated, "
                  f"{summary['dead_letters']:,} dead letters; pending deliveries: "
                  f"{', '.join(f'{k} {v}' for k, v in pending.items()) or 'none'}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(stream)


__all__ = ["register", "stream", "FinopsError"]
