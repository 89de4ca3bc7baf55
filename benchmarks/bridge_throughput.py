"""File -> topic latency and rows/s of the export -> Kafka bridge (`finops_ml.data.bridge`), on a real Kafka-protocol
broker and the real google-cloud-storage client against the loopback fake of the GCS JSON API.

    .venv/bin/python -m benchmarks.bridge_throughput [--rows 1000,10000,100000] [--formats jsonl,parquet]
                                                     [--bootstrap HOST:PORT]

Set-up (not timed): generate the synthetic organisation once, cut export files of each size from it, write them in
each format and upload them as objects; start a Tansu broker on 127.0.0.1 (or use `--bootstrap`).
Timed, per file: the CloudEvent handler the function runs (`handle_finalize`: download, validate as ingest does,
produce in one transaction with its marker, commit). `latency` = handler called -> its transaction committed (the
rows visible to read_committed consumers); `visible` = handler called -> a consumer of the topic has read the last
row; rows/s = rows / latency. `redelivery` = the same event again (marker found, nothing sent).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
import uuid
from pathlib import Path

from testsupport.fake_gcp import FakeGCP
from testsupport.kafka import tansu_broker


def _count_to(bootstrap: str, topic: str, n: int, timeout_s: float = 300.0) -> float:
    """Read `topic` until `n` messages were seen; the monotonic time then."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False, "isolation.level": "read_committed", "fetch.wait.max.ms": 20})
    try:
        meta = consumer.list_topics(topic, timeout=10)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.topics[topic].partitions])
        seen, deadline = 0, time.monotonic() + timeout_s
        while seen < n and time.monotonic() < deadline:
            seen += sum(1 for m in consumer.consume(10_000, timeout=0.1) if m.error() is None)
        return time.monotonic()
    finally:
        consumer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1000,10000,100000", help="rows per export file, comma-separated")
    ap.add_argument("--formats", default="jsonl,parquet", help="jsonl, parquet, csv (flattened export rows)")
    ap.add_argument("--bootstrap", default=None, help="an existing Kafka cluster (default: a Tansu broker)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.rows.split(",")]
    formats = args.formats.split(",")

    import pyarrow.json as pj
    import pyarrow.parquet as pq

    from finops_ml.config import GeneratorConfig
    from finops_ml.data.bridge import BridgeSettings, handle_finalize
    from finops_ml.data.ingest import conform
    from finops_ml.synthetic.generator import generate, resources_for_rows

    work = Path(tempfile.mkdtemp(prefix="bench-bridge-"))
    gcfg = GeneratorConfig()
    gcfg = gcfg.model_copy(update={"resources_per_project": resources_for_rows(gcfg, max(sizes))})
    print(f"generating ~{max(sizes):,} rows ...", flush=True)
    generate(gcfg, 42, work / "data")
    lines = (work / "data" / "events.jsonl").read_bytes().splitlines(keepends=True)

    fake = FakeGCP()
    os.environ["STORAGE_EMULATOR_HOST"] = fake.endpoint
    files = []
    for n in sizes:
        jsonl = work / f"export-{n}.jsonl"
        jsonl.write_bytes(b"".join(lines[:n]))
        for fmt in formats:
            if fmt == "jsonl":
                data = jsonl.read_bytes()
            elif fmt == "parquet":
                pq.write_table(conform(pj.read_json(jsonl)), work / f"export-{n}.parquet")
                data = (work / f"export-{n}.parquet").read_bytes()
            else:
                raise SystemExit(f"unknown format {fmt}")
            name = f"billing/export-{n}.{fmt}"
            files.append((n, fmt, name, fake.put_object("exports", name, data), len(data)))

    broker = contextlib.nullcontext(args.bootstrap) if args.bootstrap else tansu_broker(work / "tansu.log")
    results = []
    with broker as bootstrap:
        for n, fmt, name, generation, size in files:
            topic = f"bench-bridge-{uuid.uuid4().hex[:8]}"
            settings = BridgeSettings(bootstrap=bootstrap, topic=topic, dead_letter_topic=f"{topic}-dlq")
            event = {"bucket": "exports", "name": name, "generation": str(generation)}
            t0 = time.monotonic()
            s = handle_finalize(event, settings)
            committed = time.monotonic()
            visible = _count_to(bootstrap, topic, s["rows"])
            t1 = time.monotonic()
            again = handle_finalize(event, settings)
            redelivery = time.monotonic() - t1
            assert again["skipped"] and s["read"] == s["rows"] + s["dead_letters"] == len(lines[:n])
            latency = committed - t0
            results.append((fmt, s["rows"], size, latency, visible - t0, s["rows"] / latency, redelivery))
    fake.close()

    print()
    print(f"{'format':<8} {'rows':>9} {'MB':>7} {'latency s':>10} {'visible s':>10} {'rows/s':>9} "
          f"{'redelivery s':>13}")
    for fmt, rows, size, latency, visible, rate, redelivery in results:
        print(f"{fmt:<8} {rows:>9,} {size / 1e6:>7.1f} {latency:>10.2f} {visible:>10.2f} {rate:>9,.0f} "
              f"{redelivery:>13.2f}")
    print("\nlatency: CloudEvent handled -> transaction committed (download, validate, produce, marker); visible: "
          "-> a read_committed consumer has the last row; redelivery: the same event again (nothing sent).")


if __name__ == "__main__":
    main()
