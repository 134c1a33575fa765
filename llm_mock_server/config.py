"""The mock's settings: environment variables prefixed ``MOCK_``, then ``.env``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from llm_mock_server.azure import DEFAULT_SHORT_WINDOW_S
from openai_wire.azure import derived_rpm
from ratelimit.cost import CostRule
from serving import settings as settings_doc
from serving.connections import ConnectionSettings
from serving.settings import CommaList, LogFormat, LogLevel, RedisURL, SubWindowSeconds, TimeZoneName

ENV_PREFIX = "MOCK_"
DEFAULT_MODELS = ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4", "gpt-3.5-turbo"]
DEFAULT_EMBEDDING_MODELS = ["text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002"]

Rate = Annotated[float, Field(ge=0, le=1)]


class MockSettings(ConnectionSettings):
    """Everything the mock can be told, besides ``--host``, ``--port`` and ``--workers``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    rpm_limit: int = Field(60, ge=0, description="Requests per minute per API key (0 = no limit).")
    tpm_limit: int = Field(60_000, ge=0, description="Tokens per minute per API key (0 = no limit).")
    rpd_limit: int = Field(10_000, ge=0, description="Requests per day per API key (0 = no limit).")
    tpd_limit: int = Field(2_000_000, ge=0, description="Tokens per day per API key (0 = no limit).")
    daily_reset_tz: TimeZoneName = Field(
        "UTC", description="Time zone whose midnight resets the daily limits."
    )
    short_window_s: SubWindowSeconds = Field(
        0,
        ge=0,
        description="Also enforce RPM over sub-windows of this many seconds at the pro-rated rate, "
        "as Azure OpenAI does (1 or 10; 0 = off).",
    )
    cost_rule: CostRule = Field(
        CostRule.SUM,
        description="Tokens charged at admission: `sum` = prompt + max tokens (Azure), "
        "`max` = the larger of max tokens and a character estimate (OpenAI's guide).",
    )
    default_max_tokens: int = Field(
        1024, ge=1, description="Max tokens assumed in the cost of a request that sets none."
    )
    refund_unused: bool = Field(
        False, description="Refund the unused part of the estimate after answering (bill actual usage)."
    )
    config: str = Field(
        "",
        description="Path of a YAML file whose `models:` block gives models their own limits "
        "(`gpt-4o: {rpm: 500, tpm: 30000}`), per API key as at OpenAI; unlisted models use the "
        "MOCK_*_LIMIT settings (empty = every model uses them).",
    )
    redis_url: RedisURL = Field(
        "",
        description="Redis URL shared by several mock processes (empty = embedded in-process store): "
        "`redis://` or `rediss://` to one server or to any node of a Redis Cluster (detected), "
        "`redis+sentinel://host:port[,host:port]/service_name[/db]` for Sentinel.",
    )
    redis_prefix: str = Field("llm-mock", min_length=1, description="Key prefix of the limiter in Redis.")
    ttft_ms: float = Field(0, ge=0, description="Time to first token, in milliseconds.")
    tokens_per_s: float = Field(0, ge=0, description="Output speed in tokens per second (0 = instant).")
    seed: int = Field(0, description="Seed of the generated text and of random faults.")
    models: CommaList = Field(
        default_factory=lambda: list(DEFAULT_MODELS), description="Comma-separated model ids served."
    )
    embedding_models: CommaList = Field(
        default_factory=lambda: list(DEFAULT_EMBEDDING_MODELS),
        description="Comma-separated embedding model ids served on /v1/embeddings.",
    )
    flavor: Literal["openai", "azure"] = Field(
        "openai",
        description="Answer as `openai` or as `azure` OpenAI does: Azure's 429 body and rate-limit headers, "
        "RPM derived from TPM (6 per 1,000) unless MOCK_RPM_LIMIT is set, and RPM enforced over "
        "10 s sub-windows unless MOCK_SHORT_WINDOW_S is set.",
    )
    api_keys: CommaList = Field(
        default_factory=list,
        description="Comma-separated accepted API keys, each with its own limits "
        "(empty = no auth, one shared budget).",
    )
    operator_key: SecretStr = Field(
        SecretStr(""),
        description="Key that `/status` and `/metrics` require as `Authorization: Bearer KEY` (empty = "
        "open; `/healthz` and `/readyz` are always open).",
    )
    admin: bool = Field(
        False,
        description="Enable test control: the `x-mock-fault` header, `POST /admin/reset` and "
        "`POST /admin/limits` (lower or restore a key's limits at run time).",
    )
    fault_500_rate: Rate = Field(0, description="Share of requests answered 500 (0..1).")
    fault_503_rate: Rate = Field(0, description="Share of requests answered 503 (0..1).")
    fault_slow_rate: Rate = Field(0, description="Share of requests delayed by MOCK_FAULT_SLOW_MS (0..1).")
    fault_slow_ms: int = Field(5000, ge=0, description="Extra delay of a slow answer, in milliseconds.")
    fault_drop_rate: Rate = Field(
        0, description="Share of requests whose connection is closed without an answer (0..1)."
    )
    fault_capacity_rate: Rate = Field(
        0,
        description="Share of requests refused with a capacity 429 (the service overloaded, not the key's "
        'limits: Azure\'s "system is currently experiencing high demand", OpenAI\'s "overloaded"), '
        "before admission (0..1).",
    )
    fault_capacity_retry_ms: int = Field(
        1000, ge=0, description="How long a capacity 429 asks the caller to wait (`retry-after-ms`)."
    )
    max_body_bytes: int = Field(1_048_576, ge=1, description="Largest request body accepted (413 above).")
    log_requests: bool = Field(True, description="Log one line per chat request (id, model, tokens, ms).")
    log_level: LogLevel = Field("info", description="Log level: debug, info, warning, error.")
    log_format: LogFormat = Field(
        "text",
        description="Log line format on stderr: `text` (plain lines) or `json` (one JSON object per "
        "line: `ts`, `level`, `logger`, `message`, and each `name=value` of a request line as a key).",
    )

    @field_validator("models")
    @classmethod
    def _some_model(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one model")
        return value

    @model_validator(mode="after")
    def _azure_defaults(self) -> MockSettings:
        # Azure derives a deployment's RPM from its TPM and enforces it over short intervals;
        # a setting given explicitly still wins.
        if self.flavor == "azure":
            if "rpm_limit" not in self.model_fields_set:
                self.rpm_limit = derived_rpm(self.tpm_limit)
            if "short_window_s" not in self.model_fields_set:
                self.short_window_s = DEFAULT_SHORT_WINDOW_S
        return self

    @model_validator(mode="after")
    def _rates_fit(self) -> MockSettings:
        # One draw per request picks at most one fault, so the shares must fit in one.
        total = (
            self.fault_500_rate
            + self.fault_503_rate
            + self.fault_slow_rate
            + self.fault_drop_rate
            + self.fault_capacity_rate
        )
        if total > 1:
            raise ValueError(
                "MOCK_FAULT_500_RATE + MOCK_FAULT_503_RATE + MOCK_FAULT_SLOW_RATE + MOCK_FAULT_DROP_RATE "
                f"+ MOCK_FAULT_CAPACITY_RATE must not exceed 1 (is {total:g})"
            )
        return self


def describe_error(exc: ValidationError) -> str:
    """One line naming each bad setting, for the console at start."""
    return settings_doc.describe_error(exc, ENV_PREFIX)


def settings_table() -> list[tuple[str, str, str]]:
    """(environment variable, default, description) of every setting, for the README."""
    return settings_doc.settings_table(MockSettings, ENV_PREFIX)
