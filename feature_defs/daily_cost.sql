-- Daily net cost per service and project: the series of the forecast and of the anomaly detector.
--   net_cost           (cost + sum of credits) / currency_conversion_rate, in US dollars; regular usage only
--                      (taxes, adjustments and rounding errors are billing-level: reconciled at ingest, not forecast)
--   new_resource_cost  the part of net_cost from resources in their first 28 days: new spend that a deployment
--                      explains, which the anomaly detector sets apart from the cost of established resources
--   line_items, resources  how many line items and distinct resources make up the cell
WITH items AS (
  SELECT
    CAST(usage_start_time AS DATE) AS day,
    service.description AS service,
    project.id AS project_id,
    IFNULL(resource.name, sku.id) AS resource_name,
    (cost + IFNULL((SELECT SUM(c.amount) FROM UNNEST(credits) AS t(c)), 0)) / currency_conversion_rate AS net_cost
  FROM events
  WHERE cost_type = 'regular'
),
first_seen AS (
  SELECT service, project_id, resource_name, MIN(day) AS first_day
  FROM items
  GROUP BY service, project_id, resource_name
)
SELECT
  i.day,
  i.service,
  i.project_id,
  SUM(i.net_cost) AS net_cost,
  SUM(CASE WHEN i.day < DATE_ADD(f.first_day, INTERVAL 28 DAY) THEN i.net_cost ELSE 0 END) AS new_resource_cost,
  COUNT(*) AS line_items,
  COUNT(DISTINCT i.resource_name) AS resources
FROM items AS i
JOIN first_seen AS f USING (service, project_id, resource_name)
GROUP BY i.day, i.service, i.project_id
ORDER BY i.day, i.service, i.project_id
