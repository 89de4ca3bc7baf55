"""Configuration: typed, validated, and a wrong key or value is one clear error naming the file and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finops_ml.config import CONFIG_DIR, STEP_SECTIONS, Config, GeneratorConfig, load_config
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
    # the realistic world (issue 13): every realism knob on, at the values documented beside it
    g = cfg.generator
    assert (g.usage_noise, g.noise_sigma, g.normal_events, g.late_row_share) == ("by_kind", 0.03, True, 0.03)
    assert (g.label_error_share, g.label_variant_share, g.departed_owner_share, g.unlabelled_project_share) == (
        0.07, 0.1, 0.05, 0.15)
    assert (g.plant_holidays, g.commitments, g.one_off_charges, g.eur_billing_account, g.new_projects) == (
        True, True, True, True, 2)
    assert g.export_granularity == "daily"
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


# ---- configuration by section ------------------------------------------------------------------------------------

TRAINING_STEPS = ("forecast", "anomaly", "labeler")


def _changed(cfg: Config, section: str, **values) -> Config:
    return cfg.model_copy(update={section: getattr(cfg, section).model_copy(update=values)})


@pytest.mark.parametrize("section, values", [
    ("stream", {"smtp_host": "smtp.example.com", "email_to": ["finops@example.com"]}),
    ("serving", {"workers": 4, "max_body_bytes": 2_000_000}),
    ("schedule", {"cron": "0 6 * * *"}),
    ("generator", {"plants": 2}),
])
def test_a_change_outside_the_training_sections_changes_no_training_input_nor_digest(section, values):
    cfg = load_config()
    other = _changed(cfg, section, **values)
    assert other.to_json() != cfg.to_json() and other.digest() != cfg.digest()  # the whole config did change
    for step in TRAINING_STEPS:
        assert other.for_step(step) == cfg.for_step(step), step
        assert other.digest(step) == cfg.digest(step), step
    # only the monitor step (never cached, trains nothing) is sent the stream's channels: its drift alerts use them
    changed = {k for k, v in other.step_parameters().items() if cfg.step_parameters()[k] != v}
    assert changed == ({"monitor_config"} if section == "stream" else set())


def test_a_forecast_change_changes_only_the_forecast_steps_input():
    cfg = load_config()
    other = _changed(cfg, "forecast", interval=0.9)
    changed = {step for step in STEP_SECTIONS if other.for_step(step) != cfg.for_step(step)}
    assert changed == {"forecast"}
    assert other.digest("forecast") != cfg.digest("forecast")
    assert other.digest("anomaly") == cfg.digest("anomaly") and other.digest("labeler") == cfg.digest("labeler")
    # A budget is the forecast's too; a gate threshold is every trainer's (each computes its gates' verdicts).
    budgets = cfg.model_copy(update={"budgets": cfg.budgets[:1]})
    assert {s for s in STEP_SECTIONS if budgets.for_step(s) != cfg.for_step(s)} == {"forecast"}
    gates = _changed(cfg, "gates", anomaly_f1=0.5)
    assert {s for s in STEP_SECTIONS if gates.for_step(s) != cfg.for_step(s)} == set(TRAINING_STEPS)


def test_a_step_reads_back_only_its_sections():
    cfg = _changed(load_config(), "forecast", interval=0.9)
    sent = Config.from_json(cfg.for_step("forecast"))
    assert sent.forecast.interval == 0.9 and sent.seed == cfg.seed and sent.budgets == cfg.budgets
    assert sent.digest() == cfg.digest("forecast")  # a step's config digests to what it was sent
    with pytest.raises(FinopsError, match=r"forecast step read the config key 'stream'.*STEP_SECTIONS\['forecast'\]"):
        sent.stream
    with pytest.raises(FinopsError, match="does not match STEP_SECTIONS"):
        Config.from_json(json.dumps({"step": "anomaly", "config": {"stream": {}}}))
    assert Config.from_json(cfg.to_json()) == cfg  # a whole config still round-trips


def test_every_step_section_is_a_config_key():
    assert set(STEP_SECTIONS) == {*TRAINING_STEPS, "register", "deploy", "monitor", "report"}
    for step, keys in STEP_SECTIONS.items():
        assert set(keys) <= set(Config.model_fields), step
        # the monitor step sends its drift alerts through the stream's channels; it is never cached and trains nothing
        assert ("stream" not in keys or step == "monitor") and "serving" not in keys and "schedule" not in keys, step


# ---- Google Cloud formats, checked at load time -----------------------------------------------------------------

@pytest.mark.parametrize("text, key, problem", [
    ("gcp:\n  project: Acme Prod\n", "gcp.project", "'Acme Prod' is not a GCP project id"),
    ("gcp:\n  region: Europe West\n", "gcp.region", "is not a GCP region"),
    ("gcp:\n  labels: {Team: finops}\n", "gcp.labels.Team", "'Team' is not a valid GCP label key"),
    ("gcp:\n  labels: {team: FinOps}\n", "gcp.labels.team", "'FinOps' is not a valid GCP label value"),
    ("gcp:\n  service_account: me@example.com\n", "gcp.service_account", "is not a service account email"),
    ("pipeline:\n  pipeline_root: /tmp/root\n", "pipeline.pipeline_root", "is not a gs:// path"),
    ("pipeline:\n  source: out/events.jsonl\n", "pipeline.source", "cannot be read on Vertex AI"),
    ("deploy:\n  serving_image: my image\n", "deploy.serving_image", "is not a container image"),
    ("deploy:\n  min_replicas: 3\n  max_replicas: 2\n", "deploy.max_replicas", "is below deploy.min_replicas 3"),
    ("schedule:\n  cron: every monday\n", "schedule.cron", "is not a 5-field cron expression"),
    ("schedule:\n  timezone: Paris\n", "schedule.timezone", "'Paris' is not an IANA time zone"),
])
def test_gcp_formats_are_checked_when_loading(tmp_path, text, key, problem):
    path = _write(tmp_path, text)
    with pytest.raises(FinopsError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert msg.startswith(f"Config file {path}: key '{key}' is invalid: ") and problem in msg, msg
    assert "Value error" not in msg and msg.count(". ") == 0  # one sentence


def test_gcp_names_may_be_left_empty_for_the_local_world(tmp_path):
    cfg = load_config(_write(tmp_path, "gcp:\n  project: ''\n  service_account: ''\npipeline:\n  image: ''\n"
                                       "deploy:\n  serving_image: ''\n"))
    assert cfg.gcp.project == "" and cfg.deploy.serving_image == ""


def test_with_updates_validates_and_names_where(tmp_path):
    cfg = load_config()
    assert cfg.with_updates("--x", schedule={"timezone": "UTC"}).schedule.timezone == "UTC"
    with pytest.raises(FinopsError, match=r"^--api-endpoint: key 'gcp.api_endpoint' is invalid: 'a b' is not an API"):
        cfg.with_updates("--api-endpoint", gcp={"api_endpoint": "a b"})


# ---- the serving container's environment (pydantic-settings) ----------------------------------------------------

def test_container_settings_read_the_environment(monkeypatch):
    from finops_ml.serving.app import container_settings

    monkeypatch.setenv("AIP_HTTP_PORT", "9000")
    monkeypatch.setenv("AIP_PREDICT_ROUTE", "/v1/endpoints/1/deployedModels/2:predict")
    monkeypatch.setenv("AIP_HEALTH_ROUTE", "")  # empty: unset, the default applies
    monkeypatch.setenv("FINOPS_WORKERS", "3")
    env = container_settings()
    assert (env.aip_http_port, env.aip_predict_route, env.aip_health_route, env.finops_workers) == \
        (9000, "/v1/endpoints/1/deployedModels/2:predict", "/health", 3)
    assert container_settings({"AIP_HTTP_PORT": "8081"}).aip_http_port == 8081  # an explicit mapping wins


@pytest.mark.parametrize("name, value, problem", [
    ("AIP_HTTP_PORT", "http", "valid integer"),
    ("AIP_HTTP_PORT", "70000", "less than or equal to 65535"),
    ("FINOPS_WORKERS", "0", "greater than or equal to 1"),
    ("FINOPS_MAX_BODY_BYTES", "1.5MB", "valid integer"),
    ("AIP_HEALTH_ROUTE", "health", "pattern"),
])
def test_a_bad_container_variable_is_one_sentence_naming_it(monkeypatch, name, value, problem):
    from finops_ml.serving.app import container_settings

    monkeypatch.setenv(name, value)
    with pytest.raises(FinopsError) as exc:
        container_settings()
    msg = str(exc.value)
    assert msg.startswith(f"{name}={value!r} is invalid (") and problem in msg and msg.endswith("fix or unset it.")


ENV_FIELDS = [(section, name) for section, field in Config.model_fields.items()
              for name in getattr(field.annotation, "model_fields", {}) if name.endswith("_env")]


def test_there_are_env_name_fields():
    assert ("stream", "slack_webhook_env") in ENV_FIELDS and ("stream", "smtp_password_env") in ENV_FIELDS


@pytest.mark.parametrize("section, name", ENV_FIELDS)
@pytest.mark.parametrize("value", ["https://hooks.slack.com/services/T0/B0/xoxSecret123", "xoxSecret123 pass",
                                   "finops_slack_webhook", "9LIVES", ""])
def test_an_env_field_holds_a_variable_name_never_a_secret(tmp_path, section, name, value):
    path = _write(tmp_path, json.dumps({section: {name: value}}))
    with pytest.raises(FinopsError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert str(path) in msg and f"key '{section}.{name}' is invalid" in msg and "environment variable" in msg
    assert "xoxSecret123" not in msg and (not value or value not in msg)


def test_the_default_config_is_the_realistic_world_and_the_easy_shape_turns_every_knob_off():
    from finops_ml.synthetic.generator import EASY_KNOBS, ORG_SHAPES, REALISTIC_KNOBS, shape_config

    base = load_config().generator
    knobs = lambda g: {k: getattr(g, k) for k in REALISTIC_KNOBS}  # noqa: E731
    assert knobs(base) == ORG_SHAPES["realistic"] == REALISTIC_KNOBS
    assert shape_config("realistic", base) == base  # idempotent over the default
    easy = shape_config("easy", base)
    assert knobs(easy) == EASY_KNOBS == knobs(GeneratorConfig())  # GeneratorConfig's defaults: every knob off
    assert easy.model_dump(exclude=set(REALISTIC_KNOBS)) == base.model_dump(exclude=set(REALISTIC_KNOBS))
    for shape in ("small_stable", "large_fast_migration"):  # calm worlds even over the realistic default
        g = shape_config(shape, base)
        assert {k: v for k, v in knobs(g).items() if k != "noise_sigma"} == {
            k: v for k, v in EASY_KNOBS.items() if k != "noise_sigma"}, shape
        assert g.usage_noise == "lognormal" and g.noise_sigma in (0.04, 0.08)


@pytest.mark.parametrize("command", ["generate", "run"])
@pytest.mark.parametrize("shape", [None, "easy"])
def test_the_cli_generates_the_default_world_or_the_easy_one(command, shape, tmp_path, monkeypatch):
    """`finops-ml generate|run` with no shape generate configs/local.yaml's (realistic) world, `--shape easy` the
    easy one: the generator config they pass on holds each shape's knobs (generation stopped there)."""
    from typer.testing import CliRunner

    import finops_cli.main as cli
    from finops_ml.synthetic import generator
    from finops_ml.synthetic.generator import ORG_SHAPES

    seen = []

    def stop(cfg, seed, out, fmt="jsonl"):
        seen.append(cfg)
        raise FinopsError("generation stopped by the test")

    monkeypatch.setattr(generator, "generate", stop)
    args = [command, "--out", str(tmp_path / "o")] + (["--shape", shape] if shape else [])
    result = CliRunner().invoke(cli.app, args)
    assert "generation stopped by the test" in result.output and len(seen) == 1, result.output
    assert {k: getattr(seen[0], k) for k in ORG_SHAPES["realistic"]} == ORG_SHAPES[shape or "realistic"]
