"""The training pipeline: run whole with the KFP local runner on a small organisation, and compiled for Vertex AI."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from components.image import PIPELINE_IMAGE
from finops_ml.config import STEP_SECTIONS, Config, GeneratorConfig
from finops_ml.platform.registry import LocalRegistry
from finops_ml.synthetic.generator import generate
from pipelines.local import compile_pipeline, run_local
from pipelines.training import PIPELINE_NAME

pytestmark = [
    pytest.mark.kfp,
    # the local runner's notes: our image is the pipeline image, display names are for Vertex AI
    pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:Task .* have no effect in the current local runner:UserWarning"),
]

# Small enough for seconds per step, long enough for the forecast (3 holdout months + 1 backtest origin).
GENERATOR = GeneratorConfig(plants=1, resources_per_project=2, months=11)
SEED = 7
# Gates: forecast and anomaly forced to pass (threshold 0), the labeler forced to fail (threshold 1.0; the test
# checks its metrics are below 1 on this data).
CONFIG = Config(
    generator=GENERATOR,
    forecast={"candidates": ["linear"], "backtest_origins": 1},
    anomaly={"n_estimators": 50},
    gates={"forecast_accuracy": 0.0, "forecast_interval_coverage": 0.0, "anomaly_f1": 0.0, "label_accuracy": 1.0,
           "label_compliance_after": 1.0},
)
RUN_ID = "pipeline-test-run"
TRAINER_MODEL = {"train-forecast": "cost-forecast", "train-anomaly-detector": "cost-anomaly",
                 "train-labeler": "resource-labeler"}
MODEL_KIND = {"cost-forecast": "forecast", "cost-anomaly": "anomaly", "resource-labeler": "labeler"}
GATE_CONDITION = re.compile(r"^inputs\.parameter_values\['pipelinechannel--(check-gate(?:-\d+)?)-Output'\] == true$")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    path = compile_pipeline(tmp_path_factory.mktemp("compiled") / "sub" / "p.yaml")
    assert path.exists()
    return yaml.safe_load(path.read_text())


def _structure(doc: dict) -> tuple[set[str], dict[str, tuple[str, str]]]:
    """(tasks outside conditions, {trainer task: (register task, deploy task) its gate's condition guards})."""
    root_tasks = doc["root"]["dag"]["tasks"]
    plain = {name for name, t in root_tasks.items() if not name.startswith("condition-")}
    guarded = {}
    for name, t in root_tasks.items():
        if name.startswith("condition-"):
            gate = GATE_CONDITION.match(t["triggerPolicy"]["condition"]).group(1)
            trainer = root_tasks[gate]["inputs"]["artifacts"]["evaluation"]["taskOutputArtifact"]["producerTask"]
            register, deploy = sorted(doc["components"][t["componentRef"]["name"]]["dag"]["tasks"], reverse=True)
            assert register.startswith("register-model") and deploy.startswith("deploy-model")
            guarded[trainer] = (register, deploy)
    return plain, guarded


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory) -> SimpleNamespace:
    base = tmp_path_factory.mktemp("pipeline")
    data = base / "data"
    generate(GENERATOR, SEED, data)
    registry_dir = base / "registry"
    # The arguments `finops-ml run` builds.
    arguments = {**CONFIG.step_parameters(), "registry_dir": str(registry_dir), "run_id": RUN_ID,
                 "source": str(data / "events.jsonl"), "control_totals": str(data / "control_totals.csv"),
                 "anomaly_labels": str(data / "truth" / "anomaly_cells.csv"),
                 "resource_truth": str(data / "truth" / "resources.csv")}
    events: list[tuple[str, str, float | None]] = []
    root, log_path = base / "pipeline_root", base / "pipeline.log"
    task, timings, failed = run_local(arguments, root, log_path, lambda *e: events.append(e))
    (run_dir,) = root.iterdir()
    return SimpleNamespace(task=task, timings=timings, failed=failed, events=events, run_dir=run_dir,
                           log_path=log_path, registry_dir=registry_dir)


def _evaluation(run, trainer: str) -> dict:
    return json.loads((run.run_dir / trainer / "evaluation" / "evaluation.json").read_text())


def _output_parameter(run, task: str):
    return json.loads((run.run_dir / task / "executor_output.json").read_text())["parameterValues"]["Output"]


# ---- the local run ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_local_run_has_no_failed_step_and_reports_each_step(pipeline_run):
    assert pipeline_run.failed == []
    log = pipeline_run.log_path.read_text()
    assert "Pipeline" in log and "finished with status" in log and "FAILURE" not in log
    started = [name for name, what, _ in pipeline_run.events if what == "start"]
    ended = {name: seconds for name, what, seconds in pipeline_run.events if what != "start"}
    assert {what for _, what, _ in pipeline_run.events} == {"start", "success"}
    assert len(started) == len(set(started)) and set(started) == set(ended)
    assert all(seconds > 0 for seconds in ended.values())


@pytest.mark.slow
def test_step_timings_cover_every_task_that_ran(pipeline_run, compiled):
    plain, guarded = _structure(compiled)
    assert plain == {"ingest-events", "build-features", "train-forecast", "train-anomaly-detector", "train-labeler",
                     "check-gate", "check-gate-2", "check-gate-3", "monitor-models", "build-report"}
    passed = {trainer for trainer in guarded if _evaluation(pipeline_run, trainer)["passed"]}
    expected = plain | {task for trainer in passed for task in guarded[trainer]}

    assert set(pipeline_run.timings) == expected
    assert all(isinstance(s, float) and s > 0 for s in pipeline_run.timings.values())
    assert {p.name for p in pipeline_run.run_dir.iterdir()} == expected


@pytest.mark.slow
def test_register_runs_only_for_models_whose_gate_passed(pipeline_run, compiled):
    _, guarded = _structure(compiled)
    labeler = _evaluation(pipeline_run, "train-labeler")
    assert labeler["metrics"]["label_compliance_after"] < 1.0  # so a threshold of 1.0 must fail
    verdicts = {trainer: _evaluation(pipeline_run, trainer)["passed"] for trainer in guarded}
    assert verdicts == {"train-forecast": True, "train-anomaly-detector": True, "train-labeler": False}

    registry = LocalRegistry(pipeline_run.registry_dir)
    for trainer, (register_task, deploy_task) in guarded.items():
        model = TRAINER_MODEL[trainer]
        assert _evaluation(pipeline_run, trainer)["model_name"] == model
        if verdicts[trainer]:
            assert register_task in pipeline_run.timings and deploy_task in pipeline_run.timings
            assert _output_parameter(pipeline_run, register_task) == f"{model}:v1"
            assert registry.versions(model) == [1]
            assert registry.aliases(model) == {"latest": 1, "champion": 1}
            entry = registry.entry(model, "champion")
            assert entry["run_id"] == RUN_ID and entry["config_digest"] == CONFIG.digest(MODEL_KIND[model])
            # Deployed: the first version of a model takes all the traffic of its local endpoint.
            deployed = json.loads(_output_parameter(pipeline_run, deploy_task))
            assert deployed["deployed"] is True and deployed["traffic"] == {"v1": 100}
            assert registry.endpoint(model)["traffic"] == {"1": 100}
        else:
            assert register_task not in pipeline_run.timings and deploy_task not in pipeline_run.timings
            assert not (pipeline_run.run_dir / register_task).exists()
            assert registry.versions(model) == []
            assert not (pipeline_run.registry_dir / model).exists()


@pytest.mark.slow
def test_gate_outputs_match_the_evaluations(pipeline_run, compiled):
    root_tasks = compiled["root"]["dag"]["tasks"]
    for gate in ("check-gate", "check-gate-2", "check-gate-3"):
        trainer = root_tasks[gate]["inputs"]["artifacts"]["evaluation"]["taskOutputArtifact"]["producerTask"]
        assert _output_parameter(pipeline_run, gate) is _evaluation(pipeline_run, trainer)["passed"]


@pytest.mark.slow
def test_local_run_writes_the_report_and_summary(pipeline_run):
    html = (pipeline_run.run_dir / "build-report" / "report").read_text()
    summary = json.loads((pipeline_run.run_dir / "build-report" / "summary").read_text())
    assert "Plotly.newPlot" in html
    assert summary["reconciliation_diff"] == 0.0
    assert summary["rows"]["quarantined"] == 0
    assert summary["gates"]["forecast_accuracy"]["passed"] is True
    assert summary["gates"]["label_compliance_after"]["passed"] is False
    assert summary["all_gates_passed"] is False


# ---- the compiled pipeline ---------------------------------------------------------------------------------------

def test_compiled_pipeline_name_and_parameters(compiled):
    assert compiled["pipelineInfo"]["name"] == PIPELINE_NAME == "finops-ml-training"
    params = compiled["root"]["inputDefinitions"]["parameters"]
    step_params = {f"{step}_config" for step in STEP_SECTIONS}
    assert set(params) == {"source", "registry_dir", "control_totals", "anomaly_labels", "resource_truth",
                           "anomaly_feedback", "run_id", *step_params}
    assert all(p["parameterType"] == "STRING" for p in params.values())
    for required in ("source", "registry_dir", *step_params):
        assert not params[required].get("isOptional", False), required
    for optional in ("control_totals", "anomaly_labels", "resource_truth", "anomaly_feedback"):
        assert params[optional]["isOptional"] is True and params[optional]["defaultValue"] == "", optional
    assert params["run_id"]["defaultValue"] == "{{$.pipeline_job_uuid}}"


def test_compiled_pipeline_registers_only_inside_gate_conditions(compiled):
    root_tasks = compiled["root"]["dag"]["tasks"]
    conditions = {name: t for name, t in root_tasks.items() if "triggerPolicy" in t}
    assert len(conditions) == 3
    assert not any(t["componentRef"]["name"].startswith("comp-register-model") for t in root_tasks.values())
    trainers = set()
    for name, t in conditions.items():
        match = GATE_CONDITION.match(t["triggerPolicy"]["condition"])
        assert match, t["triggerPolicy"]["condition"]
        gate = match.group(1)
        assert root_tasks[gate]["componentRef"]["name"].startswith("comp-check-gate")
        assert gate in t["dependentTasks"]
        # registration waits for monitoring: it compares with the champions before this run can move them
        assert "monitor-models" in t["dependentTasks"]
        trainer = root_tasks[gate]["inputs"]["artifacts"]["evaluation"]["taskOutputArtifact"]["producerTask"]
        trainers.add(trainer)
        inner = compiled["components"][t["componentRef"]["name"]]["dag"]["tasks"]
        assert len(inner) == 2
        register, deploy = (inner[k] for k in sorted(inner, reverse=True))
        assert register["componentRef"]["name"].startswith("comp-register-model")
        # It registers the model of the very trainer whose evaluation the gate checked.
        artifacts = register["inputs"]["artifacts"]
        assert artifacts["model"]["componentInputArtifact"] == f"pipelinechannel--{trainer}-model"
        assert artifacts["evaluation"]["componentInputArtifact"] == f"pipelinechannel--{trainer}-evaluation"
        assert set(register["inputs"]["parameters"]) == {"registry_dir", "config_json", "run_id"}
        assert register["inputs"]["parameters"]["config_json"] == {"componentInputParameter":
                                                                   "pipelinechannel--register_config"}
        # It deploys what the register step registered, after it, with the same registry and config.
        assert deploy["componentRef"]["name"].startswith("comp-deploy-model")
        register_name = next(k for k, v in inner.items() if v is register)
        assert deploy["dependentTasks"] == [register_name]
        params = deploy["inputs"]["parameters"]
        assert params["registered"]["taskOutputParameter"] == {"outputParameterKey": "Output",
                                                               "producerTask": register_name}
        assert params["registry_dir"] == register["inputs"]["parameters"]["registry_dir"]
        assert params["config_json"] == {"componentInputParameter": "pipelinechannel--deploy_config"}
    assert trainers == set(TRAINER_MODEL)


def test_compiled_pipeline_is_a_valid_pipeline_spec(compiled):
    spec = json_format.ParseDict(compiled, pipeline_spec_pb2.PipelineSpec())
    assert spec.pipeline_info.name == PIPELINE_NAME
    assert len(spec.root.dag.tasks) == 13  # 10 steps + 3 condition groups
    assert set(spec.root.input_definitions.parameters) == set(compiled["root"]["inputDefinitions"]["parameters"])
    assert spec.root.dag.tasks["build-report"].dependent_tasks == [
        "ingest-events", "monitor-models", "train-anomaly-detector", "train-forecast", "train-labeler"]
    executors = compiled["deploymentSpec"]["executors"]
    assert len(executors) == 16  # 10 steps + 3 register steps + 3 deploy steps
    assert {e["container"]["image"] for e in executors.values()} == {PIPELINE_IMAGE}


def test_ingest_is_never_served_from_cache(compiled):
    # It reads a source whose rows change under the same name: a cached ingest is last week's data.
    tasks = compiled["root"]["dag"]["tasks"]
    assert tasks["ingest-events"].get("cachingOptions", {}).get("enableCache", False) is False
    assert tasks["build-features"]["cachingOptions"]["enableCache"] is True
    # the champions monitoring compares with live in the registry, outside the step's inputs
    assert tasks["monitor-models"].get("cachingOptions", {}).get("enableCache", False) is False


def test_each_training_step_is_sent_its_own_config(compiled):
    root_tasks = compiled["root"]["dag"]["tasks"]
    for task, step in (("train-forecast", "forecast"), ("train-anomaly-detector", "anomaly"),
                       ("train-labeler", "labeler")):
        assert root_tasks[task]["inputs"]["parameters"]["config_json"] == {"componentInputParameter": f"{step}_config"}
