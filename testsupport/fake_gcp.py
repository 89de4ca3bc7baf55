"""A recording fake of the Google Cloud REST APIs the production path calls, on 127.0.0.1.

The real clients (google-cloud-aiplatform with api_transport="rest", google-cloud-scheduler with transport="rest",
google-cloud-storage through STORAGE_EMULATOR_HOST, google-cloud-bigquery through BIGQUERY_EMULATOR_HOST) talk to it.
It keeps just enough state for the clients' follow-up calls to make sense (models and their versions, aliases that
move, evaluations, endpoints with deployed models and traffic split, pipeline jobs, schedules, Cloud Scheduler jobs,
GCS objects, the Feature Store's feature groups, features, online stores, feature views, their syncs and the values
they serve, BigQuery datasets, tables and views) and records every request: the tests assert on what was sent.
Long-running operations come back done. Unknown methods answer 404 and are recorded too, so a test sees them.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

V1 = "type.googleapis.com/google.cloud.aiplatform.v1"
_LOC = r"/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"


def _op(loc: str, n: int, response: dict | None = None, metadata_type: str = "GenericOperationMetadata") -> dict:
    op = {"name": f"{loc}/operations/{n}", "done": True,
          "metadata": {"@type": f"{V1}.{metadata_type}", "genericMetadata": {}}}
    op["response"] = response if response is not None else {"@type": "type.googleapis.com/google.protobuf.Empty"}
    return op


class FakeGCP:
    def __init__(self):
        self.requests: list[dict] = []
        self.models: dict[str, list[dict]] = {}  # model id -> versions (dicts in REST form)
        self.evaluations: dict[str, list[dict]] = {}  # "model@version" -> evaluations
        self.endpoints: dict[str, dict] = {}
        self.pipeline_jobs: dict[str, dict] = {}
        self.schedules: dict[str, dict] = {}
        self.scheduler_jobs: dict[str, dict] = {}
        self.objects: dict[tuple[str, str], bytes] = {}  # the live generation of each object
        self.generations: dict[tuple[str, str], int] = {}  # (bucket, name) -> live generation
        self.versions: dict[tuple[str, str, int], bytes] = {}  # every generation written (as with versioning on)
        self.buckets: set[str] = set()
        # Feature Store: resource name -> resource (REST form); served values: feature view name -> entity id ->
        # features (REST FeatureValue form), set by `put_feature_values` (a sync here serves whatever was put)
        self.feature_store: dict[str, dict] = {}
        self.feature_values: dict[str, dict[str, list[dict]]] = {}
        # BigQuery: "project.dataset" -> dataset, "project.dataset.table" -> table or view (REST form)
        self.bq_datasets: dict[str, dict] = {}
        self.bq_tables: dict[str, dict] = {}
        self._n = 100
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self, method):
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                try:
                    body = json.loads(raw) if raw and "json" in (self.headers.get("Content-Type") or "json") else None
                except ValueError:
                    body = None
                record = {"method": method, "path": unquote(url.path), "query": query, "body": body}
                with outer._lock:
                    outer.requests.append(record)
                    try:
                        status, payload = outer.route(method, unquote(url.path), query, body, raw,
                                                      self.headers.get("Content-Type") or "")
                    except Exception as exc:  # noqa: BLE001 -- a fake's bug shows as a 500 with its message
                        status, payload = 500, {"error": {"code": 500, "message": f"{type(exc).__name__}: {exc}"}}
                record["status"] = status
                media = isinstance(payload, bytes)
                data = payload if media else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream" if media else "application/json")
                self.send_header("Content-Length", str(len(data)))
                m = re.fullmatch(r"/download/storage/v1/b/([^/]+)/o/(.+)", record["path"])
                if media and m:  # GCS tells which generation it served (the client keeps it as blob.generation)
                    with outer._lock:
                        self.send_header("X-Goog-Generation", str(outer._object_version(m[1], m[2], query)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_PATCH(self):
                self._handle("PATCH")

            def do_DELETE(self):
                self._handle("DELETE")

            def do_PUT(self):
                self._handle("PUT")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- what the tests read
    def sent(self, method: str, pattern: str) -> list[dict]:
        """Requests of METHOD whose path matches the regex PATTERN (searched), in order."""
        return [r for r in self.requests if r["method"] == method and re.search(pattern, r["path"])]

    def unknown(self) -> list[dict]:
        return [r for r in self.requests if r.get("status") == 404 and "no such method" in json.dumps(r)]

    # -- GCS objects
    def put_object(self, bucket: str, name: str, data: bytes) -> int:
        """Write a new generation of an object (as an upload does); its generation."""
        self._n += 1
        generation = self._n * 1000  # real generations are large numbers (microseconds); any increasing int will do
        self.objects[(bucket, name)] = data
        self.generations[(bucket, name)] = generation
        self.versions[(bucket, name, generation)] = data
        return generation

    def _object_json(self, bucket: str, name: str, generation: int) -> dict:
        data = self.versions[(bucket, name, generation)]
        return {"kind": "storage#object", "bucket": bucket, "name": name, "size": str(len(data)),
                "generation": str(generation), "metageneration": "1", "contentType": "application/octet-stream",
                "id": f"{bucket}/{name}/{generation}", "timeCreated": "2026-11-24T00:00:00.000Z"}

    def _object_version(self, bucket: str, name: str, query: dict) -> int | None:
        """The generation a request names (`generation`), else the live one; None when there is no such object."""
        generation = int(query["generation"]) if query.get("generation") else self.generations.get((bucket, name))
        return generation if (bucket, name, generation) in self.versions else None

    def _id(self) -> str:
        self._n += 1
        return str(self._n)

    # -- models
    def _version(self, model_ref: str) -> tuple[str, dict | None]:
        model_id, _, ver = model_ref.partition("@")
        versions = self.models.get(model_id, [])
        if not ver:
            ver = "default"
        for v in versions:
            if v["versionId"] == ver or ver in v.get("versionAliases", []):
                return model_id, v
        return model_id, None

    def _set_alias(self, model_id: str, version: dict, alias: str) -> None:
        for v in self.models[model_id]:  # an alias is unique within a model: it moves
            if alias in v["versionAliases"]:
                v["versionAliases"].remove(alias)
        version["versionAliases"].append(alias)

    def route(self, method, path, query, body, raw, content_type):
        m = re.fullmatch(r"/storage/v1/b/(?P<bucket>[^/]+)", path)
        if m and method == "GET":
            return 200, {"kind": "storage#bucket", "name": m["bucket"], "location": "EUROPE-WEST1"}
        m = re.fullmatch(r"/upload/storage/v1/b/(?P<bucket>[^/]+)/o", path)
        if m and method == "POST":
            name = query.get("name") or self._multipart_name(raw)
            generation = self.put_object(m["bucket"], name, self._media(raw, content_type))
            return 200, self._object_json(m["bucket"], name, generation)
        m = re.fullmatch(r"/storage/v1/b/(?P<bucket>[^/]+)/o", path)
        if m and method == "GET":
            prefix = query.get("prefix", "")
            return 200, {"kind": "storage#objects", "items": [
                self._object_json(b, n, self.generations[(b, n)])
                for (b, n) in sorted(self.objects) if b == m["bucket"] and n.startswith(prefix)]}
        m = re.fullmatch(r"/storage/v1/b/(?P<bucket>[^/]+)/o/(?P<name>.+)", path)
        if m and method == "GET":  # an object's metadata (a generation of it with ?generation=)
            generation = self._object_version(m["bucket"], m["name"], query)
            if generation is None:
                return 404, {"error": {"code": 404, "message": f"No such object: {m['bucket']}/{m['name']}"}}
            return 200, self._object_json(m["bucket"], m["name"], generation)
        m = re.fullmatch(r"/download/storage/v1/b/(?P<bucket>[^/]+)/o/(?P<name>.+)", path)
        if m and method == "GET":
            generation = self._object_version(m["bucket"], m["name"], query)
            if generation is None:
                return 404, {"error": {"code": 404, "message": f"No such object: {m['bucket']}/{m['name']}"}}
            return 200, self.versions[(m["bucket"], m["name"], generation)]  # raw bytes (see the handler)
        if path.startswith("/bigquery/v2/"):
            return self._bigquery(method, path.removeprefix("/bigquery/v2"), body or {})
        m = re.fullmatch(_LOC + r"(?P<rest>/.*)?", path)
        if not m:
            return 404, {"error": {"code": 404, "message": f"no such method {method} {path}"}}
        loc = f"projects/{m['project']}/locations/{m['location']}"
        rest = m["rest"] or ""
        for pattern, handler in self._routes():
            mm = re.fullmatch(pattern, f"{method} {rest}")
            if mm:
                return handler(loc, body or {}, query, **mm.groupdict())
        return 404, {"error": {"code": 404, "message": f"no such method {method} {path}"}}

    @staticmethod
    def _media(raw: bytes, content_type: str) -> bytes:
        """The object's bytes of an upload (the media part of a multipart upload)."""
        m = re.search(r'boundary="?([^";]+)"?', content_type)
        if "multipart" not in content_type or not m:
            return raw
        media = raw.split(b"--" + m.group(1).encode())[2]
        return media.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n")

    @staticmethod
    def _multipart_name(raw: bytes) -> str:
        m = re.search(rb'"name":\s*"([^"]+)"', raw)
        return m.group(1).decode() if m else ""

    def _routes(self):
        return [
            (r"POST /models:upload", self._upload),
            (r"GET /models", self._list_models),
            (r"GET /models/(?P<ref>[^/:]+):listVersions", self._list_versions),
            (r"POST /models/(?P<ref>[^/:]+):mergeVersionAliases", self._merge_aliases),
            (r"POST /models/(?P<ref>[^/:]+)/evaluations:import", self._import_evaluation),
            (r"GET /models/(?P<ref>[^/:]+)/evaluations", self._list_evaluations),
            (r"GET /models/(?P<ref>[^/:]+)", self._get_model),
            (r"GET /endpoints", self._list_endpoints),
            (r"POST /endpoints", self._create_endpoint),
            (r"GET /endpoints/(?P<eid>[^/:]+)", self._get_endpoint),
            (r"POST /endpoints/(?P<eid>[^/:]+):deployModel", self._deploy),
            (r"POST /endpoints/(?P<eid>[^/:]+):undeployModel", self._undeploy),
            (r"POST /pipelineJobs", self._create_pipeline_job),
            (r"GET /pipelineJobs/(?P<jid>[^/:]+)", self._get_pipeline_job),
            (r"POST /schedules", self._create_schedule),
            (r"GET /schedules", self._list_schedules),
            (r"GET /schedules/(?P<sid>[^/:]+)", self._get_schedule),
            (r"DELETE /schedules/(?P<sid>[^/:]+)", self._delete_schedule),
            (r"POST /jobs", self._create_scheduler_job),
            (r"GET /jobs", self._list_scheduler_jobs),
            (r"DELETE /jobs/(?P<name>[^/:]+)", self._delete_scheduler_job),
            *self._monitoring_routes(),
            # Feature Store: the registry (groups, features), online stores, feature views, syncs, online reads
            (r"POST /featureGroups", self._fs_create("featureGroups", "featureGroupId", "FeatureGroup",
                                                     "CreateFeatureGroupOperationMetadata")),
            (r"POST /featureGroups/(?P<parent>[^/:]+)/features",
             self._fs_create("features", "featureId", "Feature", "CreateFeatureOperationMetadata")),
            (r"GET /featureGroups/(?P<parent>[^/:]+)/features", self._fs_list("features")),
            (r"POST /featureOnlineStores", self._fs_create("featureOnlineStores", "featureOnlineStoreId",
                                                           "FeatureOnlineStore",
                                                           "CreateFeatureOnlineStoreOperationMetadata")),
            (r"POST /featureOnlineStores/(?P<parent>[^/:]+)/featureViews",
             self._fs_create("featureViews", "featureViewId", "FeatureView", "CreateFeatureViewOperationMetadata")),
            (r"GET /featureOnlineStores/(?P<parent>[^/:]+)/featureViews", self._fs_list("featureViews")),
            (r"POST /featureOnlineStores/(?P<store>[^/:]+)/featureViews/(?P<view>[^/:]+):sync", self._fs_sync),
            (r"GET /featureOnlineStores/(?P<parent>[^/:]+/featureViews/[^/:]+)/featureViewSyncs",
             self._fs_list("featureViewSyncs")),
            (r"POST /featureOnlineStores/(?P<store>[^/:]+)/featureViews/(?P<view>[^/:]+):fetchFeatureValues",
             self._fs_fetch),
            (r"GET /(?P<rest>feature(Groups|OnlineStores)/[^:]+)", self._fs_get),
        ]

    # -- Feature Store
    def _fs_create(self, collection: str, id_param: str, kind: str, metadata_type: str):
        parents = {"features": "featureGroups", "featureViews": "featureOnlineStores"}

        def create(loc, body, query, parent=None):
            parent_name = loc if parent is None else f"{loc}/{parents[collection]}/{parent}"
            if parent is not None and parent_name not in self.feature_store:
                return 404, {"error": {"code": 404, "message": f"{parent_name} not found", "status": "NOT_FOUND"}}
            name = f"{parent_name}/{collection}/{query[id_param]}"
            if name in self.feature_store:
                return 409, {"error": {"code": 409, "message": f"{name} already exists", "status": "ALREADY_EXISTS"}}
            resource = {**body, "name": name, "createTime": "2026-11-24T00:00:00Z", "etag": "e1"}
            if kind == "FeatureOnlineStore":
                resource["state"] = "STABLE"
            self.feature_store[name] = resource
            return 200, _op(loc, int(self._id()), {"@type": f"{V1}.{kind}", **resource}, metadata_type)
        return create

    def _fs_list(self, collection: str):
        def list_(loc, body, query, parent):
            prefix = f"{loc}/{'featureGroups' if collection == 'features' else 'featureOnlineStores'}/{parent}"
            if collection == "featureViewSyncs":
                prefix = f"{loc}/featureOnlineStores/{parent}"
            found = [r for n, r in self.feature_store.items() if n.startswith(f"{prefix}/{collection}/")
                     and "/" not in n.removeprefix(f"{prefix}/{collection}/")]
            return 200, {collection: found}
        return list_

    def _fs_get(self, loc, body, query, rest):
        name = f"{loc}/{rest}"
        if name not in self.feature_store:
            return 404, {"error": {"code": 404, "message": f"{name} not found", "status": "NOT_FOUND"}}
        return 200, self.feature_store[name]

    def _fs_sync(self, loc, body, query, store, view):
        view_name = f"{loc}/featureOnlineStores/{store}/featureViews/{view}"
        if view_name not in self.feature_store:
            return 404, {"error": {"code": 404, "message": f"{view_name} not found", "status": "NOT_FOUND"}}
        name = f"{view_name}/featureViewSyncs/{self._id()}"
        rows = len(self.feature_values.get(view_name, {}))
        self.feature_store[name] = {  # done at once: the values put are what the view serves
            "name": name, "createTime": f"2026-11-24T{self._n // 3600 % 24:02d}:{self._n // 60 % 60:02d}:"
                                        f"{self._n % 60:02d}Z",  # later syncs are newer
            "runTime": {"startTime": "2026-11-24T00:00:00Z", "endTime": "2026-11-24T00:01:00Z"},
            "finalStatus": {"code": 0}, "syncSummary": {"rowSynced": str(rows), "totalSlot": "1"}}
        return 200, {"featureViewSync": name}

    def put_feature_values(self, feature_view: str, entity_id: str, features: dict) -> None:
        """What the online feature view `feature_view` (its resource name) serves for `entity_id`: Python values
        (str, int, float, bool, lists of them, None) in the REST FeatureValue form."""
        def value(v) -> dict:
            if v is None:
                return {}
            if isinstance(v, bool):
                return {"boolValue": v}
            if isinstance(v, int):
                return {"int64Value": str(v)}
            if isinstance(v, float):
                return {"doubleValue": v}
            if isinstance(v, str):
                return {"stringValue": v}
            items = list(v)
            if all(isinstance(x, str) for x in items) and items:
                return {"stringArrayValue": {"values": items}}
            if all(isinstance(x, int) and not isinstance(x, bool) for x in items) and items:
                return {"int64ArrayValue": {"values": [str(x) for x in items]}}
            return {"doubleArrayValue": {"values": [float(x) for x in items]}}

        self.feature_values.setdefault(feature_view, {})[entity_id] = [
            {"name": k, "value": value(v)} for k, v in features.items()]

    def _fs_fetch(self, loc, body, query, store, view):
        view_name = f"{loc}/featureOnlineStores/{store}/featureViews/{view}"
        if view_name not in self.feature_store:
            return 404, {"error": {"code": 404, "message": f"{view_name} not found", "status": "NOT_FOUND"}}
        key = body.get("dataKey", {})
        entity = key.get("key") if "key" in key else "|".join(key.get("compositeKey", {}).get("parts", []))
        features = self.feature_values.get(view_name, {}).get(entity)
        if features is None:
            return 404, {"error": {"code": 404, "message": f"entity {entity} not found in {view_name}",
                                   "status": "NOT_FOUND"}}
        return 200, {"keyValues": {"features": features}, "dataKey": key}

    # -- BigQuery (datasets, tables and views: what `featurestore sync` reads and creates)
    def put_bigquery_table(self, table: str, fields: list[dict], location: str = "EU") -> None:
        """A table `project.dataset.table` with this REST schema (its dataset made too)."""
        project, dataset, name = table.split(".")
        self.bq_datasets.setdefault(f"{project}.{dataset}", {
            "datasetReference": {"projectId": project, "datasetId": dataset}, "location": location})
        self.bq_tables[table] = {"tableReference": {"projectId": project, "datasetId": dataset, "tableId": name},
                                 "type": "TABLE", "location": location, "schema": {"fields": fields}}

    def _bigquery(self, method, path, body):
        def missing(what):
            return 404, {"error": {"code": 404, "message": f"Not found: {what}", "status": "NOT_FOUND"}}

        m = re.fullmatch(r"/projects/(?P<p>[^/]+)/datasets(/(?P<d>[^/]+))?(/tables(/(?P<t>[^/]+))?)?", path)
        if not m:
            return 404, {"error": {"code": 404, "message": f"no such method {method} {path}"}}
        p, d, t, tables = m["p"], m["d"], m["t"], path.rstrip("/").split("/")[-1] == "tables" or m["t"]
        if not tables:
            if method == "GET":
                return (200, self.bq_datasets[f"{p}.{d}"]) if f"{p}.{d}" in self.bq_datasets \
                    else missing(f"Dataset {p}:{d}")
            ref = body["datasetReference"]
            key = f"{ref['projectId']}.{ref['datasetId']}"
            self.bq_datasets[key] = {**body, "id": key.replace(".", ":", 1)}
            return 200, self.bq_datasets[key]
        if method == "POST":  # tables.insert
            ref = body["tableReference"]
            key = f"{ref['projectId']}.{ref['datasetId']}.{ref['tableId']}"
            if f"{ref['projectId']}.{ref['datasetId']}" not in self.bq_datasets:
                return missing(f"Dataset {ref['projectId']}:{ref['datasetId']}")
            self.bq_tables[key] = {**body, "type": "VIEW" if "view" in body else "TABLE"}
            return 200, self.bq_tables[key]
        key = f"{p}.{d}.{t}"
        if key not in self.bq_tables:
            return missing(f"Table {p}:{d}.{t}")
        if method in ("PATCH", "PUT"):  # tables.patch / update
            self.bq_tables[key] = {**self.bq_tables[key], **body}
        return 200, self.bq_tables[key]

    def _model_json(self, loc, model_id, v):
        return {**v, "name": f"{loc}/models/{model_id}"}

    def _upload(self, loc, body, query):
        model = dict(body["model"])
        parent = body.get("parentModel")
        if parent:
            model_id = parent.rsplit("/", 1)[-1]
            versions = self.models[model_id]
        else:
            model_id = body.get("modelId") or self._id()
            versions = self.models.setdefault(model_id, [])
        version_id = str(len(versions) + 1)
        aliases = list(model.pop("versionAliases", []))
        # A custom-container model is deployed on dedicated resources (the server fills this in).
        v = {**model, "versionId": version_id, "versionAliases": [],
             "supportedDeploymentResourcesTypes": ["DEDICATED_RESOURCES"],
             "versionCreateTime": f"2026-11-24T00:00:{len(versions):02d}Z", "createTime": "2026-11-24T00:00:00Z"}
        versions.append(v)
        # The first version, or one uploaded as the default version (the SDK sends the alias), is the default.
        if not parent or "default" in aliases:
            self._set_alias(model_id, v, "default")
        for alias in aliases:
            if alias != "default":
                self._set_alias(model_id, v, alias)
        return 200, _op(loc, int(self._id()), {"@type": f"{V1}.UploadModelResponse",
                                               "model": f"{loc}/models/{model_id}", "modelVersionId": version_id},
                        "UploadModelOperationMetadata")

    def _list_models(self, loc, body, query):
        name = re.search(r'display_name="([^"]*)"', query.get("filter", ""))
        out = []
        for model_id, versions in self.models.items():
            _, v = self._version(model_id)
            if v and (not name or v.get("displayName") == name.group(1)):
                out.append(self._model_json(loc, model_id, v))
        return 200, {"models": out}

    def _list_versions(self, loc, body, query, ref):
        model_id = ref.partition("@")[0]
        return 200, {"models": [self._model_json(loc, model_id, v) for v in self.models.get(model_id, [])]}

    def _get_model(self, loc, body, query, ref):
        model_id, v = self._version(ref)
        if v is None:
            return 404, {"error": {"code": 404, "message": f"Model {ref} not found", "status": "NOT_FOUND"}}
        return 200, self._model_json(loc, model_id, v)

    def _merge_aliases(self, loc, body, query, ref):
        model_id, v = self._version(ref)
        for alias in body.get("versionAliases", []):
            if alias.startswith("-"):
                if alias[1:] in v["versionAliases"]:
                    v["versionAliases"].remove(alias[1:])
            else:
                self._set_alias(model_id, v, alias)
        return 200, self._model_json(loc, model_id, v)

    def _import_evaluation(self, loc, body, query, ref):
        model_id, v = self._version(ref)
        key = f"{model_id}@{v['versionId']}"
        evaluation = {**body["modelEvaluation"], "name": f"{loc}/models/{key}/evaluations/{self._id()}",
                      "createTime": f"2026-11-24T00:00:{len(self.evaluations.get(key, [])):02d}Z"}
        self.evaluations.setdefault(key, []).append(evaluation)
        return 200, evaluation

    def _list_evaluations(self, loc, body, query, ref):
        model_id, v = self._version(ref)
        return 200, {"modelEvaluations": self.evaluations.get(f"{model_id}@{v['versionId']}", []) if v else []}

    # -- endpoints
    def _list_endpoints(self, loc, body, query):
        name = re.search(r'display_name="([^"]*)"', query.get("filter", ""))
        return 200, {"endpoints": [e for e in self.endpoints.values()
                                   if not name or e["displayName"] == name.group(1)]}

    def _create_endpoint(self, loc, body, query):
        eid = self._id()
        endpoint = {**body, "name": f"{loc}/endpoints/{eid}", "deployedModels": [], "trafficSplit": {}}
        self.endpoints[eid] = endpoint
        return 200, _op(loc, int(self._id()), {"@type": f"{V1}.Endpoint", **endpoint},
                        "CreateEndpointOperationMetadata")

    def _get_endpoint(self, loc, body, query, eid):
        return 200, self.endpoints[eid]

    def _deploy(self, loc, body, query, eid):
        endpoint = self.endpoints[eid]
        dm = dict(body["deployedModel"])
        dm_id = self._id()
        model_id, _, version = dm["model"].rsplit("/", 1)[-1].partition("@")
        _, v = self._version(dm["model"].rsplit("/", 1)[-1])
        dm.update(id=dm_id, model=f"{loc}/models/{model_id}", modelVersionId=v["versionId"])
        endpoint["deployedModels"].append(dm)
        split = body.get("trafficSplit") or {"0": 100}
        endpoint["trafficSplit"] = {(dm_id if k == "0" else k): p for k, p in split.items()}
        return 200, _op(loc, int(self._id()), {"@type": f"{V1}.DeployModelResponse", "deployedModel": dm},
                        "DeployModelOperationMetadata")

    def _undeploy(self, loc, body, query, eid):
        endpoint = self.endpoints[eid]
        dm_id = body["deployedModelId"]
        endpoint["deployedModels"] = [d for d in endpoint["deployedModels"] if d["id"] != dm_id]
        endpoint["trafficSplit"] = dict(body.get("trafficSplit") or {})
        return 200, _op(loc, int(self._id()), {"@type": f"{V1}.UndeployModelResponse"},
                        "UndeployModelOperationMetadata")

    # -- pipeline jobs and schedules
    def _create_pipeline_job(self, loc, body, query):
        jid = query.get("pipelineJobId") or self._id()
        job = {**body, "name": f"{loc}/pipelineJobs/{jid}", "state": "PIPELINE_STATE_PENDING",
               "createTime": "2026-11-24T00:00:00Z"}
        self.pipeline_jobs[jid] = job
        return 200, job

    def _get_pipeline_job(self, loc, body, query, jid):
        return 200, self.pipeline_jobs[jid]

    def _create_schedule(self, loc, body, query):
        sid = self._id()
        schedule = {**body, "name": f"{loc}/schedules/{sid}", "state": "ACTIVE", "createTime": "2026-11-24T00:00:00Z"}
        self.schedules[sid] = schedule
        return 200, schedule

    def _list_schedules(self, loc, body, query):
        return 200, {"schedules": list(self.schedules.values())}

    def _get_schedule(self, loc, body, query, sid):
        return 200, self.schedules[sid]

    def _delete_schedule(self, loc, body, query, sid):
        del self.schedules[sid]
        return 200, _op(loc, int(self._id()), None, "DeleteOperationMetadata")

    def _create_scheduler_job(self, loc, body, query):
        job = {**body, "state": "ENABLED", "userUpdateTime": "2026-11-24T00:00:00Z"}
        self.scheduler_jobs[body["name"]] = job
        return 200, job

    def _list_scheduler_jobs(self, loc, body, query):
        return 200, {"jobs": list(self.scheduler_jobs.values())}

    def _delete_scheduler_job(self, loc, body, query, name):
        del self.scheduler_jobs[f"{loc}/jobs/{name}"]
        return 200, {}

    # ---- Vertex AI Model Monitoring (finops_ml.platform.model_monitoring) ---------------------------------------
    # Model deployment monitoring jobs: create, list (by display name), get, update (PATCH, a long-running
    # operation). Kept in this block (state in `monitoring_jobs`, created on first use) so other fakes merge apart.

    def _monitoring_routes(self):
        return [
            (r"POST /modelDeploymentMonitoringJobs", self._create_monitoring_job),
            (r"GET /modelDeploymentMonitoringJobs", self._list_monitoring_jobs),
            (r"GET /modelDeploymentMonitoringJobs/(?P<jid>[^/:]+)", self._get_monitoring_job),
            (r"PATCH /modelDeploymentMonitoringJobs/(?P<jid>[^/:]+)", self._update_monitoring_job),
        ]

    @property
    def monitoring_jobs(self) -> dict[str, dict]:
        return self.__dict__.setdefault("_monitoring_jobs", {})

    def _create_monitoring_job(self, loc, body, query):
        jid = self._id()
        job = {**body, "name": f"{loc}/modelDeploymentMonitoringJobs/{jid}", "state": "JOB_STATE_PENDING",
               "scheduleState": "PENDING", "createTime": "2026-11-24T00:00:00Z"}
        self.monitoring_jobs[jid] = job
        return 200, job

    def _list_monitoring_jobs(self, loc, body, query):
        name = re.search(r'display_name="([^"]*)"', query.get("filter", ""))
        return 200, {"modelDeploymentMonitoringJobs": [
            j for j in self.monitoring_jobs.values() if not name or j.get("displayName") == name.group(1)]}

    def _get_monitoring_job(self, loc, body, query, jid):
        return 200, self.monitoring_jobs[jid]

    def _update_monitoring_job(self, loc, body, query, jid):
        job = self.monitoring_jobs[jid]
        mask = query.get("updateMask", "")
        for field in filter(None, mask.split(",")):
            key = re.sub(r"_(\w)", lambda m: m[1].upper(), field)  # snake_case mask -> camelCase body
            if key in body:
                job[key] = body[key]
        return 200, _op(loc, int(self._id()), {"@type": f"{V1}.ModelDeploymentMonitoringJob", **job},
                        "UpdateModelDeploymentMonitoringJobOperationMetadata")
