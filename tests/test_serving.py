"""The prediction server: the Vertex AI contract, each model's answers against the library's, `finops-ml serve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from finops_ml.models import forecast as forecast_lib
from finops_ml.models.catalogue import MODELS
from finops_ml.models.trees import ForestRegressor
from finops_ml.serving import app, predictors, schemas
from testsupport.cli import command
from testsupport.net import free_port, wait_for_http
from testsupport.registry import train_small_registry


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """The three models trained by the pipeline's own steps on a small organisation, in a local registry."""
    return train_small_registry(tmp_path_factory.mktemp("serving"))  # registered whatever the gates say


def _ready(client: TestClient, route: str = "/health") -> None:
    for _ in range(600):
        if client.get(route).status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"{route} never became ready: {client.get(route).text}")


@pytest.fixture(scope="module")
def client(trained):
    """All three models in one app (as `finops-ml serve` without --model)."""
    spec = app.ServerSpec(models={k: str(d) for k, d in trained["dirs"].items()}, max_body_bytes=200_000)
    with TestClient(app.create_app(spec)) as c:
        _ready(c)
        yield c


def _predict(client, kind: str, instances, parameters=None):
    body = {"instances": instances}
    if parameters is not None:
        body["parameters"] = parameters
    return client.post(f"/{kind}/predict", json=body)


# ---- the contract ---------------------------------------------------------------------------------------------------

@pytest.mark.unit
@pytest.mark.slow
def test_health_is_503_until_the_model_is_loaded_then_200(trained):
    spec = app.ServerSpec(models={"labeler": str(trained["dirs"]["labeler"])})
    server = app.create_app(spec)
    cold = TestClient(server)  # not started: the lifespan (which loads the model) has not run
    r = cold.get("/health")
    assert r.status_code == 503 and "loading" in r.json()["error"]
    assert cold.post("/predict", json={"instances": [{}]}).status_code == 503
    with TestClient(server) as c:
        _ready(c)
        body = c.get("/health").json()
        assert body["model"] == "labeler" and body["name"] == "resource-labeler" and body["version"] == 1


@pytest.mark.unit
def test_a_model_that_fails_to_load_says_why_on_health(tmp_path):
    (tmp_path / "model.joblib").write_bytes(b"not a pickle")
    with TestClient(app.create_app(app.ServerSpec(models={"anomaly": str(tmp_path)}))) as c:
        for _ in range(100):
            r = c.get("/health")
            if "failed" in r.text:
                break
            time.sleep(0.05)
        assert r.status_code == 503 and "failed to load" in r.json()["error"]


@pytest.mark.unit
@pytest.mark.slow
def test_routes_follow_the_aip_variables(trained):
    env = {"AIP_STORAGE_URI": str(trained["dirs"]["forecast"]), "AIP_HTTP_PORT": "9000",
           "AIP_HEALTH_ROUTE": "/v1/endpoints/123/deployedModels/456",
           "AIP_PREDICT_ROUTE": "/v1/endpoints/123/deployedModels/456:predict", "FINOPS_MAX_BODY_BYTES": "5000"}
    spec = app.spec_from_env(env)
    assert spec.models == {"forecast": str(trained["dirs"]["forecast"])} and spec.max_body_bytes == 5000
    with TestClient(app.create_app(spec)) as c:
        _ready(c, env["AIP_HEALTH_ROUTE"])
        series = next(iter(predictors.ForecastPredictor(trained["dirs"]["forecast"]).stored))
        r = c.post(env["AIP_PREDICT_ROUTE"], json={"instances": [{"service": series[0], "project_id": series[1]}]})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 1
        assert c.post("/predict", json={"instances": []}).status_code == 404


@pytest.mark.unit
@pytest.mark.slow
def test_the_model_kind_is_found_without_a_registry_entry(trained, tmp_path):
    import shutil

    for kind, d in trained["dirs"].items():
        shutil.copy(d / "model.joblib", tmp_path / f"{kind}.joblib")
    for kind in MODELS:
        plain = tmp_path / kind
        plain.mkdir()
        (tmp_path / f"{kind}.joblib").rename(plain / "model.joblib")
        assert predictors.kind_of(plain) == kind
    with pytest.raises(app.FinopsError, match="AIP_STORAGE_URI is not set"):
        app.spec_from_env({})


@pytest.mark.unit
@pytest.mark.slow
def test_bad_instances_are_400_naming_the_instance_and_field(client):
    ok = {"resource_name": "vm-1", "project_id": "p", "service": "Compute Engine"}
    cases = [
        ("labeler", [ok, {"resource_name": "vm-2", "project_id": "p"}], "instances[1].service: Field required"),
        ("labeler", [{**ok, "colour": "red"}], "instances[0].colour: Extra inputs are not permitted"),
        ("labeler", [ok], "parameters.confidence_threshold: Input should be less than or equal to 1",
         {"confidence_threshold": 2}),
        ("forecast", [{"service": "s", "project_id": "p", "horizon_months": "three"}],
         "instances[0].horizon_months: Input should be a valid integer"),
        ("forecast", [{"service": "s", "project_id": "p", "history": [1.0] * 60}],
         "instances[0]: history and end_date go together"),
        ("forecast", [{"service": "s", "project_id": "p", "history": [1.0] * 10, "end_date": "2026-01-31"}],
         "instances[0].history: List should have at least 56 items"),
        ("anomaly", [{"service": "s", "project_id": "p", "end_date": "2026-02-30", "daily_costs": [1.0]}],
         "instances[0].end_date: Input should be a valid date"),
        ("anomaly", [{"service": "s", "project_id": "p", "end_date": "2026-01-31", "daily_costs": [1.0] * 10}],
         "instances[0].daily_costs: a window of 10 days is too short"),
        ("anomaly", [{"service": "s", "project_id": "p", "end_date": "2026-01-31"}],
         "instances[0]: send exactly one of daily_costs"),
        ("anomaly", [{"service": "s", "project_id": "p", "end_date": "2026-01-31",
                      "resources": [{"resource_name": "vm", "daily_costs": [1.0] * 55 + [None] * 5}]}],
         "instances[0].resources: no cost on end_date"),
    ]
    for kind, instances, message, *params in cases:
        r = _predict(client, kind, instances, *params)
        assert r.status_code == 400, (kind, instances, r.text)
        assert r.json()["error"].startswith(message), r.json()["error"]


@pytest.mark.unit
@pytest.mark.slow
def test_bad_envelopes_are_400_with_what_to_send(client):
    cases = [(b"{not json", "request body is not valid JSON"),
             (b'{"rows": []}', 'request body must be a JSON object with an "instances" list'),
             (b'{"instances": []}', '"instances" must be a non-empty list'),
             (b'{"instances": [{}], "extra": 1}', "request body has unknown key(s) extra"),
             (b'{"instances": [{}], "parameters": [1]}', '"parameters" must be a JSON object'),
             (b'[1, 2]', 'request body must be a JSON object')]
    for body, message in cases:
        r = client.post("/labeler/predict", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"].startswith(message), r.text


@pytest.mark.unit
@pytest.mark.slow
def test_oversized_bodies_are_413_declared_or_streamed(client):
    big = json.dumps({"instances": [{"resource_name": "x" * 1000, "project_id": "p", "service": "s"}] * 250})
    assert len(big) > 200_000
    r = client.post("/labeler/predict", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over the limit of 200,000 bytes" in r.json()["error"]
    chunks = (big[i: i + 10_000].encode() for i in range(0, len(big), 10_000))  # no Content-Length: chunked
    r = client.post("/labeler/predict", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text


@pytest.mark.unit
@pytest.mark.slow
def test_wrong_route_is_404_and_wrong_method_405(client):
    assert client.post("/labelr/predict", json={"instances": [{}]}).status_code == 404
    assert client.get("/labeler/predict").status_code == 405
    assert client.get("/anomaly/health").status_code == 200


# ---- each model answers what the library answers ------------------------------------------------------------------

@pytest.mark.unit
@pytest.mark.slow
def test_forecast_stored_answers_are_the_trained_forecast(client, trained):
    table = pd.read_csv(trained["dirs"]["forecast"] / "forecast.csv")
    keys = table[["service", "project_id"]].drop_duplicates().head(5)
    r = _predict(client, "forecast", [{"service": s, "project_id": p} for s, p in zip(keys.service, keys.project_id)])
    assert r.status_code == 200, r.text
    for pred, (s, p) in zip(r.json()["predictions"], zip(keys.service, keys.project_id)):
        expected = table[(table.service == s) & (table.project_id == p)].sort_values("month")
        assert [m["month"] for m in pred["months"]] == expected.month.tolist()
        np.testing.assert_allclose([m["forecast"] for m in pred["months"]], expected.forecast, rtol=1e-12)
        np.testing.assert_allclose([m["hi"] for m in pred["months"]], expected.hi, rtol=1e-12)
    one = _predict(client, "forecast", [{"service": keys.service.iloc[0], "project_id": keys.project_id.iloc[0],
                                         "horizon_months": 1}]).json()["predictions"][0]
    assert len(one["months"]) == 1
    r = _predict(client, "forecast", [{"service": "Nope", "project_id": "none"}])
    assert r.status_code == 400 and "instances[0]: the model has no stored forecast" in r.json()["error"]
    r = _predict(client, "forecast", [{"service": "s", "project_id": "p", "horizon_months": 4}])
    assert r.status_code == 400 and "at most 3 months" in r.json()["error"]


@pytest.mark.unit
@pytest.mark.slow
def test_forecast_from_history_equals_the_library_on_the_whole_panel(client, trained):
    import joblib

    model = predictors.ForecastPredictor(trained["dirs"]["forecast"])
    library_model = joblib.load(trained["dirs"]["forecast"] / "model.joblib")  # as trained, untouched
    panel = forecast_lib.SeriesPanel.from_daily(trained["daily_cost"])
    end = len(panel.days) - 20  # mid-month: the first month is the rest of the current one
    last = panel.days[end]
    days = (last + pd.offsets.MonthEnd(3) - last).days
    library = forecast_lib.monthly(library_model.predict(panel.until(end), days=days), "forecast",
                                   by=("service", "project_id"))
    checked = 0
    for i in range(0, len(panel.keys), max(1, len(panel.keys) // 4)):
        s, p = panel.keys.service.iloc[i], panel.keys.project_id.iloc[i]
        history = panel.values[i, end - 99: end + 1].tolist()
        first_cost = panel.days[int(np.argmax(panel.values[i, : end + 1] > 0))]
        r = _predict(client, "forecast", [{"service": s, "project_id": p, "history": history,
                                           "end_date": str(last.date()), "first_cost_date": str(first_cost.date())}])
        assert r.status_code == 200, r.text
        months = r.json()["predictions"][0]["months"]
        assert len(months) == 3 and months[0]["month"] == last.strftime("%Y-%m")
        for m in months:
            want = library.get((s, p, m["month"]), 0.0)
            assert m["forecast"] == pytest.approx(want, rel=1e-9, abs=1e-9)
            assert m["lo"] == pytest.approx(want * model.lo_q, rel=1e-9, abs=1e-9)
            checked += want > 0
    assert checked >= 4


def _anomaly_instance(rdc: pd.DataFrame, service: str, project: str, end: pd.Timestamp, days: int) -> dict:
    cell = rdc[(rdc.service == service) & (rdc.project_id == project)]
    window = pd.date_range(end=end, periods=days, freq="D")
    wide = cell.assign(day=pd.to_datetime(cell.day)).pivot_table(index="resource_name", columns="day",
                                                                 values="net_cost", aggfunc="sum")
    wide = wide.reindex(columns=window)
    wide = wide[wide.notna().any(axis=1)]
    return {"service": service, "project_id": project, "end_date": str(end.date()),
            "resources": [{"resource_name": name, "daily_costs": [None if np.isnan(v) else float(v) for v in row]}
                          for name, row in zip(wide.index, wide.to_numpy())]}


def window_frame(inst: schemas.AnomalyInstance) -> pd.DataFrame:
    """An anomaly instance as the rows of the resource_daily_cost view (or daily_cost, for a cell's costs)."""
    n = inst.window_days()
    days = pd.date_range(end=pd.Timestamp(inst.end_date), periods=n, freq="D")
    if inst.daily_costs is not None:
        return pd.DataFrame({"day": days, "service": inst.service, "project_id": inst.project_id,
                             "net_cost": np.asarray(inst.daily_costs, float)})
    names, cost = [], []
    for r in inst.resources:
        names.append(r.resource_name)
        cost.append([np.nan if c is None else c for c in r.daily_costs])
    cost = np.asarray(cost, float)
    r_idx, t_idx = np.nonzero(np.isfinite(cost))
    return pd.DataFrame({"day": days[t_idx], "service": inst.service, "project_id": inst.project_id,
                         "resource_name": np.asarray(names, object)[r_idx], "net_cost": cost[r_idx, t_idx]})


@pytest.mark.unit
@pytest.mark.slow
def test_anomaly_answers_equal_the_detector_on_the_same_window(client, trained):
    rdc = trained["resource_daily_cost"]
    detector = predictors.AnomalyPredictor(trained["dirs"]["anomaly"]).model
    full = detector.score(rdc)
    flagged = full[full.is_anomaly]
    # Cells the detector flags on the whole history, and ordinary ones; judged from a 63-day window.
    picks = list(zip(flagged.service, flagged.project_id, flagged.day))[:4]
    calm = full[~full.is_anomaly & (full.day > full.day.min() + pd.Timedelta(days=80))].sample(4, random_state=1)
    picks += list(zip(calm.service, calm.project_id, calm.day))
    instances = [_anomaly_instance(rdc, s, p, pd.Timestamp(d), 63) for s, p, d in picks]
    r = _predict(client, "anomaly", instances)
    assert r.status_code == 200, r.text
    n_flagged = 0
    for inst, pred in zip(instances, r.json()["predictions"]):
        cells = detector.score(window_frame(schemas.AnomalyInstance.model_validate(inst)))
        want = cells.iloc[-1]
        assert pred["day"] == inst["end_date"] == str(want.day.date())
        assert pred["is_anomaly"] == bool(want.is_anomaly) and pred["direction"] == want.direction
        for key in ("net_cost", "expected", "score", "impact", "pct_deviation", "new_cost"):
            if pd.isna(want[key]):  # no % deviation from an expected 0: NaN in batch, null in JSON
                assert pred[key] is None, key
                continue
            assert pred[key] == pytest.approx(float(want[key]), rel=1e-9, abs=1e-9), key
        assert pred["threshold"] == detector.thresholds()[want.direction]
        n_flagged += pred["is_anomaly"]
    assert n_flagged >= 2  # a 63-day window still catches what the full history catches


@pytest.mark.unit
@pytest.mark.slow
def test_a_resource_that_stops_billing_is_answered_as_a_drop(client, trained):
    """The judged day may have no cost at all: an always-on resource without cost is a drop, as in batch."""
    rdc = trained["resource_daily_cost"]
    detector = predictors.AnomalyPredictor(trained["dirs"]["anomaly"]).model
    full = detector.score(rdc)
    calm = full[~full.is_anomaly & full.judged & (full.day > full.day.min() + pd.Timedelta(days=100))]
    calm = calm[calm.net_cost == calm.groupby(["service", "project_id"]).net_cost.transform("max")].iloc[0]
    inst = _anomaly_instance(rdc, calm.service, calm.project_id, calm.day, 63)
    for r in inst["resources"]:
        r["daily_costs"][-1] = None  # the whole cell stops billing on the judged day
    pred = _predict(client, "anomaly", [inst]).json()["predictions"][0]
    assert pred["is_anomaly"] and pred["direction"] == "down" and pred["net_cost"] == 0.0
    assert pred["pct_deviation"] == pytest.approx(-100.0) and pred["impact"] == pytest.approx(-pred["expected"])
    frame = window_frame(schemas.AnomalyInstance.model_validate(inst))
    other = pd.DataFrame({"day": [pd.Timestamp(inst["end_date"])], "service": ["other"], "project_id": ["other"],
                          "resource_name": ["x"], "net_cost": [1.0]})  # the batch's days run to the judged one
    cells = detector.score(pd.concat([frame, other], ignore_index=True))
    want = cells[cells.service == calm.service].iloc[-1]
    assert str(want.day.date()) == inst["end_date"] and want.is_anomaly and want.direction == "down"
    assert pred["expected"] == pytest.approx(float(want.expected), rel=1e-9)
    assert pred["cause"]["resource"] == want.cause_resource


@pytest.mark.unit
@pytest.mark.slow
def test_anomaly_on_a_cells_daily_costs_equals_the_detector(client, trained):
    daily = trained["daily_cost"]
    detector = predictors.AnomalyPredictor(trained["dirs"]["anomaly"]).model
    s, p = daily.service.iloc[0], daily.project_id.iloc[0]
    cell = daily[(daily.service == s) & (daily.project_id == p)].assign(day=lambda d: pd.to_datetime(d.day))
    cell = cell.sort_values("day").tail(70)
    inst = {"service": s, "project_id": p, "end_date": str(cell.day.iloc[-1].date()),
            "daily_costs": cell.net_cost.tolist()}
    pred = _predict(client, "anomaly", [inst]).json()["predictions"][0]
    want = detector.score(cell[["day", "service", "project_id", "net_cost"]]).iloc[-1]
    assert pred["expected"] == pytest.approx(float(want.expected), rel=1e-9)
    assert pred["score"] == pytest.approx(float(want.score), rel=1e-9, abs=1e-12)


@pytest.mark.unit
@pytest.mark.slow
def test_labeler_answers_equal_the_library_for_every_resource(client, trained):
    resources = trained["resources"]
    instances = []
    for row in resources.itertuples():
        inst = {"resource_name": row.resource_name, "project_id": row.project_id, "service": row.service,
                "project_name": row.project_name, "skus": row.skus.split(" | "), "region": row.region,
                "env": row.env, "workload": row.workload}
        for target in ("owner", "cost_center", "plant"):
            value = getattr(row, target)
            inst[target] = None if pd.isna(value) else value
        instances.append(inst)
    # and the same resources in a project never seen labelled (where the labeler answers by analogy)
    resources = pd.concat([resources, resources.assign(project_id="acme-new-prd")], ignore_index=True)
    instances += [{**inst, "project_id": "acme-new-prd"} for inst in instances]
    r = _predict(client, "labeler", instances)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    model = predictors.LabelerPredictor(trained["dirs"]["labeler"]).model
    library = model.predict(resources)
    labelled, _ = model.apply(resources)
    for target in ("owner", "cost_center", "plant"):
        assert [p[target]["predicted"] for p in preds] == library[f"{target}_predicted"].tolist()
        np.testing.assert_allclose([p[target]["confidence"] for p in preds], library[f"{target}_confidence"],
                                   rtol=1e-9)
        assert [p[target]["apply"] for p in preds] == labelled[f"{target}_applied"].tolist()
    assert any(p["owner"]["apply"] for p in preds)
    stricter = _predict(client, "labeler", instances, {"confidence_threshold": 1.0}).json()["predictions"]
    assert not any(p["owner"]["apply"] for p in stricter)


# ---- finops-ml serve ------------------------------------------------------------------------------------------------

def _wait_healthy(proc: subprocess.Popen, url: str) -> dict:
    try:
        return json.loads(wait_for_http(url, timeout=60, proc=proc))
    except RuntimeError as exc:
        pytest.fail(f"{exc}: {proc.stdout.read() if proc.poll() is not None else ''}")


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, method="POST", headers={"content-type": "application/json"},
                                     data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())


RESOURCE = {"resource_name": "mes-vm-01", "project_id": "p", "service": "Compute Engine"}


@pytest.mark.cli
@pytest.mark.slow
def test_finops_ml_serve_answers_on_a_loopback_port(trained):
    port = free_port()
    proc = subprocess.Popen(command("serve", "--registry", str(trained["registry"]), "--port", str(port)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "300"})
    try:
        base = f"http://127.0.0.1:{port}"
        body = _wait_healthy(proc, base + "/health")
        assert [m["model"] for m in body["models"]] == ["forecast", "anomaly", "labeler"]
        prediction = _post(base + "/labeler/predict", {"instances": [RESOURCE]})["predictions"][0]
        assert set(prediction) == {"resource_name", "project_id", "owner", "cost_center", "plant"}
        assert 0 < prediction["plant"]["confidence"] <= 1
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert "/forecast/predict" in out and "/anomaly/predict" in out and "/labeler/predict" in out


@pytest.mark.cli
@pytest.mark.slow
def test_the_container_entry_point_follows_the_aip_variables(trained):
    """What deploy/Dockerfile.serving runs: python -m finops_ml.serving, configured by Vertex AI's variables."""
    port = free_port()
    env = {**os.environ, "AIP_HTTP_PORT": str(port), "AIP_STORAGE_URI": str(trained["dirs"]["labeler"]),
           "AIP_HEALTH_ROUTE": "/v1/endpoints/1/deployedModels/2", "FINOPS_WORKERS": "2",
           "AIP_PREDICT_ROUTE": "/v1/endpoints/1/deployedModels/2:predict"}
    proc = subprocess.Popen([sys.executable, "-m", "finops_ml.serving"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    try:
        base = f"http://127.0.0.1:{port}/v1/endpoints/1/deployedModels/2"
        assert _wait_healthy(proc, base)["name"] == "resource-labeler"
        assert len(_post(base + ":predict", {"instances": [RESOURCE, RESOURCE]})["predictions"]) == 2
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    bad = subprocess.run([sys.executable, "-m", "finops_ml.serving"], capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if not k.startswith(("AIP_", "FINOPS_"))})
    assert bad.returncode == 1 and bad.stderr.startswith("error: AIP_STORAGE_URI is not set")


@pytest.mark.parametrize("args, message", [
    (["--registry", "/nonexistent/registry"], "Registry /nonexistent/registry does not exist"),
    (["--model", "forecasts"], "--model 'forecasts' is not one of forecast, anomaly, labeler"),
    (["--alias", "gold"], "has no alias or version 'gold'"),
    (["--workers", "0"], "--workers 0: key 'serving.workers' is invalid"),
])
@pytest.mark.cli
@pytest.mark.slow
def test_finops_ml_serve_errors_are_one_sentence(trained, args, message):
    args = args if "--registry" in args else ["--registry", str(trained["registry"]), *args]
    r = subprocess.run(command("serve", *args), capture_output=True, text=True, timeout=60,
                       env={**os.environ, "COLUMNS": "400"})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr


@pytest.mark.gcp
@pytest.mark.slow
def test_a_gs_storage_uri_is_downloaded_through_the_storage_client(trained, monkeypatch):
    """On Vertex AI, AIP_STORAGE_URI is gs://...: the real storage client, pointed at a recording server."""
    import threading
    import urllib.parse
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    model_dir = trained["dirs"]["anomaly"]
    objects = {f"models/cost-anomaly/v1/{p.name}": p.read_bytes() for p in model_dir.iterdir() if p.is_file()}
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            url = urllib.parse.urlparse(self.path)
            seen.append(url.path)
            if url.path == "/storage/v1/b/bucket-1/o":
                prefix = urllib.parse.parse_qs(url.query).get("prefix", [""])[0]
                items = [{"kind": "storage#object", "name": n, "bucket": "bucket-1", "size": str(len(b)),
                          "generation": "1"} for n, b in objects.items() if n.startswith(prefix)]
                body, ctype = json.dumps({"kind": "storage#objects", "items": items}).encode(), "application/json"
            elif url.path.startswith("/download/storage/v1/b/bucket-1/o/"):
                name = urllib.parse.unquote(url.path.rsplit("/o/", 1)[1])
                body, ctype = objects[name], "application/octet-stream"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.server_port}")
        spec = app.spec_from_env({"AIP_STORAGE_URI": "gs://bucket-1/models/cost-anomaly/v1/"})
    finally:
        server.shutdown()
    local = Path(spec.models["anomaly"])
    assert sorted(p.name for p in local.iterdir()) == sorted(p.name for p in model_dir.iterdir() if p.is_file())
    assert (local / "model.joblib").read_bytes() == (model_dir / "model.joblib").read_bytes()
    assert "/storage/v1/b/bucket-1/o" in seen
    predictors.AnomalyPredictor(local)  # loads


@pytest.mark.unit
@pytest.mark.slow
def test_a_random_forest_forecast_from_history_equals_the_library(trained, tmp_path):
    """The demo's forecast is usually the random forest, whose trees the server walks itself."""
    import shutil

    import joblib

    panel = forecast_lib.SeriesPanel.from_daily(trained["daily_cost"])
    model = forecast_lib.CostForecaster("random_forest", 0, 93).fit(panel)
    joblib.dump(model, tmp_path / "model.joblib")
    shutil.copy(trained["dirs"]["forecast"] / "forecast.csv", tmp_path / "forecast.csv")
    served = predictors.ForecastPredictor(tmp_path)
    assert isinstance(served.model.regressor_, ForestRegressor)
    last = panel.days[-1]
    library = forecast_lib.monthly(model.predict(panel, days=(last + pd.offsets.MonthEnd(2) - last).days),
                                   "forecast", by=("service", "project_id"))
    for i in range(0, len(panel.keys), max(1, len(panel.keys) // 3)):
        first_cost = panel.days[int(np.argmax(panel.values[i] > 0))]
        inst = schemas.ForecastInstance(service=panel.keys.service.iloc[i], project_id=panel.keys.project_id.iloc[i],
                                        history=panel.values[i, -95:].tolist(), end_date=last.date(),
                                        first_cost_date=first_cost.date())
        for m in served.forecast_history(inst, 2)["months"]:
            want = library.get((inst.service, inst.project_id, m["month"]), 0.0)
            assert m["forecast"] == pytest.approx(want, rel=1e-9, abs=1e-9)


@pytest.mark.unit
@pytest.mark.slow
def test_an_ensemble_forecast_is_served_like_the_library(trained, tmp_path):
    """The forecast step may register the mean of its two best candidates: the server loads and runs it too."""
    import shutil

    import joblib

    stored = joblib.load(trained["dirs"]["forecast"] / "model.joblib")
    single = stored.members[0] if isinstance(stored, forecast_lib.EnsembleForecaster) else stored
    twin = joblib.load(trained["dirs"]["forecast"] / "model.joblib")
    twin = twin.members[-1] if isinstance(twin, forecast_lib.EnsembleForecaster) else twin
    ensemble = forecast_lib.EnsembleForecaster(members=[single, twin])
    joblib.dump(ensemble, tmp_path / "model.joblib")
    shutil.copy(trained["dirs"]["forecast"] / "forecast.csv", tmp_path / "forecast.csv")
    served = predictors.ForecastPredictor(tmp_path)
    panel = forecast_lib.SeriesPanel.from_daily(trained["daily_cost"])
    last = panel.days[-1]
    library = forecast_lib.monthly(ensemble.predict(panel, days=(last + pd.offsets.MonthEnd(2) - last).days),
                                   "forecast", by=("service", "project_id"))
    first_cost = panel.days[int(np.argmax(panel.values[0] > 0))]
    inst = schemas.ForecastInstance(service=panel.keys.service.iloc[0], project_id=panel.keys.project_id.iloc[0],
                                    history=panel.values[0, -95:].tolist(), end_date=last.date(),
                                    first_cost_date=first_cost.date())
    months = served.forecast_history(inst, 2)["months"]
    assert any(m["forecast"] > 0 for m in months)
    for m in months:
        assert m["forecast"] == pytest.approx(library.get((inst.service, inst.project_id, m["month"]), 0.0), rel=1e-9)


# ---- hostile requests (issue 12): 4xx naming the instance and field, never a 500 or a stalled health check ----------

@pytest.mark.unit
@pytest.mark.slow
def test_hostile_values_are_400_naming_the_instance_and_field(client):
    day = "2026-01-31"
    window = {"service": "s", "project_id": "p", "end_date": day}
    cases = [
        ("anomaly", [{**window, "daily_costs": [1.0] * 40 + [1e200]}],
         "instances[0].daily_costs[40]: Input should be less than or equal to 1000000000000"),
        ("anomaly", [{**window, "resources": [{"resource_name": "vm", "daily_costs": [None] * 40}]}],
         "instances[0].resources[0]: every day is null"),
        ("anomaly", [{**window, "end_date": "0001-01-01", "daily_costs": [1.0] * 40}],
         "instances[0].end_date: Input should be greater than or equal to 2000-01-01"),
        ("anomaly", [{**window, "end_date": "9999-12-31", "daily_costs": [1.0] * 40}],
         "instances[0].end_date: Input should be less than or equal to 2100-12-31"),
        ("forecast", [{"service": "s", "project_id": "p", "history": [1.0] * 59 + [1e308], "end_date": day}],
         "instances[0].history[59]: Input should be less than or equal to 1000000000000"),
    ]
    for kind, instances, message in cases:
        r = _predict(client, kind, instances)
        assert r.status_code == 400, (kind, r.text)
        assert r.json()["error"].startswith(message), r.json()["error"]


@pytest.mark.unit
@pytest.mark.slow
def test_json_nested_too_deeply_is_a_400(client):
    body = '{"instances": [' + "[" * 1000 + "]" * 1000 + "]}"
    r = client.post("/labeler/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and "nests JSON too deeply" in r.json()["error"], r.text


@pytest.mark.unit
@pytest.mark.slow
def test_too_many_instances_are_a_413_naming_the_limit(client, trained):
    labeler = [{"resource_name": f"vm-{i}", "project_id": "p", "service": "s"}
               for i in range(schemas.MAX_INSTANCES["labeler"] + 1)]
    big = app.ServerSpec(models={"labeler": str(trained["dirs"]["labeler"])}, max_body_bytes=10_000_000)
    with TestClient(app.create_app(big)) as c:
        _ready(c)
        r = c.post("/predict", json={"instances": labeler})
    assert r.status_code == 413 and "over this server's limit of 2,000" in r.json()["error"], r.text
    history = {"service": "s", "project_id": "p", "history": [1.0] * 60, "end_date": "2026-01-31"}
    r = _predict(client, "forecast", [history] * (schemas.MAX_INSTANCES["forecast_history"] + 1))
    assert r.status_code == 413 and "instances with a history" in r.json()["error"], r.text


@pytest.mark.unit
@pytest.mark.slow
def test_health_answers_while_a_heavy_request_computes_and_errors_are_json(trained, monkeypatch):
    import threading

    spec = app.ServerSpec(models={"labeler": str(trained["dirs"]["labeler"])})
    with TestClient(app.create_app(spec)) as c:
        _ready(c)
        predictor_cls = predictors.PREDICTORS["labeler"]
        monkeypatch.setattr(predictor_cls, "predict", lambda self, items, params: time.sleep(2) or [{}] * len(items))
        slow = threading.Thread(target=lambda: c.post("/predict", json={"instances": [
            {"resource_name": "vm", "project_id": "p", "service": "s"}]}))
        slow.start()
        time.sleep(0.3)
        t0 = time.perf_counter()
        assert c.get("/health").status_code == 200
        assert time.perf_counter() - t0 < 1.0, "health waited for the heavy request"
        slow.join()
        monkeypatch.setattr(predictor_cls, "predict", lambda self, items, params: 1 / 0)
        r = c.post("/predict", json={"instances": [{"resource_name": "vm", "project_id": "p", "service": "s"}]})
    assert r.status_code == 500 and "could not answer this request" in r.json()["error"]


@pytest.mark.unit
@pytest.mark.slow
def test_a_body_that_stops_arriving_is_a_408(trained):
    import socket
    import threading

    import uvicorn

    spec = app.ServerSpec(models={"labeler": str(trained["dirs"]["labeler"])}, body_timeout_s=1.0)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app.create_app(spec), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).status == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000\r\n\r\n{\"instances\": [")
            answer = s.recv(4096).decode()
        assert answer.startswith("HTTP/1.1 408") and "not received within 1 s" in answer, answer
    finally:
        server.should_exit = True
        thread.join(timeout=10)
