"""Vertex AI Feature Store over the feature views of `feature_defs/`: `finops-ml featurestore sync | status`.

What `sync` makes, each only when it is missing (it gets first, then creates what is not there), in this order:

1. BigQuery views in `featurestore.bigquery_dataset` (default GCP_PROJECT.finops_features), one per feature view of
   `feature_defs/`, over the billing export of `pipeline.source`: the view's SQL as BigQuery runs it
   (`warehouse.feature_sql_for`) with the entity id columns and the `feature_timestamp` the Feature Store reads added
   around it (`GROUPS`). A view whose SQL changed is updated. The dataset is created, in the export's location, when
   missing (a view must live where the tables it reads live).
2. One feature group per view (its BigQuery source, its entity id columns) and its features.
3. One Bigtable online store, with two feature views that read features of the groups (a feature registry source)
   and sync on `featurestore.sync_cron`:
   - `series_view` (series_latest): per series `service|project_id`, the latest 91 days of daily net cost as one array
     (`feature_defs/series_latest.sql`): what the forecast and anomaly predictors read when a request carries no
     history (finops_ml.serving.online_store);
   - `resource_view` (resource_latest): per resource `project_id|resource_name`, the labeler's features and the labels
     the resource carries (`feature_defs/resources.sql`).
4. An on-demand sync of each feature view (with `trigger`): the online store reads the views now, not at the next cron.

Why Bigtable and not the Optimized online store: its reads go through the regional Vertex AI endpoint that the serving
container already reaches (and that the tests' loopback fake stands for), it autoscales on nodes, and serves key
lookups of rows this size (91 doubles per series) in milliseconds. Optimized serving reads from a dedicated endpoint
that exists only after its first sync, another host to allow and to configure in every serving container.

Everything goes through the aiplatform SDK (vertexai.resources.preview.feature_store) and the BigQuery client, REST
transport, as the rest of finops_ml.platform.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from finops_ml.config import Config
from finops_ml.errors import FinopsError
from finops_ml.platform.gcp import init_vertex, resource_labels


@dataclass(frozen=True)
class FeatureGroupSpec:
    """A feature view of feature_defs/ as a feature group: the columns the Feature Store needs are added around it."""

    view: str  # feature_defs/<view>.sql; the BigQuery view and the feature group have this name
    entity_id_columns: tuple[str, ...]
    keys: tuple[tuple[str, str], ...]  # (column, DuckDB SQL over the view's columns): the entity ids it lacks
    timestamp: str  # DuckDB SQL of its feature_timestamp (TIMESTAMPTZ: a BigQuery TIMESTAMP)
    features: tuple[str, ...]  # the columns registered as features
    description: str


# The entity ids, as the rest of the project spells them: a series is `service|project_id` (the stream's Kafka key,
# finops_ml.data.kafka_io.CELL_KEY_SQL), a resource `project_id|resource_name` (the resources view's key).
_SERIES_ID = "CONCAT(service, '|', COALESCE(project_id, ''))"
_RESOURCE_ID = "CONCAT(COALESCE(project_id, ''), '|', COALESCE(resource_name, ''))"

GROUPS: tuple[FeatureGroupSpec, ...] = (
    FeatureGroupSpec("daily_cost", ("series_id",), (("series_id", _SERIES_ID),), "CAST(day AS TIMESTAMPTZ)",
                     ("net_cost", "line_items", "resources"),
                     "Daily net cost (USD) per service and project: the forecast's series, the detector's cells."),
    FeatureGroupSpec("resource_daily_cost", ("resource_id", "sku"), (("resource_id", _RESOURCE_ID),),
                     "CAST(day AS TIMESTAMPTZ)", ("net_cost",),
                     "Daily net cost (USD) per resource and SKU: the detector's bottom-up expectation and causes."),
    FeatureGroupSpec("resources", ("resource_id",), (("resource_id", _RESOURCE_ID),), "CAST(last_day AS TIMESTAMPTZ)",
                     ("resource_name", "project_id", "project_name", "service", "region", "skus", "env", "workload",
                      "net_cost", "owner", "cost_center", "plant"),
                     "One row per resource: the labelers' text and metadata, its cost and the labels it carries."),
    FeatureGroupSpec("series_latest", ("series_id",), (("series_id", _SERIES_ID),),
                     "CAST(CAST(end_date AS DATE) AS TIMESTAMPTZ)",
                     ("service", "project_id", "end_date", "first_cost_date", "history"),
                     "The latest 91 days of daily net cost per series, one array: what serving reads online."),
)
GROUP = {g.view: g for g in GROUPS}
# The online store's feature views: config key -> the group whose features it serves.
ONLINE_VIEWS = {"series_view": "series_latest", "resource_view": "resources"}


def series_id(service: str, project_id: str | None) -> str:
    """The entity id of a (service, project) series in the feature store (as `_SERIES_ID`)."""
    return f"{service}|{project_id or ''}"


def resource_id(project_id: str | None, resource_name: str | None) -> str:
    return f"{project_id or ''}|{resource_name or ''}"


def group_sql(spec: FeatureGroupSpec, dialect: str = "duckdb", table: str = "events",
              null_resource: bool = False) -> str:
    """The SQL of a feature group's source: the feature view (`feature_sql_for`) with its entity ids and
    feature_timestamp added, for DuckDB (what the tests run) or BigQuery (the view `sync` creates)."""
    import sqlglot

    from finops_ml.data.warehouse import feature_sql_for

    inner = sqlglot.parse_one(feature_sql_for(spec.view, dialect, table, null_resource), read=dialect)
    inner.set("order", None)  # a view's row order means nothing
    columns = [f"{expr} AS {name}" for name, expr in spec.keys]
    outer = sqlglot.parse_one(f"SELECT {', '.join(columns)}, {spec.timestamp} AS feature_timestamp, * "
                              "FROM feature_view", read="duckdb")
    outer.args["from_"].this.replace(inner.subquery("feature_view"))
    return outer.sql(dialect=dialect, pretty=True)


def dataset_id(cfg: Config) -> str:
    return cfg.featurestore.bigquery_dataset or f"{cfg.gcp.project}.finops_features"


def _bigquery(cfg: Config):
    from finops_ml.data.sources.bigquery import default_client

    return default_client(cfg.gcp.project)


def ensure_bigquery_views(cfg: Config, client=None) -> list[dict]:
    """The dataset and one view per feature group over the billing export, created or updated as needed."""
    from google.api_core.exceptions import NotFound
    from google.cloud import bigquery

    client = client or _bigquery(cfg)
    table = cfg.pipeline.source.removeprefix("bq://")
    try:
        source = client.get_table(table)
    except NotFound:
        raise FinopsError(f"The billing export {cfg.pipeline.source} (pipeline.source) was not found; check the "
                          "table name and that the caller can read it.") from None
    null_resource = "resource" not in {f.name for f in source.schema}  # a standard export: no resource column
    done = []
    ds = dataset_id(cfg)
    try:
        client.get_dataset(ds)
    except NotFound:
        dataset = bigquery.Dataset(ds)
        dataset.location = source.location
        dataset.description = "finops-ml feature views (finops-ml featurestore sync)"
        dataset.labels = resource_labels(cfg)
        client.create_dataset(dataset)
        done.append({"kind": "BigQuery dataset", "name": ds, "action": "created", "detail": source.location or ""})
    for spec in GROUPS:
        view_id = f"{ds}.{spec.view}"
        sql = group_sql(spec, "bigquery", table, null_resource)
        try:
            view = client.get_table(view_id)
        except NotFound:
            view = bigquery.Table(view_id)
            view.view_query = sql
            view.description = spec.description
            view.labels = resource_labels(cfg)
            client.create_table(view)
            done.append({"kind": "BigQuery view", "name": view_id, "action": "created", "detail": ""})
            continue
        if view.view_query != sql:
            view.view_query = sql
            client.update_table(view, ["view_query"])
            done.append({"kind": "BigQuery view", "name": view_id, "action": "updated", "detail": "new SQL"})
        else:
            done.append({"kind": "BigQuery view", "name": view_id, "action": "exists", "detail": ""})
    return done


def ensure_feature_groups(cfg: Config) -> list[dict]:
    """A feature group per view, with its features; an existing group over another source is an error."""
    from google.api_core.exceptions import NotFound
    from vertexai.resources.preview.feature_store import FeatureGroup, FeatureGroupBigQuerySource

    done = []
    for spec in GROUPS:
        uri = f"bq://{dataset_id(cfg)}.{spec.view}"
        try:
            group = FeatureGroup(spec.view)
        except NotFound:
            group = FeatureGroup.create(
                spec.view, source=FeatureGroupBigQuerySource(uri=uri, entity_id_columns=list(spec.entity_id_columns)),
                labels=resource_labels(cfg), description=spec.description)
            done.append({"kind": "feature group", "name": spec.view, "action": "created", "detail": uri})
        else:
            bq = group.gca_resource.big_query
            if bq.big_query_source.input_uri != uri or list(bq.entity_id_columns) != list(spec.entity_id_columns):
                raise FinopsError(
                    f"Feature group {spec.view} exists over {bq.big_query_source.input_uri} (entity ids "
                    f"{', '.join(bq.entity_id_columns)}), not {uri} ({', '.join(spec.entity_id_columns)}); delete it "
                    "(gcloud or the console) or set featurestore.bigquery_dataset to the dataset it reads.")
            done.append({"kind": "feature group", "name": spec.view, "action": "exists", "detail": uri})
        existing = {f.name for f in group.list_features()}
        for feature in spec.features:
            if feature not in existing:
                group.create_feature(feature)
                done.append({"kind": "feature", "name": f"{spec.view}.{feature}", "action": "created", "detail": ""})
    return done


def feature_view_names(cfg: Config) -> dict[str, str]:
    """Online feature view id -> the feature group it serves."""
    fs = cfg.featurestore
    return {getattr(fs, key): group for key, group in ONLINE_VIEWS.items()}


def ensure_online_store(cfg: Config) -> tuple[list[dict], list]:
    """The Bigtable online store and its feature views; (what was done, the FeatureView objects)."""
    from google.api_core.exceptions import NotFound
    from vertexai.resources.preview.feature_store import FeatureOnlineStore, FeatureView, FeatureViewRegistrySource

    fs = cfg.featurestore
    done = []
    try:
        store = FeatureOnlineStore(fs.online_store)
        done.append({"kind": "online store", "name": fs.online_store, "action": "exists", "detail": ""})
    except NotFound:
        store = FeatureOnlineStore.create_bigtable_store(
            fs.online_store, min_node_count=fs.min_nodes, max_node_count=fs.max_nodes,
            cpu_utilization_target=fs.cpu_utilization_target, labels=resource_labels(cfg))
        done.append({"kind": "online store", "name": fs.online_store, "action": "created",
                     "detail": f"Bigtable, {fs.min_nodes}-{fs.max_nodes} nodes"})
    views = []
    cron = f"TZ={fs.sync_timezone} {fs.sync_cron}"
    for name, group in feature_view_names(cfg).items():
        try:
            view = FeatureView(name, feature_online_store_id=fs.online_store)
            done.append({"kind": "feature view", "name": name, "action": "exists", "detail": ""})
        except NotFound:
            features = [f"{group}.{f}" for f in GROUP[group].features]
            view = store.create_feature_view(name, FeatureViewRegistrySource(features=features),
                                             labels=resource_labels(cfg), sync_config=cron)
            done.append({"kind": "feature view", "name": name, "action": "created",
                         "detail": f"{group} ({len(features)} features), sync {cron}"})
        views.append(view)
    return done, views


def _quiet_sdk() -> None:
    """The SDK logs each creation on stdout at INFO; what `sync` returns says the same, once."""
    import vertexai.resources.preview.feature_store  # noqa: F401 (its loggers exist once imported)

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("vertexai.resources.preview.feature_store"):
            logging.getLogger(name).setLevel(logging.WARNING)


def sync(cfg: Config, trigger: bool = True, bigquery_client=None) -> list[dict]:
    """Create what is missing (views, groups, features, store, feature views), then start a sync of each feature
    view (with `trigger`). Returns one dict per resource: kind, name, action (created, updated, exists, started)."""
    done = ensure_bigquery_views(cfg, bigquery_client)
    init_vertex(cfg)
    _quiet_sdk()
    done += ensure_feature_groups(cfg)
    store_done, views = ensure_online_store(cfg)
    done += store_done
    if trigger:
        for view in views:
            started = view.sync()
            done.append({"kind": "sync", "name": started.resource_name, "action": "started", "detail": ""})
    return done


def status(cfg: Config) -> list[dict]:
    """Each online feature view with its latest sync: when it ran, how it ended, how many rows it synced."""
    from google.api_core.exceptions import NotFound
    from vertexai.resources.preview.feature_store import FeatureView

    init_vertex(cfg)
    _quiet_sdk()
    rows = []
    for name, group in feature_view_names(cfg).items():
        try:
            view = FeatureView(name, feature_online_store_id=cfg.featurestore.online_store)
        except NotFound:
            rows.append({"view": name, "group": group, "resource": "", "sync": "", "state": "missing (run sync)",
                         "rows": ""})
            continue
        syncs = sorted(view.list_syncs(), key=lambda s: s.create_time, reverse=True)
        if not syncs:
            rows.append({"view": name, "group": group, "resource": view.resource_name, "sync": "",
                         "state": "never synced", "rows": ""})
            continue
        latest = syncs[0].gca_resource
        if not latest.run_time.end_time:
            state = "running"
        else:
            state = "ok" if latest.final_status.code == 0 else f"failed: {latest.final_status.message}"
        rows.append({"view": name, "group": group, "resource": view.resource_name, "sync": latest.name,
                     "state": state, "rows": str(latest.sync_summary.row_synced)})
    return rows
