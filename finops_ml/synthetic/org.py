"""The synthetic industrial organisation: plants, cost centers, owners, projects, services and SKUs.

Plain data, kept apart from the generator so tests and reports can name the catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass

COMPANY_DOMAIN = "acme-industrial.com"
BILLING_ACCOUNT_ID = "01A2B3-C4D5E6-F7A8B9"


@dataclass(frozen=True)
class Plant:
    code: str
    city: str
    country: str
    region: str
    aliases: tuple[str, ...]  # how engineers spell the plant in resource names (imperfect conventions)
    cost_center_ops: str
    cost_center_eng: str
    people: tuple[str, str, str]  # ops lead, data engineer, ML engineer


PLANTS: tuple[Plant, ...] = (
    Plant("lyon", "Lyon", "FR", "europe-west9", ("lyon", "lyn", "LYO", "ly"), "cc-4110", "cc-4120",
          ("c.dubois", "m.lefevre", "a.moreau")),
    Plant("stuttgart", "Stuttgart", "DE", "europe-west3", ("stuttgart", "stg", "STR", "stu"), "cc-4210", "cc-4220",
          ("j.wagner", "l.becker", "s.hoffmann")),
    Plant("monterrey", "Monterrey", "MX", "us-south1", ("monterrey", "mty", "MTY", "mtr"), "cc-4310", "cc-4320",
          ("r.garza", "d.trevino", "v.salinas")),
    Plant("pune", "Pune", "IN", "asia-south1", ("pune", "pnq", "PUN", "pn"), "cc-4410", "cc-4420",
          ("a.kulkarni", "r.deshpande", "p.joshi")),
    Plant("toledo", "Toledo", "US", "us-east5", ("toledo", "tol", "TLD", "tdo"), "cc-4510", "cc-4520",
          ("b.miller", "k.johnson", "t.nguyen")),
    Plant("gdansk", "Gdansk", "PL", "europe-central2", ("gdansk", "gdn", "GDN", "gda"), "cc-4610", "cc-4620",
          ("p.nowak", "k.wisniewski", "m.wojcik")),
    Plant("sorocaba", "Sorocaba", "BR", "southamerica-east1", ("sorocaba", "sod", "SOR", "soro"), "cc-4710", "cc-4720",
          ("f.souza", "g.oliveira", "l.pereira")),
    Plant("nagoya", "Nagoya", "JP", "asia-northeast1", ("nagoya", "ngo", "NGO", "nag"), "cc-4810", "cc-4820",
          ("h.sato", "y.suzuki", "k.takahashi")),
    Plant("kosice", "Kosice", "SK", "europe-west4", ("kosice", "ksc", "KSC", "kos"), "cc-4910", "cc-4920",
          ("m.horvath", "j.kovac", "e.varga")),
    Plant("queretaro", "Queretaro", "MX", "us-south1", ("queretaro", "qro", "QRO", "que"), "cc-5010", "cc-5020",
          ("e.ramirez", "s.herrera", "c.vargas")),
    Plant("chennai", "Chennai", "IN", "asia-south1", ("chennai", "maa", "CHN", "che"), "cc-5110", "cc-5120",
          ("s.iyer", "v.raman", "n.krishnan")),
    Plant("brno", "Brno", "CZ", "europe-west3", ("brno", "brn", "BRQ", "br"), "cc-5210", "cc-5220",
          ("t.novak", "z.dvorak", "o.svoboda")),
)

# Corporate (shared) projects: cost center, owners by role, plant label.
CORPORATE = {
    "data-platform": ("cc-9010", ("n.fischer", "n.fischer", "e.rossi"), "global"),
    "erp": ("cc-9020", ("g.martin", "g.martin", "g.martin"), "global"),
    "it-shared": ("cc-9030", ("o.berg", "o.berg", "o.berg"), "global"),
}


@dataclass(frozen=True)
class SkuSpec:
    id: str
    description: str
    unit: str
    pricing_unit: str
    unit_price: float
    share: float  # share of the resource's daily cost
    credit: str | None = None  # SUSTAINED_USAGE_DISCOUNT, COMMITTED_USAGE_DISCOUNT, FREE_TIER


@dataclass(frozen=True)
class ServiceSpec:
    key: str
    id: str
    description: str
    kind: str  # what one resource of this service is
    name_patterns: tuple[str, ...]  # {p} plant alias, {a} app, {n} number
    daily_cost: tuple[float, float]  # range of a resource's mature daily cost, USD
    weekend_factor: float  # plants run 24/7 but batch and office work dips at weekends
    month_end_factor: float  # month-end closing reports
    monthly_growth: float  # organic growth per month once migrated
    skus: tuple[SkuSpec, ...]


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("compute", "6F81-5844-456A", "Compute Engine", "instance",
                ("{p}-{a}-vm-{n}", "{a}-{p}-app{n}", "vm-{p}-{a}-{n}", "{P}_{a}_srv{n}"), (20, 160), 0.8, 1.0, 0.006,
                (SkuSpec("CP-COMPUTEENGINE-N2-CORE", "N2 Instance Core running", "seconds", "hour", 0.031611, 0.62,
                         "SUSTAINED_USAGE_DISCOUNT"),
                 SkuSpec("CP-COMPUTEENGINE-N2-RAM", "N2 Instance Ram running", "byte-seconds", "gibibyte hour",
                         0.004237, 0.30, "SUSTAINED_USAGE_DISCOUNT"),
                 SkuSpec("CP-COMPUTEENGINE-PD-SSD", "SSD backed PD Capacity", "byte-seconds", "gibibyte month",
                         0.17, 0.08))),
    ServiceSpec("gke", "CCD8-9BF1-090E", "Kubernetes Engine", "cluster",
                ("{p}-{a}-gke-{n}", "gke-{a}-{p}", "{a}-k8s-{p}{n}"), (30, 220), 0.85, 1.0, 0.01,
                (SkuSpec("GKE-AUTOPILOT-CPU", "Autopilot Pod mCPU Requests", "seconds", "hour", 0.0445, 0.7),
                 SkuSpec("GKE-AUTOPILOT-RAM", "Autopilot Pod Memory Requests", "byte-seconds", "gibibyte hour",
                         0.0049225, 0.3))),
    ServiceSpec("sql", "9662-B51E-5089", "Cloud SQL", "instance",
                ("{a}-pg-{p}-{n}", "{p}-{a}-db{n}", "sql-{a}-{P}"), (10, 70), 1.0, 1.0, 0.004,
                (SkuSpec("CLOUDSQL-PG-VCPU", "Cloud SQL for PostgreSQL: Zonal - vCPU", "seconds", "hour", 0.0413, 0.7),
                 SkuSpec("CLOUDSQL-PG-RAM", "Cloud SQL for PostgreSQL: Zonal - RAM", "byte-seconds", "gibibyte hour",
                         0.007, 0.3))),
    ServiceSpec("storage", "95FF-2EF5-5EA1", "Cloud Storage", "bucket",
                ("{p}_{a}_raw", "{p}-{a}-archive", "acme-{a}-{p}-data", "{P}-{a}-bkp{n}"), (3, 45), 1.0, 1.0, 0.03,
                (SkuSpec("GCS-STANDARD-STORAGE", "Standard Storage", "byte-seconds", "gibibyte month", 0.020, 0.85),
                 SkuSpec("GCS-CLASS-A-OPS", "Class A Operations", "requests", "count", 0.000005, 0.15))),
    ServiceSpec("bigquery", "24E6-581D-38E5", "BigQuery", "dataset",
                ("{a}_{p}_dwh", "{p}_{a}_analytics", "dwh_{a}_{P}{n}"), (5, 90), 0.45, 1.8, 0.02,
                (SkuSpec("BQ-ANALYSIS", "Analysis", "bytes", "tebibyte", 6.25, 0.8, "FREE_TIER"),
                 SkuSpec("BQ-ACTIVE-STORAGE", "Active Logical Storage", "byte-seconds", "gibibyte month", 0.02, 0.2))),
    ServiceSpec("pubsub", "A1E8-BE35-7EBC", "Cloud Pub/Sub", "topic",
                ("{p}-{a}-telemetry", "{a}-events-{p}", "tp-{p}-{a}{n}"), (3, 30), 1.0, 1.0, 0.01,
                (SkuSpec("PUBSUB-MESSAGE-DELIVERY", "Message Delivery Basic", "bytes", "tebibyte", 40.0, 1.0),)),
    ServiceSpec("dataflow", "6F6F-3C8F-8C1B", "Cloud Dataflow", "job",
                ("{a}-ingest-{p}", "{p}-{a}-stream{n}", "df-{a}-{P}"), (12, 70), 0.95, 1.0, 0.008,
                (SkuSpec("DATAFLOW-STREAMING-VCPU", "vCPU Time Streaming", "seconds", "hour", 0.069, 0.75),
                 SkuSpec("DATAFLOW-STREAMING-RAM", "RAM Time Streaming", "byte-seconds", "gibibyte hour", 0.0035,
                         0.25))),
    ServiceSpec("vertex", "C7E2-9256-1C43", "Vertex AI", "endpoint",
                ("{p}-{a}-endpoint", "{a}-model-{p}{n}", "vx-{P}-{a}"), (8, 110), 0.6, 1.0, 0.015,
                (SkuSpec("VERTEX-PREDICTION-N1", "Online Prediction n1-standard-4", "seconds", "hour", 0.2185, 0.8),
                 SkuSpec("VERTEX-TRAINING", "Custom Training n1-standard-8", "seconds", "hour", 0.437, 0.2))),
    ServiceSpec("run", "152E-C115-5142", "Cloud Run", "service",
                ("{a}-api-{p}", "{p}-{a}-svc", "run-{a}-{P}{n}"), (1, 18), 0.7, 1.0, 0.01,
                (SkuSpec("RUN-CPU", "CPU Allocation Time", "seconds", "vCPU-second", 0.000024, 0.75, "FREE_TIER"),
                 SkuSpec("RUN-MEMORY", "Memory Allocation Time", "byte-seconds", "gibibyte-second", 0.0000025,
                         0.25))),
    ServiceSpec("logging", "5490-F7B7-8DF6", "Cloud Logging", "log bucket",
                ("{p}-{a}-logs", "_Default-{a}-{p}", "logs_{P}_{a}"), (2, 22), 0.9, 1.0, 0.015,
                (SkuSpec("LOGGING-VOLUME", "Log Volume", "bytes", "gibibyte", 0.5, 1.0),)),
    ServiceSpec("networking", "E505-1604-58F8", "Networking", "gateway",
                ("{p}-vpn-gw{n}", "{p}-{a}-nat", "ic-{P}-{a}"), (3, 35), 0.9, 1.0, 0.01,
                (SkuSpec("NET-EGRESS-INTERNET", "Network Internet Egress", "bytes", "gibibyte", 0.085, 0.55),
                 SkuSpec("NET-VPN-TUNNEL", "Cloud VPN Tunnel", "seconds", "hour", 0.05, 0.45))),
)
# Billed to the billing account, not used by resources: the support contract (a one-off line each month, see
# finops_ml.synthetic.realism, `one_off_charges`).
SUPPORT = ServiceSpec("support", "2062-016F-44A2", "Support", "support contract", (), (0, 0), 1.0, 1.0, 0.0,
                      (SkuSpec("SUPPORT-ENHANCED", "Enhanced Support", "month", "month", 500.0, 1.0),))
SERVICE_BY_KEY = {s.key: s for s in (*SERVICES, SUPPORT)}
# The upfront fee of a commitment purchase (a one-off line on its first day, in its project's Compute Engine).
COMMITMENT_FEE_SKU = SkuSpec("CP-COMMITMENT-N2-1Y", "Commitment v1: N2 Cpu and Ram for 1 Year (upfront)", "month",
                             "month", 1.0, 1.0)

# New expensive SKUs that show up in an anomaly of kind "new_sku".
NEW_SKUS = (
    SkuSpec("CP-COMPUTEENGINE-A100", "Nvidia Tesla A100 GPU running", "seconds", "hour", 2.93, 1.0),
    SkuSpec("NET-EGRESS-INTERCONTINENTAL", "Network Inter Region Egress from EU to APAC", "bytes", "gibibyte", 0.14,
            1.0),
    SkuSpec("BQ-ANALYSIS-EDITIONS", "Enterprise Plus Edition slot hours", "seconds", "slot hour", 0.1, 1.0),
)

# What each workload runs: (service key, owner role index: 0 ops lead, 1 data engineer, 2 ML engineer).
WORKLOADS = {
    "mes": (("compute", 0), ("sql", 0), ("gke", 0), ("pubsub", 1), ("storage", 1), ("logging", 0), ("networking", 0)),
    "historian": (("bigquery", 1), ("storage", 1), ("dataflow", 1), ("pubsub", 1), ("compute", 0), ("logging", 1)),
    "quality": (("vertex", 2), ("run", 2), ("storage", 2), ("bigquery", 1), ("compute", 2), ("gke", 2)),
    "data-platform": (("bigquery", 1), ("storage", 1), ("dataflow", 1), ("run", 2), ("vertex", 2), ("logging", 1)),
    "erp": (("compute", 0), ("sql", 0), ("storage", 0), ("networking", 0), ("logging", 0)),
    "it-shared": (("logging", 0), ("networking", 0), ("compute", 0), ("run", 0), ("gke", 0)),
}
# Application names used in resource names, per workload.
APPS = {
    "mes": ("mes", "oee", "mes-line", "wms"),
    "historian": ("hist", "scada", "pi", "tsdb"),
    "quality": ("qa", "vision", "inspect", "defect"),
    "data-platform": ("lake", "dp", "etl", "bi"),
    "erp": ("sap", "erp", "s4", "hana"),
    "it-shared": ("it", "ops", "mon", "sec"),
}
