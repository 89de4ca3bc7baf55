"""Configuration: typed, validated, and a wrong key or value is one clear error naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from finops_ml.config import CONFIG_DIR, Config, GeneratorConfig, load_config
from finops_ml.errors import FinopsError

pytestmark = pytest.mark.unit

SHIPPED = sorted(CONFIG_DIR.glob("*.yaml"))


def _write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_local_yaml_is_shipped():
    assert (CONFIG_DIR / "local.yaml").exists()


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.environment == path.stem


def test_local_yaml_values():
    cfg = load_config(CONFIG_DIR / "local.yaml")
    assert cfg.environment == "local"
    assert cfg.generator.unlabelled_share == pytest.approx(0.2)
    assert 0.0 < cfg.gates.forecast_accuracy <= 1.0
    assert set(cfg.labeler.targets) == {"owner", "cost_center", "plant"}


def test_default_path_is_local_yaml():
    assert load_config() == load_config(CONFIG_DIR / "local.yaml")


def test_partial_file_keeps_defaults(tmp_path):
    cfg = load_config(_write(tmp_path, "seed: 7\ngenerator:\n  plants: 2\n"))
    assert cfg.seed == 7
    assert cfg.generator.plants == 2
    assert cfg.generator.months == GeneratorConfig().months
    assert cfg.forecast.holdout_months == 3


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(_write(tmp_path, "")) == Config()


@pytest.mark.parametrize(
    "text, key",
    [
        ("seed: 1\nsede: 2\n", "sede"),
        ("generator:\n  plantz: 3\n", "generator.plantz"),
        ("gates:\n  anomaly_f1: 0.8\n  accuracy: 0.9\n", "gates.accuracy"),
        ("registry:\n  path: r\n  uri: gs://x\n", "registry.uri"),
    ],
)
def test_unknown_key_names_file_and_key(tmp_path, text, key):
    path = _write(tmp_path, text)
    with pytest.raises(FinopsError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert str(path) in msg
    assert f"unknown key '{key}'" in msg
    assert "\n" not in msg  # one sentence, no traceback-like dump


@pytest.mark.parametrize(
    "text, key",
    [
        ("generator:\n  months: 3\n", "generator.months"),
        ("generator:\n  plants: many\n", "generator.plants"),
        ("generator:\n  unlabelled_share: 1.5\n", "generator.unlabelled_share"),
        ("environment: staging\n", "environment"),
        ("seed: forty-two\n", "seed"),
        ("gates:\n  forecast_accuracy: 1.2\n", "gates.forecast_accuracy"),
        ("forecast:\n  candidates: [linear, prophet]\n", "forecast.candidates.1"),
        ("forecast:\n  interval: 1.0\n", "forecast.interval"),
        ("labeler:\n  targets: [owner, team]\n", "labeler.targets.1"),
        ("generator: 5\n", "generator"),
    ],
)
def test_invalid_value_names_file_and_key(tmp_path, text, key):
    path = _write(tmp_path, text)
    with pytest.raises(FinopsError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert str(path) in msg
    assert f"key '{key}' is invalid" in msg


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(FinopsError) as exc:
        load_config(path)
    assert str(path) in str(exc.value) and "does not exist" in str(exc.value)


def test_invalid_yaml(tmp_path):
    path = _write(tmp_path, "generator:\n  plants: [1, 2\n")
    with pytest.raises(FinopsError, match="not valid YAML") as exc:
        load_config(path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_mapping(tmp_path, text):
    path = _write(tmp_path, text)
    with pytest.raises(FinopsError, match="mapping") as exc:
        load_config(path)
    assert str(path) in str(exc.value)


def test_digest_and_json_round_trip(tmp_path):
    a = load_config(_write(tmp_path, "seed: 1\n", "a.yaml"))
    b = load_config(_write(tmp_path, "seed: 2\n", "b.yaml"))
    assert a.digest() == load_config(tmp_path / "a.yaml").digest()
    assert a.digest() != b.digest()
    assert len(a.digest()) == 12
    assert Config.from_json(a.to_json()) == a


def test_budgets_are_validated(tmp_path):
    cfg = load_config(_write(tmp_path, "budgets:\n  - {name: org, monthly_usd: 1000}\n"
                                       "  - {name: gke, scope: {service: Kubernetes Engine, project_id: p1},"
                                       " monthly_usd: 50, alert_probability: 0.8}\n"))
    assert [b.name for b in cfg.budgets] == ["org", "gke"]
    assert cfg.budgets[0].scope.service is None and cfg.budgets[0].alert_probability == 0.5
    assert cfg.budgets[1].scope.project_id == "p1" and cfg.budgets[1].alert_probability == 0.8
    assert load_config().budgets, "configs/local.yaml ships example budgets"


@pytest.mark.parametrize(
    "text, match",
    [
        ("budgets:\n  - {name: org, monthly_usd: 0}\n", "key 'budgets.0.monthly_usd' is invalid"),
        ("budgets:\n  - {name: org, monthly_usd: 5, alert_probability: 1.5}\n", "budgets.0.alert_probability"),
        ("budgets:\n  - {name: org, monthly_usd: 5, scope: {plant: x}}\n", "unknown key 'budgets.0.scope.plant'"),
        ("budgets:\n  - {monthly_usd: 5}\n", "budgets.0.name"),
        ("budgets:\n  - {name: a, monthly_usd: 5}\n  - {name: a, monthly_usd: 6}\n", "a appears more than once"),
    ],
)
def test_bad_budgets_name_the_key(tmp_path, text, match):
    with pytest.raises(FinopsError, match=match):
        load_config(_write(tmp_path, text))
