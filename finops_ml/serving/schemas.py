"""Request schemas of the prediction server: one pydantic model per instance and parameters, limits."""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, ConfigDict, Field, model_validator

from finops_ml.models import forecast as forecast_lib

# CLI name -> registry name
DEFAULT_PORT = 8080
# Vertex AI refuses online prediction requests over 1.5 MB; the server's default limit is the same.
DEFAULT_MAX_BODY_BYTES = 1_500_000
MAX_WINDOW_DAYS = 366


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
    history: list[float] | None = Field(None, min_length=forecast_lib.MIN_HISTORY, max_length=MAX_WINDOW_DAYS)
    end_date: date | None = None
    first_cost_date: date | None = Field(None, description="the series' first day with cost, when before `history`")

    @model_validator(mode="after")
    def _history_has_an_end(self) -> "ForecastInstance":
        if (self.history is None) != (self.end_date is None):
            raise ValueError("history and end_date go together: send both (a series' own history) or neither "
                             "(the model's stored forecast)")
        return self


class ResourceCosts(_Strict):
    resource_name: str
    daily_costs: list[float | None] = Field(min_length=1, max_length=MAX_WINDOW_DAYS,
                                            description="null where the resource had no cost line that day")


class AnomalyInstance(_Strict):
    """One daily cell (end_date x service x project) judged from a window of days ending on it: the daily net cost
    of each of its resources (`resources`, as the resource_daily_cost view), or of the whole cell (`daily_costs`:
    the cell is then one resource and borrows its service's seasonal factors). Oldest first, equal lengths."""

    service: str = Field(min_length=1)
    project_id: str = Field(min_length=1)
    end_date: date
    daily_costs: list[float] | None = Field(None, min_length=1, max_length=MAX_WINDOW_DAYS)
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
