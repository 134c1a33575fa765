"""What both services say about their settings: one line per bad value, one row per setting."""

from __future__ import annotations

from enum import Enum

from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings


def describe_error(exc: ValidationError, prefix: str) -> str:
    """One line naming each bad setting, for the console at start."""
    parts = []
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ())]
        name = f"{prefix}{loc[0].upper()}" if loc else "settings"
        value = error.get("input")
        shown = f" (got {value!r})" if loc and not isinstance(value, dict) else ""
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{name}: {message}{shown}" if loc else message)
    return "invalid setting " + "; ".join(parts)


def settings_table(cls: type[BaseSettings], prefix: str) -> list[tuple[str, str, str]]:
    """(environment variable, default, description) of every setting, for the README."""
    rows = []
    for name, field in cls.model_fields.items():
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
