-- Daily net cost per service and project: the series of the forecast and of the anomaly detector.
--   net_cost        (cost + sum of credits) / currency_conversion_rate, in US dollars; regular usage only
--                   (taxes, adjustments and rounding errors are billing-level: reconciled at ingest, not forecast)
--   line_items, resources   how many line items and distinct resources make up the cell
--   resource_names / resource_costs   the cell's net cost per resource (parallel arrays ordered by name; '' holds
--                   line items without a resource, as in the standard export), so the anomaly detector can build a
--                   cell's expected cost bottom-up and tell new resources from a rise of established ones
-- Dialect: DuckDB SQL that sqlglot transpiles to BigQuery (finops_ml.warehouse.feature_sql_for). Aggregates' ORDER BY
--   spells out NULLS FIRST (BigQuery's only order for them) so both engines agree.
WITH per_resource AS (
  SELECT
    CAST(usage_start_time AS DATE) AS day,
    service.description AS service,
    project.id AS project_id,
    IFNULL(resource.name, '') AS resource_name,
    SUM((cost + IFNULL((SELECT SUM(c.amount) FROM UNNEST(credits) AS t(c)), 0)) / currency_conversion_rate) AS net_cost,
    COUNT(*) AS line_items
  FROM events
  WHERE cost_type = 'regular'
  GROUP BY 1, 2, 3, 4
)
SELECT
  day,
  service,
  project_id,
  SUM(net_cost) AS net_cost,
  SUM(line_items) AS line_items,
  COUNT(DISTINCT NULLIF(resource_name, '')) AS resources,
  ARRAY_AGG(resource_name ORDER BY resource_name NULLS FIRST) AS resource_names,
  ARRAY_AGG(net_cost ORDER BY resource_name NULLS FIRST) AS resource_costs
FROM per_resource
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
