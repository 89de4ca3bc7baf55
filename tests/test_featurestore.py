"""The Vertex AI Feature Store (finops_ml.platform.featurestore, `finops-ml featurestore`) through the REAL clients
(google-cloud-aiplatform's vertexai.resources.preview.feature_store and google-cloud-bigquery, REST) against the
recording fake in testsupport/fake_gcp.py, and the prediction server reading a series' history from the online store.

Not exercised offline: whether the real services accept what is sent (the BigQuery views' SQL in a real project, a
registry feature view over these groups, ARRAY<FLOAT64> as a served feature), how long a Bigtable sync takes, IAM.
The fake serves what a test puts into the online store; it does not run the views.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from finops_cli.main import app
from finops_ml.config import CONFIG_DIR, load_config
from finops_ml.data.warehouse import duckdb_session, run_feature_view
from finops_ml.errors import FinopsError
from finops_ml.platform import featurestore
from finops_ml.serving import app as serving
from finops_ml.serving import predictors
from finops_ml.serving.online_store import OnlineStore
from testsupport.cli import finops_ml, one_error_sentence
from testsupport.fake_gcp import FakeGCP

pytestmark = pytest.mark.gcp

PROD = CONFIG_DIR / "prod.yaml"
LOC = "/v1/projects/acme-finops-prod/locations/europe-west1"
EXPORT = "acme-finops-prod.billing.gcp_billing_export_resource_v1_0123AB_4567CD_89EF01"
DATASET = "acme-finops-prod.finops_features"
STORE = "projects/acme-finops-prod/locations/europe-west1/featureOnlineStores/finops_ml"
SERIES_VIEW = f"{STORE}/featureViews/series_latest"
DETAILED_FIELDS = [{"name": "cost", "type": "FLOAT"}, {"name": "resource", "type": "RECORD", "fields": [
    {"name": "name", "type": "STRING"}, {"name": "global_name", "type": "STRING"}]}]


@pytest.fixture
def gcp(monkeypatch):
    fake = FakeGCP()
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", fake.endpoint)
    fake.put_bigquery_table(EXPORT, DETAILED_FIELDS, location="EU")
    yield fake
    fake.close()


def _cfg(fake: FakeGCP):
    cfg = load_config(PROD)
    return cfg.with_updates("test", gcp={"api_endpoint": fake.endpoint})


def _cli(*args: str):
    import finops_cli.featurestore as cli

    cli.console.width = 300
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    result.text = " ".join(result.output.split())
    return result


def _write_config(tmp_path: Path, fake: FakeGCP, edit) -> Path:
    raw = yaml.safe_load(PROD.read_text())
    raw["gcp"]["api_endpoint"] = fake.endpoint
    edit(raw)
    path = tmp_path / "prod.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _creates(fake: FakeGCP) -> list[dict]:
    return [r for r in fake.requests if r["method"] in ("POST", "PATCH", "PUT") and not r["path"].endswith(":sync")]


# ---- sync: what is created, once --------------------------------------------------------------------------------

def test_sync_creates_views_groups_store_and_feature_views_once_then_only_syncs(gcp):
    result = _cli("featurestore", "sync", "--config", str(PROD), "--api-endpoint", gcp.endpoint)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "Creating FeatureGroup" not in result.output  # our lines, not the SDK's
    assert "created feature group daily_cost (bq://acme-finops-prod.finops_features.daily_cost)" in result.text
    assert "2 syncs started" in result.text

    # BigQuery: the dataset in the export's location, a view per group over the export, with the entity ids
    (dataset,) = gcp.sent("POST", r"^/bigquery/v2/projects/acme-finops-prod/datasets$")
    assert dataset["body"]["datasetReference"] == {"projectId": "acme-finops-prod", "datasetId": "finops_features"}
    assert dataset["body"]["location"] == "EU"
    views = {r["body"]["tableReference"]["tableId"]: r["body"]["view"]
             for r in gcp.sent("POST", r"/datasets/finops_features/tables$")}
    assert set(views) == {"daily_cost", "resource_daily_cost", "resources", "series_latest"}
    for name, view in views.items():
        assert view["useLegacySql"] is False
        sql = view["query"]
        assert f"FROM `{EXPORT}` AS events" in sql and "CAST(NULL AS STRUCT" not in sql  # a detailed export
        assert "AS feature_timestamp" in sql and "AS TIMESTAMP)" in sql
        for column in featurestore.GROUP[name].entity_id_columns:
            assert column in sql
        assert sql == featurestore.group_sql(featurestore.GROUP[name], "bigquery", EXPORT)

    # feature groups over the views, keyed by the entity ids, with their features
    groups = {r["query"]["featureGroupId"]: r["body"] for r in gcp.sent("POST", r"/featureGroups$")}
    assert groups["daily_cost"]["bigQuery"] == {
        "bigQuerySource": {"inputUri": f"bq://{DATASET}.daily_cost"}, "entityIdColumns": ["series_id"]}
    assert groups["series_latest"]["bigQuery"]["entityIdColumns"] == ["series_id"]
    assert groups["resources"]["bigQuery"]["entityIdColumns"] == ["resource_id"]
    assert groups["resource_daily_cost"]["bigQuery"]["entityIdColumns"] == ["resource_id", "sku"]
    assert all(g["labels"] == {"app": "finops-ml", "environment": "prod", "team": "finops", "cost_center": "cc-4110"}
               for g in groups.values())
    features = [(r["path"].split("/")[-2], r["query"]["featureId"]) for r in gcp.sent("POST", r"/features$")]
    assert features == [(g.view, f) for g in featurestore.GROUPS for f in g.features]

    # one Bigtable online store, two feature views reading the groups' features, on the config's cron
    (store,) = gcp.sent("POST", r"/featureOnlineStores$")
    assert store["query"]["featureOnlineStoreId"] == "finops_ml"
    assert store["body"]["bigtable"] == {"autoScaling": {"minNodeCount": 1, "maxNodeCount": 3,
                                                         "cpuUtilizationTarget": 50}}
    fviews = {r["query"]["featureViewId"]: r["body"] for r in gcp.sent("POST", r"/featureViews$")}
    assert set(fviews) == {"series_latest", "resource_latest"}
    assert fviews["series_latest"]["featureRegistrySource"] == {"featureGroups": [
        {"featureGroupId": "series_latest",
         "featureIds": ["service", "project_id", "end_date", "first_cost_date", "history"]}]}
    assert fviews["resource_latest"]["featureRegistrySource"]["featureGroups"][0]["featureGroupId"] == "resources"
    assert all(v["syncConfig"] == {"cron": "TZ=Europe/Paris 0 6 * * *"} for v in fviews.values())
    syncs = [r["path"] for r in gcp.sent("POST", r":sync$")]
    assert syncs == [f"/v1/{STORE}/featureViews/series_latest:sync", f"/v1/{STORE}/featureViews/resource_latest:sync"]
    assert not gcp.unknown()

    # again: everything is found, nothing created, the syncs started again
    before = len(_creates(gcp))
    again = _cli("featurestore", "sync", "--config", str(PROD), "--api-endpoint", gcp.endpoint)
    assert again.exit_code == 0, again.output
    assert len(_creates(gcp)) == before
    assert "0 created or updated" in again.text and "2 syncs started" in again.text
    assert len(gcp.sent("POST", r":sync$")) == 4

    # status: each view's latest sync
    status = _cli("featurestore", "status", "--config", str(PROD), "--api-endpoint", gcp.endpoint)
    assert status.exit_code == 0, status.output
    rows = featurestore.status(_cfg(gcp))
    assert [(r["view"], r["state"]) for r in rows] == [("series_latest", "ok"), ("resource_latest", "ok")]
    assert rows[0]["resource"] == SERIES_VIEW and SERIES_VIEW in status.text


def test_no_trigger_creates_without_syncing_and_a_changed_view_is_updated(gcp):
    cfg = _cfg(gcp)
    done = featurestore.sync(cfg, trigger=False)
    assert not gcp.sent("POST", r":sync$") and not [d for d in done if d["action"] == "started"]
    gcp.bq_tables[f"{DATASET}.daily_cost"]["view"]["query"] = "SELECT 1"  # an older version of the view
    done = featurestore.sync(cfg, trigger=False)
    assert [(d["name"], d["action"]) for d in done if d["action"] != "exists"] == [
        (f"{DATASET}.daily_cost", "updated")]
    (patch,) = gcp.sent("PATCH", r"/tables/daily_cost$")
    assert patch["body"]["view"]["query"] == featurestore.group_sql(featurestore.GROUP["daily_cost"], "bigquery",
                                                                     EXPORT)


def test_a_standard_export_is_read_with_a_null_resource(gcp):
    standard = "acme-finops-prod.billing.gcp_billing_export_v1_0123AB_4567CD_89EF01"
    gcp.put_bigquery_table(standard, [{"name": "cost", "type": "FLOAT"}])
    cfg = _cfg(gcp).with_updates("test", pipeline={"source": f"bq://{standard}"})
    featurestore.ensure_bigquery_views(cfg)
    assert all("CAST(NULL AS STRUCT<name STRING, global_name STRING>) AS resource" in r["body"]["view"]["query"]
               for r in gcp.sent("POST", r"/tables$"))


def test_a_group_over_another_source_is_one_sentence(gcp):
    cfg = _cfg(gcp)
    featurestore.sync(cfg, trigger=False)
    moved = cfg.with_updates("test", featurestore={"bigquery_dataset": "acme-finops-prod.other"})
    with pytest.raises(FinopsError, match=r"Feature group daily_cost exists over "
                                          r"bq://acme-finops-prod.finops_features.daily_cost .*delete it"):
        featurestore.ensure_feature_groups(moved)


# ---- bad configs and refused requests: one sentence, nothing sent --------------------------------------------

BAD_CONFIGS = [
    (lambda raw: raw["featurestore"].update(max_nodes=50), "featurestore.max_nodes", "10 times it"),
    (lambda raw: raw["featurestore"].update(online_store="FinOps-ML"), "featurestore.online_store",
     "is not a Feature Store id"),
    (lambda raw: raw["featurestore"].update(sync_cron="daily"), "featurestore.sync_cron", "5-field cron"),
    (lambda raw: raw["featurestore"].update(sync_timezone="Paris"), "featurestore.sync_timezone", "IANA"),
    (lambda raw: raw["featurestore"].update(bigquery_dataset="finops_features"), "featurestore.bigquery_dataset",
     "PROJECT.DATASET"),
    (lambda raw: raw["featurestore"].update(onlinestore="x"), "featurestore.onlinestore", "unknown key"),
    (lambda raw: raw["pipeline"].update(source="kafka://broker:9092/billing"), "pipeline.source",
     "not a BigQuery table"),
    (lambda raw: raw["gcp"].pop("project"), "gcp.project", "is missing"),
]


@pytest.mark.parametrize("edit,key,problem", BAD_CONFIGS, ids=[k for _, k, _ in BAD_CONFIGS])
def test_a_bad_config_fails_before_any_request(gcp, tmp_path, edit, key, problem):
    path = _write_config(tmp_path, gcp, edit)
    result = _cli("featurestore", "sync", "--config", str(path))
    assert result.exit_code == 1
    assert f"Config file {path}" in result.text and f"'{key}'" in result.text and problem in result.text
    assert not gcp.requests


def test_the_installed_command_says_a_refusal_in_one_sentence(gcp, tmp_path):
    path = _write_config(tmp_path, gcp, lambda raw: raw["pipeline"].update(
        source="bq://acme-finops-prod.billing.missing_table"))
    sentence = one_error_sentence(finops_ml("featurestore", "sync", "--config", str(path)))
    assert "billing export bq://acme-finops-prod.billing.missing_table (pipeline.source) was not found" in sentence

    gcp.put_bigquery_table("acme-finops-prod.billing.missing_table", DETAILED_FIELDS)
    original = gcp.route

    def refuse(method, path_, *args):
        if "/featureGroups" in path_:
            return 403, {"error": {"code": 403, "message": "Permission 'aiplatform.featureGroups.get' denied",
                                   "status": "PERMISSION_DENIED"}}
        return original(method, path_, *args)

    gcp.route = refuse
    sentence = one_error_sentence(finops_ml("featurestore", "sync", "--config", str(path)))
    assert "Setting up the feature store was refused by the Google API (403: Permission " in sentence
    assert "IAM" in sentence


# ---- the views' rows: what the groups and the online store read ---------------------------------------------------

@pytest.fixture(scope="module")
def events_parquet(tmp_path_factory) -> Path:
    from finops_ml.config import GeneratorConfig
    from finops_ml.data.ingest import ingest
    from finops_ml.synthetic.generator import generate

    root = tmp_path_factory.mktemp("fs_events")
    generate(GeneratorConfig(plants=1, resources_per_project=3, months=6), 7, root / "gen", fmt="jsonl")
    ingest(str(root / "gen" / "events.jsonl"), root / "ingest")
    return root / "ingest" / "events.parquet"


def test_each_group_has_one_row_per_entity_and_timestamp(events_parquet):
    with duckdb_session() as con:
        con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{events_parquet.as_posix()}')")
        for spec in featurestore.GROUPS:
            rows = con.execute(featurestore.group_sql(spec)).df()
            keys = [*spec.entity_id_columns, "feature_timestamp"]
            assert len(rows) > 0 and not rows.duplicated(keys).any(), spec.view
            assert rows[keys].notna().all().all() and set(spec.features) <= set(rows.columns)
            assert str(rows.feature_timestamp.dtype).startswith("datetime64") and rows.feature_timestamp.dt.tz
    with duckdb_session() as con:
        con.execute(f"CREATE VIEW events AS SELECT * FROM read_parquet('{events_parquet.as_posix()}')")
        series = con.execute(featurestore.group_sql(featurestore.GROUP["series_latest"])).df()
    assert list(series.series_id) == [featurestore.series_id(s, p) for s, p in zip(series.service, series.project_id)]


def test_series_latest_is_the_last_91_days_of_daily_cost(events_parquet):
    latest = run_feature_view("series_latest", events_parquet)
    daily = run_feature_view("daily_cost", events_parquet)
    days = pd.date_range(end=daily.day.max(), periods=91, freq="D")
    assert set(latest.end_date) == {days[-1].date().isoformat()}
    assert len(latest) == len(daily.groupby(["service", "project_id"]))
    for row in latest.itertuples():
        cell = daily[(daily.service == row.service) & (daily.project_id == row.project_id)]
        expected = cell.set_index("day").net_cost.reindex(days, fill_value=0.0).to_numpy()
        np.testing.assert_allclose(np.asarray(row.history, float), expected, rtol=1e-12, atol=1e-9)
        assert row.first_cost_date == cell.day.min().date().isoformat()


# ---- serving: a missing history read from the online store ------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    from testsupport.registry import train_small_registry

    root = tmp_path_factory.mktemp("fs_serving")
    out = train_small_registry(root)
    out["series_latest"] = run_feature_view("series_latest", root / "events" / "events.parquet")
    return out


def _ready(client: TestClient) -> None:
    for _ in range(600):
        if client.get("/health").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(client.get("/health").text)


@pytest.fixture
def online(gcp, trained):
    """The online store holding the trained organisation's series_latest rows (as a sync leaves it)."""
    featurestore.sync(_cfg(gcp), trigger=False)
    rows = trained["series_latest"]
    for row in rows.itertuples():
        gcp.put_feature_values(SERIES_VIEW, featurestore.series_id(row.service, row.project_id), {
            "service": row.service, "project_id": row.project_id, "end_date": row.end_date,
            "first_cost_date": row.first_cost_date, "history": [float(x) for x in row.history]})
    return rows


def _server(trained, feature_view: str = "", endpoint: str = "") -> TestClient:
    spec = serving.ServerSpec(models={k: str(trained["dirs"][k]) for k in ("forecast", "anomaly")},
                              feature_view=feature_view, feature_store_endpoint=endpoint)
    return TestClient(serving.create_app(spec))


def _fetches(gcp) -> list[dict]:
    return gcp.sent("POST", r":fetchFeatureValues$")


def test_the_forecast_reads_a_missing_history_from_the_online_store(gcp, trained, online):
    series = [(r.service, r.project_id) for r in online.itertuples() if sum(r.history) > 0][:3]
    with _server(trained) as plain, _server(trained, SERIES_VIEW, gcp.endpoint) as stored:
        _ready(plain)
        _ready(stored)
        for service, project in series:
            row = online[(online.service == service) & (online.project_id == project)].iloc[0]
            sent = {"service": service, "project_id": project, "history": [float(x) for x in row.history],
                    "end_date": row.end_date, "first_cost_date": row.first_cost_date}
            want = plain.post("/forecast/predict", json={"instances": [sent]})
            got = stored.post("/forecast/predict", json={"instances": [{"service": service, "project_id": project}]})
            assert got.status_code == 200, got.text
            assert got.json() == want.json() and got.json()["predictions"][0]["source"] == "history"
        n = len(_fetches(gcp))
        assert n == len(series)
        assert _fetches(gcp)[0]["body"] == {"dataKey": {"key": f"{series[0][0]}|{series[0][1]}"},
                                            "dataFormat": "KEY_VALUE"}
        assert _fetches(gcp)[0]["path"] == f"/v1/{SERIES_VIEW}:fetchFeatureValues"

        # the request's own history wins: no read
        service, project = series[0]
        own = {"service": service, "project_id": project, "history": [1.0] * 60, "end_date": "2026-01-31"}
        r = stored.post("/forecast/predict", json={"instances": [own]})
        assert r.status_code == 200 and r.json() == plain.post("/forecast/predict", json={"instances": [own]}).json()
        assert len(_fetches(gcp)) == n

        # a series the store does not hold keeps the model's stored forecast
        known = next(iter(predictors.ForecastPredictor(trained["dirs"]["forecast"]).stored))
        gcp.feature_values[SERIES_VIEW].pop(featurestore.series_id(*known), None)
        r = stored.post("/forecast/predict", json={"instances": [{"service": known[0], "project_id": known[1]}]})
        assert r.status_code == 200 and r.json()["predictions"][0]["source"] == "stored"

        # without a feature view nothing is read
        plain.post("/forecast/predict", json={"instances": [{"service": known[0], "project_id": known[1]}]})
        assert len(_fetches(gcp)) == n + 1


def test_the_detector_judges_the_stored_window_of_a_cell(gcp, trained, online):
    row = max(online.itertuples(), key=lambda r: sum(r.history))
    history = [float(x) for x in row.history]
    earlier = (pd.Timestamp(row.end_date) - pd.Timedelta(days=10)).date().isoformat()
    with _server(trained) as plain, _server(trained, SERIES_VIEW, gcp.endpoint) as stored:
        _ready(plain)
        _ready(stored)
        cell = {"service": row.service, "project_id": row.project_id}
        want = plain.post("/anomaly/predict", json={"instances": [{**cell, "end_date": row.end_date,
                                                                   "daily_costs": history}]})
        got = stored.post("/anomaly/predict", json={"instances": [cell]})
        assert got.status_code == 200, got.text
        assert got.json() == want.json() and got.json()["predictions"][0]["day"] == row.end_date
        # an earlier end date within the stored days: the window ends there
        want = plain.post("/anomaly/predict", json={"instances": [{**cell, "end_date": earlier,
                                                                   "daily_costs": history[:-10]}]})
        got = stored.post("/anomaly/predict", json={"instances": [{**cell, "end_date": earlier}]})
        assert got.status_code == 200 and got.json() == want.json()
        # outside them, or a cell the store does not hold: one sentence
        r = stored.post("/anomaly/predict", json={"instances": [{**cell, "end_date": "2031-01-01"}]})
        assert r.status_code == 400 and "holds this series' days up to" in r.json()["error"]
        r = stored.post("/anomaly/predict", json={"instances": [{"service": "Nope", "project_id": "nope"}]})
        assert r.status_code == 400
        assert r.json()["error"] == ("instances[0]: the feature store holds no history for service 'Nope' in project "
                                     "'nope'; send its daily_costs or resources.")
        # without a feature view, an instance without a window is refused as before
        r = plain.post("/anomaly/predict", json={"instances": [{**cell, "end_date": row.end_date}]})
        assert r.status_code == 400 and "send exactly one of daily_costs" in r.json()["error"]


def test_an_unreachable_store_is_a_503_sentence_and_the_server_lives(trained):
    from testsupport.net import free_port

    with _server(trained, SERIES_VIEW, f"http://127.0.0.1:{free_port()}") as stored:
        _ready(stored)
        r = stored.post("/anomaly/predict", json={"instances": [{"service": "s", "project_id": "p"}]})
        assert r.status_code == 503 and r.json()["error"].startswith("the feature store could not be read")
        assert stored.get("/health").status_code == 200


def test_the_servers_read_is_the_request_the_aiplatform_client_sends(gcp):
    """The serving image has no aiplatform SDK: its hand-made REST read must be what the real client sends."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import aiplatform_v1

    featurestore.sync(_cfg(gcp), trigger=False)
    gcp.put_feature_values(SERIES_VIEW, "BigQuery|p1", {"end_date": "2026-06-30", "history": [1.0, 2.5]})
    client = aiplatform_v1.FeatureOnlineStoreServiceClient(
        transport="rest", credentials=AnonymousCredentials(), client_options={"api_endpoint": gcp.endpoint})
    response = client.fetch_feature_values(request={"feature_view": SERIES_VIEW, "data_key": {"key": "BigQuery|p1"},
                                                    "data_format": "KEY_VALUE"})
    ours = OnlineStore(SERIES_VIEW, gcp.endpoint).read("BigQuery|p1")
    sdk, mine = _fetches(gcp)
    assert mine["path"] == sdk["path"] == f"/v1/{SERIES_VIEW}:fetchFeatureValues"
    # the same request message (the client writes enums as numbers, `$alt=json;enum-encoding=int`; we as names)
    as_request = aiplatform_v1.FetchFeatureValuesRequest.from_json
    assert as_request(json.dumps(mine["body"])) == as_request(json.dumps(sdk["body"]))
    assert as_request(json.dumps(mine["body"])).data_format == aiplatform_v1.FeatureViewDataFormat.KEY_VALUE
    values = {f.name: f.value for f in response.key_values.features}
    assert ours == {"end_date": values["end_date"].string_value,
                    "history": list(values["history"].double_array_value.values)} == {
        "end_date": "2026-06-30", "history": [1.0, 2.5]}
    assert OnlineStore(SERIES_VIEW, gcp.endpoint).read("nobody") is None


def test_the_container_reads_the_feature_view_setting(trained):
    env = {"AIP_STORAGE_URI": str(trained["dirs"]["forecast"]), "FINOPS_FEATURE_VIEW": SERIES_VIEW,
           "FINOPS_FEATURE_STORE_ENDPOINT": "europe-west1-aiplatform.googleapis.com"}
    spec = serving.spec_from_env(env)
    assert (spec.feature_view, spec.feature_store_endpoint) == (SERIES_VIEW, env["FINOPS_FEATURE_STORE_ENDPOINT"])
    assert serving.spec_from_env({"AIP_STORAGE_URI": env["AIP_STORAGE_URI"]}).feature_view == ""  # off by default
    with pytest.raises(FinopsError, match="FINOPS_FEATURE_VIEW="):
        serving.spec_from_env({"FINOPS_FEATURE_VIEW": "series_latest", "AIP_STORAGE_URI": "/nowhere"})
    with pytest.raises(FinopsError, match="is not a feature view name"):
        OnlineStore("projects/p/locations/europe-west1/featureViews/v")
    assert OnlineStore(SERIES_VIEW).url == \
        f"https://europe-west1-aiplatform.googleapis.com/v1/{SERIES_VIEW}:fetchFeatureValues"


def test_the_servers_read_needs_only_the_serving_extra():
    """The serving image has no aiplatform SDK, BigQuery client, sqlglot or DuckDB: reading the store imports none."""
    import subprocess
    import sys

    code = ("import sys; from finops_ml.serving import app; "
            "from finops_ml.serving.online_store import OnlineStore, series_history; "
            "from finops_ml.serving.schemas import RequestError\n"
            "try: series_history(OnlineStore('" + SERIES_VIEW + "', 'http://127.0.0.1:9'), 's', 'p')\n"
            "except RequestError: pass\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlglot', 'vertexai', 'duckdb', 'kfp') "
            "or m.startswith(('google.cloud.aiplatform', 'google.cloud.bigquery'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
