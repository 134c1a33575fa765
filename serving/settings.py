"""What both services say about their settings: one line per bad value, one row per setting."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BeforeValidator, SecretStr, ValidationError
from pydantic_settings import BaseSettings, NoDecode

from ratelimit import redis_url
from serving.log_format import FORMATS
from serving.urls import redacted


def describe_error(exc: ValidationError, prefix: str) -> str:
    """One line naming each bad setting, for the console at start."""
    parts = []
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ())]
        name = f"{prefix}{loc[0].upper()}" if loc else "settings"
        value = error.get("input")
        if isinstance(value, str) and "://" in value:
            value = redacted(value)  # a URL's password must not reach the console either
        shown = f" (got {value!r})" if loc and not isinstance(value, dict) else ""
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{name}: {message}{shown}" if loc else message)
    return "invalid setting " + "; ".join(parts)


def settings_table(cls: type[BaseSettings], prefix: str) -> list[tuple[str, str, str]]:
    """(environment variable, default, description) of every setting, for the README."""
    rows = []
    # A class's own settings first, then those it inherits (the connection bounds).
    own = cls.__annotations__
    fields = sorted(cls.model_fields.items(), key=lambda item: item[0] not in own)
    for name, field in fields:
        default = field.get_default(call_default_factory=True)
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        elif isinstance(default, list):
            default = ",".join(str(item) for item in default)
        elif isinstance(default, bool):
            default = str(default).lower()
        elif isinstance(default, Enum):
            default = default.value
        rows.append((f"{prefix}{name.upper()}", str(default), field.description or ""))
    return rows


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError("unknown time zone") from exc
    return value


def _divides_minute(value: int) -> int:
    if value and 60 % value:
        raise ValueError("must divide 60 (1, 10, ...)")
    return value


def _level(value: str) -> str:
    if value.lower() not in ("critical", "error", "warning", "info", "debug", "trace"):
        raise ValueError("must be one of debug, info, warning, error, critical")
    return value.lower()


def _log_format(value: str) -> str:
    if value.lower() not in FORMATS:
        raise ValueError("must be one of " + ", ".join(FORMATS))
    return value.lower()


def _redis_url(value: str) -> str:
    value = value.strip()
    return redis_url.check(value) if value else value


# Setting types both services use, each with its check, so a bad value reads the same in both.
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split)]
SecretList = Annotated[list[SecretStr], NoDecode, BeforeValidator(_split)]
TimeZoneName = Annotated[str, AfterValidator(_zone)]
SubWindowSeconds = Annotated[int, AfterValidator(_divides_minute)]
LogLevel = Annotated[str, AfterValidator(_level)]
LogFormat = Annotated[str, AfterValidator(_log_format)]
RedisURL = Annotated[str, AfterValidator(_redis_url)]
"""Empty (the embedded store) or one of the forms of ``ratelimit.redis_url``."""
