"""``POST /admin/limits``: a key's (and model's) limits changed at run time, as a provider lowers a
deployment's quota for a while (Azure lowers TPM for hours), and restored again. The budget's
record is kept: the new limits are evaluated over what it already holds, so what was admitted
under the old ones still counts, and the answers' ``x-ratelimit-limit-*`` say the new figures."""

from __future__ import annotations

import dataclasses

from pydantic import BaseModel, ConfigDict, Field

from openai_wire.azure import derived_rpm
from ratelimit.limits import Limits

FIELDS = ("rpm", "tpm", "rpd", "tpd")


class LimitsChange(BaseModel):
    """The body: whose limits (``api_key``, ``model``; absent = the default key, every model
    without limits of its own), and either new values or ``restore``."""

    model_config = ConfigDict(extra="forbid")

    api_key: str | None = Field(None, description="The API key whose limits change (default: the first).")
    model: str | None = Field(None, description="A model with limits of its own in MOCK_CONFIG.")
    rpm: int | None = Field(None, ge=0, description="Requests per minute (0 = no limit).")
    tpm: int | None = Field(None, ge=0, description="Tokens per minute (0 = no limit).")
    rpd: int | None = Field(None, ge=0, description="Requests per day (0 = no limit).")
    tpd: int | None = Field(None, ge=0, description="Tokens per day (0 = no limit).")
    restore: bool = Field(False, description="Back to the configured limits.")

    def given(self) -> dict[str, int]:
        return {name: value for name in FIELDS if (value := getattr(self, name)) is not None}


def changed(configured: Limits, change: LimitsChange, azure: bool) -> Limits:
    """``configured`` with the values ``change`` gives. On the Azure flavour a new TPM brings its
    derived RPM along (6 per 1,000 TPM, as Azure does) when the configured RPM was derived too."""
    values = change.given()
    if azure and "tpm" in values and "rpm" not in values and configured.rpm == derived_rpm(configured.tpm):
        values["rpm"] = derived_rpm(values["tpm"])
    return dataclasses.replace(configured, **values)


def view(limits: Limits) -> dict[str, int]:
    return {name: getattr(limits, name) for name in FIELDS}
