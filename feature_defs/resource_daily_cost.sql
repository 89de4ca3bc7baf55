-- Daily net cost per resource: the anomaly detector builds each cell's expected cost bottom-up from these, and
-- tells a new resource (new spend) from a rise of established ones. resource_name '' holds line items without a
-- resource (the standard export has none), so the resources of a cell always add up to its daily_cost.
-- One row per resource, SKU and day: the SKU says which charge drove an anomaly of the resource (its cause).
-- Long format (one row per resource and day) so that DuckDB and BigQuery aggregate it in bounded memory.
-- Dialect: DuckDB SQL that sqlglot transpiles to BigQuery (finops_ml.warehouse.feature_sql_for).
SELECT
  CAST(usage_start_time AS DATE) AS day,
  service.description AS service,
  project.id AS project_id,
  IFNULL(resource.name, '') AS resource_name,
  sku.description AS sku,
  SUM((cost + IFNULL((SELECT SUM(c.amount) FROM UNNEST(credits) AS t(c)), 0)) / currency_conversion_rate) AS net_cost
FROM events
WHERE cost_type = 'regular'
GROUP BY 1, 2, 3, 4, 5
ORDER BY 1, 2, 3, 4, 5
