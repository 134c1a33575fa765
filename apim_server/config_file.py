"""The configuration file (SPEC §8): deployments, the models each serves with their limits, and
tenants. Read from YAML, ``${VAR}`` filled from the environment, validated whole at start.

Without a file the ``APIM_*`` settings describe one deployment serving every model with one
budget (``from_settings``), so the rest of the gateway sees one shape either way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from apim_server.config import Settings
from ratelimit.cost import CostRule
from ratelimit.limits import Limits
from serving import config_yaml
from serving.config_yaml import ConfigError
from serving.settings import SubWindowSeconds, TimeZoneName

ANY_MODEL = "*"
"""The model name of the one budget a deployment without a model list keeps for every model."""
AZURE_RPM_PER_1000_TPM = 6
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
__all__ = [
    "ANY_MODEL",
    "ConfigError",
    "ConfigFile",
    "DeploymentPlan",
    "Plan",
    "TenantPlan",
    "from_settings",
    "load",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelLimits(config_yaml.ModelLimits):
    """One model of one deployment: its budget's limits (0 or absent = no limit)."""

    deployment: str | None = Field(None, min_length=1)  # Azure's deployment name for this model


class DeploymentConfig(_Strict):
    """One upstream: where it is, how it is called, what it serves."""

    name: str = Field(pattern=_NAME, max_length=64)
    url: str
    api_key: SecretStr = SecretStr("")
    kind: Literal["openai", "azure"] = "openai"
    api_version: str | None = None
    cost_rule: CostRule | None = None
    short_window_s: SubWindowSeconds | None = Field(None, ge=0)
    daily_reset_tz: TimeZoneName | None = None
    max_concurrency: int | None = Field(None, ge=1)
    models: dict[str, ModelLimits] = Field(min_length=1)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")) or not urlsplit(value).hostname:
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("models")
    @classmethod
    def _model_ids(cls, value: dict[str, ModelLimits]) -> dict[str, ModelLimits]:
        for model in value:
            if not model or len(model) > 256 or not model.isprintable():
                raise ValueError(f"bad model id {model!r}")
        return value


class TenantConfig(_Strict):
    """A caller, by key: its weight in a contended budget, its sub-limits over all its traffic,
    the highest priority it may ask for."""

    name: str = Field(pattern=_NAME, max_length=64)
    key: SecretStr
    weight: float = Field(1.0, ge=0.01, le=1000)
    rpm: int = Field(0, ge=0)
    tpm: int = Field(0, ge=0)
    rpd: int = Field(0, ge=0)
    tpd: int = Field(0, ge=0)
    max_priority: Literal["high", "normal", "low"] = "high"

    @field_validator("key")
    @classmethod
    def _key(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value


class ConfigFile(_Strict):
    """The whole file."""

    deployments: list[DeploymentConfig] = Field(min_length=1)
    tenants: list[TenantConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> ConfigFile:
        for what, names in (
            ("deployments", [d.name for d in self.deployments]),
            ("tenants", [t.name for t in self.tenants]),
            ("tenants' keys", [t.key.get_secret_value() for t in self.tenants]),
        ):
            seen: set[str] = set()
            for name in names:
                if name in seen:
                    shown = "a key" if what == "tenants' keys" else repr(name)
                    raise ValueError(f"{what}: {shown} appears twice")
                seen.add(name)
        return self


# -- what the gateway runs on, with or without a file -------------------------------------------


@dataclass(frozen=True)
class DeploymentPlan:
    """One deployment as the gateway runs it: every model's limits resolved."""

    name: str
    store_id: str  # what its budgets' store keys start with
    url: str
    api_key: str
    kind: str
    cost_rule: CostRule
    max_concurrency: int
    models: dict[str, Limits]  # model id (or ANY_MODEL) -> limits
    azure_names: dict[str, str]  # model id -> Azure deployment name, where given
    api_version: str | None = None  # Azure's api-version (None: the gateway's default)


@dataclass(frozen=True)
class TenantPlan:
    """One tenant as the gateway runs it."""

    name: str
    key: str
    weight: float
    max_priority: str
    limits: Limits | None  # its sub-limits over all its traffic (None: none)


@dataclass(frozen=True)
class Plan:
    deployments: tuple[DeploymentPlan, ...]
    tenants: tuple[TenantPlan, ...]
    source: str  # the file's name, or "settings"

    @property
    def tenant_keys(self) -> tuple[str, ...]:
        return tuple(t.key for t in self.tenants)


def upstream_id(url: str) -> str:
    """One budget per upstream without a file: every instance naming the same upstream shares it."""
    parts = urlsplit(url)
    return f"upstream:{parts.scheme}://{parts.hostname}:{parts.port or ''}{parts.path}"


def from_settings(settings: Settings) -> Plan:
    """The ``APIM_*`` settings as one deployment serving every model with one budget."""
    deployment = DeploymentPlan(
        name="default",
        store_id=upstream_id(settings.upstream_url),
        url=settings.upstream_url,
        api_key=settings.upstream_api_key.get_secret_value(),
        kind="openai",
        cost_rule=settings.cost_rule,
        max_concurrency=settings.max_concurrency,
        models={ANY_MODEL: settings.limits()},
        azure_names={},
    )
    return Plan((deployment,), (), "settings")


def load(path: str | Path, settings: Settings, environ: Mapping[str, str] | None = None) -> Plan:
    """Read, fill and validate the file; ConfigError (one line naming the field) if it is bad."""
    config = config_yaml.validate(ConfigFile, config_yaml.read(path, environ), path)
    return plan(config, settings, str(path))


def plan(config: ConfigFile, settings: Settings, source: str) -> Plan:
    deployments = []
    for d in config.deployments:
        models = {}
        for model, limits in d.models.items():
            rpm = limits.rpm
            if rpm is None:
                # Azure assigns 6 RPM per 1,000 TPM of quota; OpenAI states both.
                rpm = limits.tpm * AZURE_RPM_PER_1000_TPM // 1000 if d.kind == "azure" else 0
            models[model] = Limits(
                rpm=rpm,
                tpm=limits.tpm,
                rpd=limits.rpd,
                tpd=limits.tpd,
                daily_reset_tz=d.daily_reset_tz or settings.daily_reset_tz,
                short_window_s=settings.short_window_s if d.short_window_s is None else d.short_window_s,
                margin_ms=settings.window_margin_ms,
            )
        deployments.append(
            DeploymentPlan(
                name=d.name,
                store_id=f"deployment:{d.name}",
                url=d.url,
                api_key=d.api_key.get_secret_value(),
                kind=d.kind,
                cost_rule=d.cost_rule or settings.cost_rule,
                max_concurrency=d.max_concurrency or settings.max_concurrency,
                models=models,
                azure_names={m: lim.deployment for m, lim in d.models.items() if lim.deployment},
                api_version=d.api_version,
            )
        )
    tenants = tuple(
        TenantPlan(
            t.name,
            t.key.get_secret_value(),
            t.weight,
            t.max_priority,
            Limits(
                rpm=t.rpm,
                tpm=t.tpm,
                rpd=t.rpd,
                tpd=t.tpd,
                daily_reset_tz=settings.daily_reset_tz,
                margin_ms=settings.window_margin_ms,
            )
            if t.rpm or t.tpm or t.rpd or t.tpd
            else None,
        )
        for t in config.tenants
    )
    return Plan(tuple(deployments), tenants, source)
