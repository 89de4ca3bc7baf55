"""Helpers shared by the tests (tests/) and the benchmarks (benchmarks/): free ports and readiness waits
(`net`), a Tansu Kafka-protocol broker on 127.0.0.1 (`kafka`), a recording fake of the Google Cloud REST APIs
(`fake_gcp`).

Not part of the installed library: it is imported from the repository root (pytest's `pythonpath = ["."]`,
`python -m benchmarks.X`).
"""
