"""Locust user for benchmarks/serving_latency.py: POSTs prediction requests at a constant rate per user.

Set by the benchmark: SERVE_BENCH_POOL (JSON {"route": ..., "bodies": [...]}), SERVE_BENCH_USER_RATE (requests/s per
user), SERVE_BENCH_OUT (where every request's start time, latency in ms and failure flag are written on exit: exact
percentiles, rather than Locust's rounded ones).
"""

from __future__ import annotations

import json
import os
import random

from locust import FastHttpUser, constant_throughput, events, task

with open(os.environ["SERVE_BENCH_POOL"]) as f:
    POOL = json.load(f)
ROUTE = POOL["route"]
BODIES = [json.dumps(b).encode() for b in POOL["bodies"]]
HEADERS = {"content-type": "application/json"}
RECORDS: list[tuple[float, float, bool]] = []


@events.request.add_listener
def _record(request_type, name, response_time, response_length, exception=None, start_time=None, **kwargs):
    RECORDS.append((start_time or 0.0, response_time, exception is not None))


@events.quitting.add_listener
def _dump(environment, **kwargs):
    with open(os.environ["SERVE_BENCH_OUT"], "w") as f:
        json.dump(RECORDS, f)


class PredictionClient(FastHttpUser):
    wait_time = constant_throughput(float(os.environ.get("SERVE_BENCH_USER_RATE", "5")))

    @task
    def predict(self):
        self.client.post(ROUTE, data=random.choice(BODIES), headers=HEADERS, name="predict")
