"""The stream reaches the batch answer: a seed's events through Kafka, as an export delivers them (issue 12).

    python -m benchmarks.stream_vs_batch [--seeds 42,5] [--shape SHAPE] [--workdir DIR] [--partitions 3]

Per seed, all through the CLI a user types: `finops-ml generate --seed S` (the default world, realistic, or
`--shape`), then `finops-ml run --source` its events
as a user's own export (the batch side: OUT/anomalies.csv, written by the registered detector), a Tansu broker on
127.0.0.1, `finops-ml replay` the same events (export order, the default), `finops-ml stream --until-end` with the
run's registry; then the alerts topic is read back. Prints, per seed: batch anomalies, ids confirmed by the stream,
whether the two sets are equal, messages published twice (by key and status), retractions, late rows. Exits 1 when
a seed's ids differ or a message repeats.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from testsupport.cli import command
from testsupport.kafka import tansu_broker


def _cli(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    result = subprocess.run(command(*args), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise SystemExit(f"finops-ml {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result


def _alerts(bootstrap: str, topic: str) -> list:
    """Every message of TOPIC, each partition read from its start to its high watermark."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{time.time_ns()}",
                         "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    high = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    out, done, deadline = [], {p for p, h in high.items() if h == 0}, time.monotonic() + 120
    while len(done) < len(high) and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        out.append(msg)
        if msg.offset() + 1 >= high[msg.partition()]:
            done.add(msg.partition())
    consumer.close()
    return out


def one_seed(seed: int, workdir: Path, partitions: int, shape: str | None = None) -> dict:
    out = workdir / f"seed{seed}"
    if not (out / "anomalies.csv").exists():
        # As a user's own export (no truth files): the detector is gated by injection, so it is registered even
        # where the generator's truth would fail its gate; the stream loads what the registry holds.
        _cli("generate", "--seed", str(seed), "--out", str(workdir / f"data{seed}"),
             *(["--shape", shape] if shape else []))
        _cli("run", "--source", str(workdir / f"data{seed}" / "events.jsonl"), "--out", str(out))
    if not (out / "registry" / "cost-anomaly").exists():
        raise SystemExit(f"seed {seed}: no anomaly detector was registered (its gate failed): nothing to stream")
    batch = set(pd.read_csv(out / "anomalies.csv").anomaly_id)
    shutil.rmtree(workdir / f"state-{seed}", ignore_errors=True)  # a fresh broker: the stream starts afresh too
    with tansu_broker(workdir / f"tansu-{seed}.log") as bootstrap:
        topic = f"billing-{seed}"
        _cli("replay", str(workdir / f"data{seed}" / "events.jsonl"), "--bootstrap", bootstrap, "--topic", topic,
             "--partitions", str(partitions))
        t0 = time.perf_counter()
        _cli("stream", "--bootstrap", bootstrap, "--topic", topic, "--registry", str(out / "registry"),
             "--alerts-topic", f"{topic}-alerts", "--dead-letter-topic", f"{topic}-dlq",
             "--state-dir", str(workdir / f"state-{seed}"), "--group", f"g-{seed}", "--metrics-port", "0",
             "--until-end")
        seconds = time.perf_counter() - t0
        messages = _alerts(bootstrap, f"{topic}-alerts")
    last = json.loads((workdir / f"state-{seed}" / "last_run.json").read_text())
    keyed = Counter((m.key().decode(), dict(m.headers() or []).get("finops.status", b"").decode(),
                     dict(m.headers() or []).get("finops.revision", b"0").decode()) for m in messages)
    alerts = [json.loads(m.value()) for m in messages]
    confirmed = {a["anomaly_id"] for a in alerts if a.get("status") == "confirmed"}
    retracted = {a["anomaly_id"] for a in alerts if a.get("status") == "retracted"}
    standing = confirmed - retracted
    return {"seed": seed, "batch": len(batch), "confirmed": len(standing), "equal": standing == batch,
            "missing": len(batch - standing), "extra": len(standing - batch),
            "repeated": sum(n - 1 for n in keyed.values() if n > 1), "retracted": len(retracted),
            "late": last.get("late", 0), "events": last.get("events", 0), "stream_s": round(seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="42,5")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--shape", default=None, help="organisation shape of `finops-ml generate` (default: the config's)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep runs here (a run already there is reused)")
    args = ap.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="finops-stream-batch-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = [one_seed(int(s), workdir, args.partitions, args.shape) for s in args.seeds.split(",") if s]
    table = Table(title="stream (Kafka, export order) vs batch anomalies.csv")
    for col in rows[0]:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(*(str(v) for v in r.values()))
    Console(width=200).print(table)
    return 0 if all(r["equal"] and r["repeated"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
