"""A series' history from the Vertex AI Feature Store's online store, for a request that carries none.

The prediction server reads the feature view `series_latest` (finops_ml.platform.featurestore: per series
`service|project_id`, the latest 91 days of daily net cost as one array, `end_date`, `first_cost_date`) when
FINOPS_FEATURE_VIEW names it (projects/P/locations/L/featureOnlineStores/S/featureViews/V); off by default. An
instance's own history always wins: only an instance without one is filled, and then predicted by the same code as
one that carried it (forecast: `history`, `end_date`, `first_cost_date`; anomaly: the cell's `daily_costs`).

One REST call per instance read, `POST https://L-aiplatform.googleapis.com/v1/{feature view}:fetchFeatureValues`,
the request the aiplatform client sends (tests/test_featurestore.py holds the two equal), through google-auth's
AuthorizedSession with the container's credentials (the serving service account on Vertex AI): the serving image
needs no aiplatform SDK. FINOPS_FEATURE_STORE_ENDPOINT overrides the host (a private endpoint, or
http://127.0.0.1:PORT for a loopback fake: then anonymous, a real token never goes over plain http).
"""

from __future__ import annotations

import re
import threading
from datetime import date

from finops_ml.errors import FinopsError
from finops_ml.serving.schemas import RequestError

FEATURE_VIEW = re.compile(r"^projects/[^/\s]+/locations/(?P<location>[a-z0-9-]+)/featureOnlineStores/[^/\s]+"
                          r"/featureViews/[^/\s]+$")


def _value(v: dict):
    """A REST FeatureValue as a Python value (None when it holds none)."""
    for key, value in v.items():
        if key in ("doubleArrayValue", "stringArrayValue", "boolArrayValue"):
            return list(value.get("values", []))
        if key == "int64ArrayValue":
            return [int(x) for x in value.get("values", [])]
        if key == "int64Value":
            return int(value)
        if key in ("doubleValue", "stringValue", "boolValue"):
            return value
    return None


class OnlineStore:
    """Reads one entity's features from a feature view of an online store (Bigtable)."""

    def __init__(self, feature_view: str, api_endpoint: str = "", timeout_s: float = 5.0):
        m = FEATURE_VIEW.match(feature_view)
        if not m:
            raise FinopsError(f"FINOPS_FEATURE_VIEW={feature_view!r} is not a feature view name; give "
                              "projects/PROJECT/locations/REGION/featureOnlineStores/STORE/featureViews/VIEW "
                              "(finops-ml featurestore status prints it).")
        endpoint = api_endpoint or f"{m['location']}-aiplatform.googleapis.com"
        self.anonymous = endpoint.startswith("http://")
        base = endpoint if "://" in endpoint else f"https://{endpoint}"
        self.feature_view = feature_view
        self.url = f"{base.rstrip('/')}/v1/{feature_view}:fetchFeatureValues"
        self.timeout_s = timeout_s
        self._session = None
        self._lock = threading.Lock()

    def session(self):
        """A requests session with the credentials (made on first use: a server starts without reaching Google)."""
        with self._lock:
            if self._session is None:
                if self.anonymous:
                    import requests

                    self._session = requests.Session()
                else:
                    import google.auth
                    from google.auth.transport.requests import AuthorizedSession

                    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
                    self._session = AuthorizedSession(credentials)
            return self._session

    def read(self, entity_id: str) -> dict | None:
        """The entity's features (name -> value), or None when the feature view has no such entity."""
        try:
            response = self.session().post(self.url, json={"dataKey": {"key": entity_id}, "dataFormat": "KEY_VALUE"},
                                           timeout=self.timeout_s)
        except Exception as exc:  # noqa: BLE001 -- unreachable, no credentials: the client is told, the server lives
            raise RequestError(f"the feature store could not be read ({type(exc).__name__}); send the history in "
                               "the request, or retry.", 503) from None
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            try:
                reason = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                reason = response.text[:200]
            raise RequestError(f"the feature store refused the read ({response.status_code}: {reason}); send the "
                               "history in the request.", 503)
        features = response.json().get("keyValues", {}).get("features", [])
        return {f["name"]: _value(f.get("value", {})) for f in features}


def series_history(store: OnlineStore, service: str, project_id: str) -> dict | None:
    """A series' stored history: {history, end_date, first_cost_date}, or None when the store does not hold it."""
    from finops_ml.platform.featurestore import series_id

    row = store.read(series_id(service, project_id))
    if row is None or not row.get("history") or not row.get("end_date"):
        return None
    return {"history": [float(x) for x in row["history"]], "end_date": row["end_date"],
            "first_cost_date": row.get("first_cost_date") or None}


def window_ending(stored: dict, end_date, where: str) -> list[float]:
    """The stored history cut to end on `end_date` (a request's own end date, within the stored window)."""
    try:
        end = date.fromisoformat(str(end_date))
    except ValueError:
        return stored["history"]  # the instance's own validation names the bad date
    back = (date.fromisoformat(stored["end_date"]) - end).days
    if back < 0 or back >= len(stored["history"]):
        raise RequestError(f"{where}.end_date: the feature store holds this series' days up to {stored['end_date']} "
                           f"({len(stored['history'])} days); ask for a day within them or send the daily costs.")
    return stored["history"][:len(stored["history"]) - back]
