-- The latest 91 days of each series' daily net cost, one row per (service, project) series: what the prediction
-- server reads from the online store (Vertex AI Feature Store, feature view series_latest) when a request carries no
-- history. An online store keeps one row per entity, so the history is one array feature.
--   history          daily net cost in USD (as daily_cost.sql), oldest first, 0 on days the series had no cost; its
--                    last value is end_date's; 91 values (what the forecast reads; the detector needs fewer)
--   end_date         the last day of the data, the same for every series ('YYYY-MM-DD': the store serves no DATE)
--   first_cost_date  the series' first day with cost (the forecast's series age reads it)
-- The calendar is the days on which anything had cost (a billing export has cost every day).
-- project_id '' holds the line items without a project, as the stream's series key does.
-- Dialect: DuckDB SQL that sqlglot transpiles to BigQuery (finops_ml.warehouse.feature_sql_for).
WITH daily AS (
  SELECT
    CAST(usage_start_time AS DATE) AS day,
    service.description AS service,
    IFNULL(project.id, '') AS project_id,
    SUM((cost + IFNULL((SELECT SUM(c.amount) FROM UNNEST(credits) AS t(c)), 0)) / currency_conversion_rate) AS net_cost
  FROM events
  WHERE cost_type = 'regular'
  GROUP BY 1, 2, 3
),
calendar AS (
  SELECT day, ROW_NUMBER() OVER (ORDER BY day DESC) AS days_back
  FROM (SELECT DISTINCT day FROM daily) AS d
),
recent AS (
  SELECT day FROM calendar WHERE days_back <= 91
),
series AS (
  SELECT service, project_id, MIN(day) AS first_day
  FROM daily
  GROUP BY 1, 2
)
SELECT
  s.service,
  s.project_id,
  CAST(MAX(r.day) AS VARCHAR) AS end_date,
  CAST(s.first_day AS VARCHAR) AS first_cost_date,
  ARRAY_AGG(IFNULL(d.net_cost, 0) ORDER BY r.day NULLS FIRST) AS history
FROM series AS s
CROSS JOIN recent AS r
LEFT JOIN daily AS d ON d.service = s.service AND d.project_id = s.project_id AND d.day = r.day
GROUP BY s.service, s.project_id, s.first_day
ORDER BY s.service, s.project_id
