"""How many API requests each production operation sends, and how long the client side takes, with the real
google-cloud-aiplatform / -scheduler / -storage clients against the recording fake of testsupport/fake_gcp.py on
127.0.0.1 (so the times are the clients' own work plus loopback HTTP, not Vertex AI's latency).

    .venv/bin/python -m benchmarks.vertex_requests

Prints one row per operation: requests by method (GET / POST / DELETE) and wall seconds. Useful against the
Vertex AI API's per-minute read/write quotas: the SDK re-reads resources (e.g. the endpoint) often.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from pathlib import Path

from finops_ml.config import CONFIG_DIR, load_config
from finops_ml.platform.deploy import deploy_vertex
from finops_ml.platform.schedules import create_schedule, submit
from finops_ml.platform.vertex_registry import VertexRegistry
from pipelines.local import compile_pipeline
from testsupport.fake_gcp import FakeGCP


def main() -> None:
    import logging

    logging.disable(logging.INFO)  # the SDK's progress lines
    from google.cloud.aiplatform.utils import gcs_utils

    # The bucket check asks the Resource Manager API (a fixed Google host): not reachable offline.
    gcs_utils.create_gcs_bucket_for_pipeline_artifacts_if_it_does_not_exist = lambda **kw: None
    fake = FakeGCP()
    os.environ["STORAGE_EMULATOR_HOST"] = fake.endpoint
    cfg = load_config(CONFIG_DIR / "prod.yaml")
    cfg = cfg.model_copy(update={"gcp": cfg.gcp.model_copy(
        update={"api_endpoint": fake.endpoint, "scheduler_api_endpoint": fake.endpoint})})
    rows = []

    def measure(label: str, fn) -> None:
        start = len(fake.requests)
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
        counts = Counter(r["method"] for r in fake.requests[start:])
        rows.append((label, counts["GET"], counts["POST"], counts["DELETE"], seconds))

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        model_dir.mkdir()
        (model_dir / "model.joblib").write_bytes(os.urandom(200_000))
        template = compile_pipeline(Path(tmp) / "p.yaml", image=cfg.pipeline.image)
        registry = VertexRegistry(cfg)
        window = {"start": "2025-08-01", "end": "2026-06-30"}
        for i, f1 in enumerate((0.90, 0.92, 0.95), start=1):
            measure(f"register v{i} (champion)", lambda f1=f1, i=i: registry.register(
                "cost-anomaly", model_dir, {"anomaly_f1": f1}, f"digest-{i}", window, f"run-{i}"))
            measure(f"deploy v{i}" + (" (creates the endpoint)" if i == 1 else " (undeploys v1)" if i == 3 else ""),
                    lambda i=i: deploy_vertex(cfg, "cost-anomaly", i))
        measure("promote v2", lambda: registry.promote("cost-anomaly", 2))
        measure("submit", lambda: submit(cfg, template, "bench-1"))
        measure("schedule create (vertex)", lambda: create_schedule(cfg, template))
        cs = cfg.model_copy(update={"schedule": cfg.schedule.model_copy(update={"backend": "cloud_scheduler"})})
        measure("schedule create (cloud_scheduler)", lambda: create_schedule(cs, template))
    fake.close()

    print(f"{'operation':<36} {'GET':>4} {'POST':>5} {'DELETE':>7} {'seconds':>8}")
    for label, get, post, delete, seconds in rows:
        print(f"{label:<36} {get:>4} {post:>5} {delete:>7} {seconds:>8.2f}")


if __name__ == "__main__":
    main()
