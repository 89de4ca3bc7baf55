"""Request schemas of the prediction server: one pydantic model per instance and parameters, limits."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from finops_ml.models import forecast as forecast_lib

DEFAULT_PORT = 8080
# Vertex AI refuses online prediction requests over 1.5 MB; the server's default limit is the same.
DEFAULT_MAX_BODY_BYTES = 1_500_000
MAX_WINDOW_DAYS = 366
# Bounds that keep every computation finite: a daily cost beyond a trillion dollars, or a day outside this century,
# is a client's mistake (1e200 or 9999-12-31 used to overflow into a 500).
MAX_DAILY_COST = 1e12
Cost = Annotated[float, Field(ge=-MAX_DAILY_COST, le=MAX_DAILY_COST)]
Day = Annotated[date, Field(ge=date(2000, 1, 1), le=date(2100, 12, 31))]
# The most instances one request may carry, per kind of work (each answers in ~1-10 ms): a request stays well under
# a few seconds, and bigger batches are split by the client (Vertex AI batch prediction does).
MAX_INSTANCES = {"forecast": 5000, "forecast_history": 200, "anomaly": 500, "labeler": 2000}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# ---- instances ------------------------------------------------------------------------------------------------------

class ForecastInstance(_Strict):
    """A (service, project) series. Without `history`: the model's stored forecast for it. With `history` (daily
    net cost in USD, oldest first, the last value on `end_date`, at least 56 days; the model reads the last 91, and the
    series' age up to a year: send `first_cost_date` when the series had cost before the history sent): the model run
    on that series."""

    service: str = Field(min_length=1)
    project_id: str = Field(min_length=1)
    horizon_months: int | None = Field(None, ge=1, le=12, description="default: the model's horizon")
    history: list[Cost] | None = Field(None, min_length=forecast_lib.MIN_HISTORY, max_length=MAX_WINDOW_DAYS)
    end_date: Day | None = None
    first_cost_date: Day | None = Field(None, description="the series' first day with cost, when before `history`")

    @model_validator(mode="after")
    def _history_has_an_end(self) -> "ForecastInstance":
        if (self.history is None) != (self.end_date is None):
            raise ValueError("history and end_date go together: send both (a series' own history) or neither "
                             "(the model's stored forecast)")
        return self


class ResourceCosts(_Strict):
    resource_name: str
    daily_costs: list[Cost | None] = Field(min_length=1, max_length=MAX_WINDOW_DAYS,
                                           description="null where the resource had no cost line that day")

    @model_validator(mode="after")
    def _has_a_cost(self) -> "ResourceCosts":
        if all(c is None for c in self.daily_costs):
            raise ValueError("every day is null: a resource with no cost line in the window adds nothing; leave it out")
        return self


class AnomalyInstance(_Strict):
    """One daily cell (end_date x service x project) judged from a window of days ending on it: the daily net cost
    of each of its resources (`resources`, as the resource_daily_cost view), or of the whole cell (`daily_costs`:
    the cell is then one resource and borrows its service's seasonal factors). Oldest first, equal lengths."""

    service: str = Field(min_length=1)
    project_id: str = Field(min_length=1)
    end_date: Day
    daily_costs: list[Cost] | None = Field(None, min_length=1, max_length=MAX_WINDOW_DAYS)
    resources: list[ResourceCosts] | None = Field(None, min_length=1, max_length=2000)

    @model_validator(mode="after")
    def _one_kind_of_window(self) -> "AnomalyInstance":
        if (self.daily_costs is None) == (self.resources is None):
            raise ValueError("send exactly one of daily_costs (the cell's daily cost) or resources "
                             "(each resource's daily cost)")
        if self.resources is not None and len({len(r.daily_costs) for r in self.resources}) > 1:
            raise ValueError("every resource's daily_costs must cover the same days (use null where it had no cost)")
        return self

    def window_days(self) -> int:
        return len(self.daily_costs) if self.daily_costs is not None else len(self.resources[0].daily_costs)


class LabelerInstance(_Strict):
    """A resource as the `resources` feature view describes it; labels it already carries may be given."""

    resource_name: str = Field(min_length=1)
    project_id: str = Field(min_length=1)
    service: str = Field(min_length=1)
    project_name: str = ""
    skus: str | list[str] = Field("", description="SKU descriptions, a list or ' | '-joined")
    region: str | None = None
    env: str | None = None
    workload: str | None = None
    owner: str | None = None
    cost_center: str | None = None
    plant: str | None = None


class NoParameters(_Strict):
    pass


class LabelerParameters(_Strict):
    confidence_threshold: float | None = Field(None, ge=0.0, le=1.0,
                                               description="default: the model's (applied only above it)")


class RequestError(Exception):
    """A bad request: its message is one sentence for the client."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status
