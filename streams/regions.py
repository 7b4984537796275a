"""Regions: the one this process runs in and where every region's services answer (read by streams.config)."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_REGION_NAME = r"[a-z][a-z0-9]{0,15}"


class RegionEndpoints(_Frozen):
    """Where one region's services answer. ``store_suffix`` is appended to the namespaces' Cassandra keyspaces and
    Elasticsearch indices in that region (regions that share servers, as on the local stack, keep apart by it)."""

    kafka_bootstrap: str
    cassandra_contact: str | None = None
    elasticsearch_url: str | None = None
    store_suffix: str = Field(default="", pattern=r"^[a-z0-9_]{0,16}$")


class RegionSettings(_Frozen):
    """The region this process runs in and every region's endpoints (``WALSTREAM_REGION``,
    ``WALSTREAM_REGION_ENDPOINTS``: a JSON object of region name -> endpoints)."""

    name: str | None = Field(default=None, pattern=f"^{_REGION_NAME}$")
    endpoints: dict[str, RegionEndpoints] = Field(default_factory=dict)

    @field_validator("endpoints", mode="before")
    @classmethod
    def _json(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise ValueError(f"not a JSON object of region -> endpoints: {exc}") from None
        if isinstance(value, dict):
            bad = [name for name in value if not isinstance(name, str) or re.fullmatch(_REGION_NAME, name) is None]
            if bad:
                raise ValueError(f"region name(s) {bad} must be 1 to 16 lowercase letters or digits, a letter first")
        return value

    @model_validator(mode="after")
    def _known(self) -> RegionSettings:
        if self.name is not None and self.endpoints and self.name not in self.endpoints:
            raise ValueError(
                f"WALSTREAM_REGION {self.name!r} is not among WALSTREAM_REGION_ENDPOINTS ({', '.join(self.endpoints)})"
            )
        return self

    @property
    def store_suffix(self) -> str:
        """The suffix of this process's region's stores ('' outside a region)."""
        if self.name is None or self.name not in self.endpoints:
            return ""
        return self.endpoints[self.name].store_suffix
