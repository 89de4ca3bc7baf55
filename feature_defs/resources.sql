-- One row per resource: the text and metadata the labelers read, its cost, and the labels it carries.
-- owner / cost_center / plant are NULL where the resource lacks the label (what auto-labelling fills).
-- Labels are pivoted from one unnest of the label lists (not a subquery per line item: that costs a join each).
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
    (cost + IFNULL((SELECT SUM(c.amount) FROM UNNEST(credits) AS t(c)), 0)) / currency_conversion_rate AS net_cost
  FROM events
  WHERE cost_type = 'regular' AND resource.name IS NOT NULL
),
per_resource AS (
  SELECT
    resource_name,
    project_id,
    MAX(project_name) AS project_name,
    MAX(service) AS service,
    MAX(region) AS region,
    STRING_AGG(DISTINCT sku, ' | ' ORDER BY sku NULLS FIRST) AS skus,
    SUM(net_cost) AS net_cost,
    MIN(day) AS first_day,
    MAX(day) AS last_day
  FROM items
  GROUP BY resource_name, project_id
),
resource_labels AS (
  SELECT
    resource.name AS resource_name,
    project.id AS project_id,
    MAX(CASE WHEN l.key = 'owner' THEN l.value END) AS owner,
    MAX(CASE WHEN l.key = 'cost_center' THEN l.value END) AS cost_center,
    MAX(CASE WHEN l.key = 'plant' THEN l.value END) AS plant,
    MAX(CASE WHEN l.key = 'env' THEN l.value END) AS env
  FROM events, UNNEST(labels) AS t(l)
  WHERE cost_type = 'regular' AND resource.name IS NOT NULL
  GROUP BY 1, 2
),
project_labels AS (
  SELECT project.id AS project_id, MAX(CASE WHEN l.key = 'workload' THEN l.value END) AS workload
  FROM events, UNNEST(project.labels) AS t(l)
  WHERE cost_type = 'regular'
  GROUP BY 1
)
SELECT
  r.resource_name,
  r.project_id,
  r.project_name,
  r.service,
  r.region,
  r.skus,
  l.env,
  p.workload,
  r.net_cost,
  r.first_day,
  r.last_day,
  l.owner,
  l.cost_center,
  l.plant
FROM per_resource AS r
LEFT JOIN resource_labels AS l ON l.resource_name = r.resource_name AND l.project_id = r.project_id
LEFT JOIN project_labels AS p ON p.project_id = r.project_id
ORDER BY r.project_id, r.resource_name
