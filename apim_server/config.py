"""The gateway's settings: environment variables prefixed ``APIM_``, then ``.env``."""

from __future__ import annotations

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import SettingsConfigDict

from apim_server import tracing
from ratelimit.cost import CostRule
from ratelimit.limits import Limits
from serving import settings as settings_doc
from serving.connections import ConnectionSettings
from serving.settings import (
    CommaList,
    LogFormat,
    LogLevel,
    RedisURL,
    SecretList,
    SubWindowSeconds,
    TimeZoneName,
)

ENV_PREFIX = "APIM_"


class Settings(ConnectionSettings):
    """Everything the gateway can be told, besides ``--host``, ``--port`` and ``--workers``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    config: str = Field(
        "",
        description="Path of the configuration file (YAML: deployments, their models and limits, "
        "tenants; see README). Empty = the APIM_* settings below describe one deployment serving "
        "every model with one budget.",
    )
    upstream_url: str = Field(
        "http://127.0.0.1:8000/v1",
        description="Base URL of the upstream OpenAI-compatible API (ends before `/chat/completions`).",
    )
    upstream_api_key: SecretStr = Field(
        SecretStr(""),
        description="Bearer key sent to the upstream (empty = forward the caller's Authorization, unless "
        "APIM_API_KEYS is set: a caller's key for the gateway is never sent upstream).",
    )
    api_keys: SecretList = Field(
        default_factory=list,
        description="Comma-separated keys callers must present (`Authorization: Bearer KEY` or "
        "`api-key`) to use the gateway (empty = open to anyone who can reach it; a warning at start).",
    )
    operator_key: SecretStr = Field(
        SecretStr(""),
        description="Key that `/status` and `/metrics` require as `Authorization: Bearer KEY` (empty = "
        "open; `/healthz` and `/readyz` are always open).",
    )
    cors_origins: CommaList = Field(
        default_factory=list,
        description="Comma-separated origins browsers may call the gateway from (`*` = any; empty = "
        "no CORS). Preflights are answered and the rate-limit, queue and retry headers exposed.",
    )
    forward_mock_faults: bool = Field(
        False,
        description="Forward a caller's `x-mock-fault` header upstream: only for testing the gateway "
        "against llm-mock (MOCK_ADMIN=true), never in production, where one caller's forced 429 would "
        "pause every caller.",
    )
    rpm_limit: int = Field(60, ge=0, description="The upstream's requests per minute (0 = no limit).")
    tpm_limit: int = Field(60_000, ge=0, description="The upstream's tokens per minute (0 = no limit).")
    rpd_limit: int = Field(10_000, ge=0, description="The upstream's requests per day (0 = no limit).")
    tpd_limit: int = Field(2_000_000, ge=0, description="The upstream's tokens per day (0 = no limit).")
    daily_reset_tz: TimeZoneName = Field(
        "UTC", description="Time zone whose midnight resets the daily limits."
    )
    redis_url: RedisURL = Field(
        "",
        description="Redis URL shared by several gateway instances (empty = embedded in-process store): "
        "`redis://` or `rediss://` to one server or to any node of a Redis Cluster (detected), "
        "`redis+sentinel://host:port[,host:port]/service_name[/db]` for Sentinel.",
    )
    redis_prefix: str = Field("apim", min_length=1, description="Key prefix of the gateway's keys in Redis.")
    redis_wait_replicas: int = Field(
        0,
        ge=0,
        description="Grant an admission only once this many Redis replicas have it (`WAIT`, at most "
        "APIM_REDIS_WAIT_MS), so a failover cannot lose granted admissions (0 = off: a failover may "
        "lose the last moments' admissions).",
    )
    redis_wait_ms: int = Field(
        100,
        ge=1,
        description="Longest wait for APIM_REDIS_WAIT_REPLICAS replicas per admission; past it the "
        "admission is granted anyway and a warning logged.",
    )
    queue_timeout_s: float = Field(
        300,
        gt=0,
        description="Longest wait in the queue (a caller may ask for less with `x-apim-timeout-ms`). "
        "A request predicted to be admitted later is answered 429 at once; one still waiting then "
        "gets 504 `queue_timeout` (no budget used).",
    )
    max_queue: int = Field(
        10_000,
        ge=1,
        description="Requests that may wait at once in one pool (one model's queue); beyond, 429 at once.",
    )
    queue_share_normal_pct: int = Field(
        80,
        ge=1,
        le=100,
        description="`normal` requests are refused (429 `queue_full`) once the pool's queue holds this "
        "share of APIM_MAX_QUEUE, so room is left for `high` (which may fill all of it).",
    )
    queue_share_low_pct: int = Field(
        50,
        ge=1,
        le=100,
        description="`low` requests are refused once the pool's queue holds this share of "
        "APIM_MAX_QUEUE: a queue full of `low` never refuses `high` or `normal`.",
    )
    priority_aging_s: float = Field(
        0,
        ge=0,
        description="A waiting request rises one priority class for every this many seconds waited, "
        "so `low` is not starved forever (0 = off: strict priority).",
    )
    max_concurrency: int = Field(
        256, ge=1, description="Requests forwarded upstream at once (also the keep-alive pool size)."
    )
    window_margin_ms: int = Field(
        500,
        ge=0,
        description="Added to every sliding window so that jitter between our admission and the "
        "upstream's clock never makes the upstream see more than its limit.",
    )
    short_window_s: SubWindowSeconds = Field(
        0,
        ge=0,
        description="Pace RPM over sub-windows of this many seconds, for upstreams that enforce them "
        "as Azure OpenAI does (1 or 10; 0 = off).",
    )
    cost_rule: CostRule = Field(
        CostRule.SUM,
        description="Tokens charged at admission: `sum` = prompt + max tokens (Azure), "
        "`max` = the larger of max tokens and a character estimate (OpenAI's guide). Match the upstream.",
    )
    default_max_tokens: int = Field(
        1024,
        ge=1,
        description="Max tokens assumed in the cost of a request that sets none (match the upstream).",
    )
    refund_unused: bool = Field(
        False,
        description="Refund unused estimate after the answer (only for upstreams that bill actual usage).",
    )
    upstream_retries: int = Field(
        2,
        ge=0,
        description="Retries of an upstream connect error or 5xx, with exponential backoff and jitter.",
    )
    upstream_timeout_s: float = Field(
        600, gt=0, description="Longest wait for upstream data (connect, each read, pool)."
    )
    shutdown_timeout_s: float = Field(
        30, gt=0, description="On SIGTERM, how long in-flight requests may take to finish."
    )
    max_body_bytes: int = Field(1_048_576, ge=1, description="Largest request body accepted (413 above).")
    log_requests: bool = Field(
        True, description="Log one line per chat request (id, model, tokens, ms, status)."
    )
    log_level: LogLevel = Field("info", description="Log level: debug, info, warning, error.")
    log_format: LogFormat = Field(
        "text",
        description="Log line format on stderr: `text` (plain lines) or `json` (one JSON object per "
        "line: `ts`, `level`, `logger`, `message`, and each `name=value` of a request line as a key).",
    )
    otel_traces: bool = Field(
        False,
        description="Send OpenTelemetry traces (a span per request; its queue wait, admission and "
        "upstream calls as children; the caller's `traceparent` as parent, the upstream call's sent "
        "upstream) over OTLP/HTTP to where the standard `OTEL_EXPORTER_OTLP_*` variables say "
        "(default localhost:4318). Needs the `otel` extra.",
    )

    @field_validator("upstream_url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("otel_traces")
    @classmethod
    def _otel(cls, value: bool) -> bool:
        if value and not tracing.available():
            raise ValueError(f"needs the otel extra: {tracing.EXTRA}")
        return value

    def limits(self) -> Limits:
        return Limits(
            rpm=self.rpm_limit,
            tpm=self.tpm_limit,
            rpd=self.rpd_limit,
            tpd=self.tpd_limit,
            daily_reset_tz=self.daily_reset_tz,
            short_window_s=self.short_window_s,
            margin_ms=self.window_margin_ms,
        )


def describe_error(exc: ValidationError) -> str:
    """One line naming each bad setting, for the console at start."""
    return settings_doc.describe_error(exc, ENV_PREFIX)


def settings_table() -> list[tuple[str, str, str]]:
    """(environment variable, default, description) of every setting, for the README."""
    return settings_doc.settings_table(Settings, ENV_PREFIX)
