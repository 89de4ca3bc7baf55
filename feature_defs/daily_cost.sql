-- Daily net cost per service and project: the series of the forecast and the cells the anomaly detector judges.
--   net_cost        (cost + sum of credits) / currency_conversion_rate, in US dollars; regular usage only
--                   (taxes, adjustments and rounding errors are billing-level: reconciled at ingest, not forecast)
--   line_items, resources   how many line items and distinct resources make up the cell
-- Dialect: DuckDB SQL that sqlglot transpiles to BigQuery (finops_ml.warehouse.feature_sql_for).
SELECT
  CAST(usage_start_time AS DATE) AS day,
  service.description AS service,
  project.id AS project_id,
  SUM((cost + IFNULL((SELECT SUM(c.amount) FROM UNNEST(credits) AS t(c)), 0)) / currency_conversion_rate) AS net_cost,
  COUNT(*) AS line_items,
  COUNT(DISTINCT resource.name) AS resources
FROM events
WHERE cost_type = 'regular'
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
