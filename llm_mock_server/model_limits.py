"""Per-model limits (``MOCK_CONFIG``): OpenAI keeps each model's limits apart, per API key."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from llm_mock_server.config import MockSettings
from ratelimit.limits import Limits
from serving import config_yaml
from serving.config_yaml import ConfigError, ModelLimits

__all__ = ["ConfigError", "load", "settings_limits"]


class MockFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    models: dict[str, ModelLimits] = Field(default_factory=dict)


def settings_limits(settings: MockSettings) -> Limits:
    """The limits of every model the file does not list."""
    return Limits(
        rpm=settings.rpm_limit,
        tpm=settings.tpm_limit,
        rpd=settings.rpd_limit,
        tpd=settings.tpd_limit,
        daily_reset_tz=settings.daily_reset_tz,
        short_window_s=settings.short_window_s,
    )


def load(path: str | Path, settings: MockSettings) -> dict[str, Limits]:
    """Model id -> its limits, from the file's ``models:`` block; ConfigError naming a bad field."""
    config = config_yaml.validate(MockFile, config_yaml.read(path), path)
    return {
        model: Limits(
            rpm=limits.rpm or 0,
            tpm=limits.tpm,
            rpd=limits.rpd,
            tpd=limits.tpd,
            daily_reset_tz=settings.daily_reset_tz,
            short_window_s=settings.short_window_s,
        )
        for model, limits in config.models.items()
    }
