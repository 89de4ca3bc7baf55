-- One row per resource: the text and metadata the labelers read, its cost, and the labels it carries.
-- owner / cost_center / plant are NULL where the resource lacks the label (what auto-labelling fills).
-- Dialect: DuckDB SQL that sqlglot transpiles to BigQuery (finops_ml.warehouse.feature_sql_for). Aggregates' ORDER BY
--   spells out NULLS FIRST (BigQuery's only order for them) so both engines agree.
WITH items AS (
  SELECT
    resource.name AS resource_name,
    project.id AS project_id,
    project.name AS project_name,
    service.description AS service,
    sku.description AS sku,
    location.region AS region,
    CAST(usage_start_time AS DATE) AS day,
    (cost + IFNULL((SELECT SUM(c.amount) FROM UNNEST(credits) AS t(c)), 0)) / currency_conversion_rate AS net_cost,
    (SELECT l.value FROM UNNEST(labels) AS t(l) WHERE l.key = 'owner') AS owner,
    (SELECT l.value FROM UNNEST(labels) AS t(l) WHERE l.key = 'cost_center') AS cost_center,
    (SELECT l.value FROM UNNEST(labels) AS t(l) WHERE l.key = 'plant') AS plant,
    (SELECT l.value FROM UNNEST(labels) AS t(l) WHERE l.key = 'env') AS env,
    (SELECT l.value FROM UNNEST(project.labels) AS t(l) WHERE l.key = 'workload') AS workload
  FROM events
  WHERE cost_type = 'regular' AND resource.name IS NOT NULL
)
SELECT
  resource_name,
  project_id,
  MAX(project_name) AS project_name,
  MAX(service) AS service,
  MAX(region) AS region,
  STRING_AGG(DISTINCT sku, ' | ' ORDER BY sku NULLS FIRST) AS skus,
  MAX(env) AS env,
  MAX(workload) AS workload,
  SUM(net_cost) AS net_cost,
  MIN(day) AS first_day,
  MAX(day) AS last_day,
  MAX(owner) AS owner,
  MAX(cost_center) AS cost_center,
  MAX(plant) AS plant
FROM items
GROUP BY resource_name, project_id
ORDER BY project_id, resource_name
