"""YAML configuration files both services read: loaded, ``${VAR}`` filled from the environment,
and every error said in one line naming the field (as the settings errors are)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

Model = TypeVar("Model", bound=BaseModel)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(Exception):
    """A bad configuration file: the message is one line naming the field."""


class ModelLimits(BaseModel):
    """One model's limits (0 = no limit). ``rpm`` absent is told apart from 0: Azure derives it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rpm: int | None = Field(None, ge=0)
    tpm: int = Field(0, ge=0)
    rpd: int = Field(0, ge=0)
    tpd: int = Field(0, ge=0)


def read(path: str | Path, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The file's top-level mapping with ``${VAR}`` filled; ConfigError if unreadable or not YAML."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file {name}: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"configuration file {name}: {problem}{where}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"configuration file {name}: must be a mapping at the top level")
    try:
        return _fill(raw, os.environ if environ is None else environ, ())
    except ConfigError as exc:
        raise ConfigError(f"configuration file {name}: {exc}") from None


def validate(cls: type[Model], raw: dict[str, Any], path: str | Path) -> Model:
    """``raw`` as ``cls``; ConfigError naming the first bad field."""
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"configuration file {path}: {describe(exc)}") from None


def _fill(value: Any, environ: Mapping[str, str], path: tuple[str | int, ...]) -> Any:
    """``${VAR}`` in every string replaced from the environment; an unset one is an error."""
    if isinstance(value, str):

        def var(match: re.Match[str]) -> str:
            found = environ.get(match[1])
            if found is None:
                raise ConfigError(f"{where(path)}: environment variable {match[1]} is not set")
            return found

        return _VAR.sub(var, value)
    if isinstance(value, dict):
        return {k: _fill(v, environ, (*path, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, environ, (*path, i)) for i, v in enumerate(value)]
    return value


def where(path: tuple[str | int, ...]) -> str:
    """``deployments[0].models.gpt-4o.rpm`` for a path of keys and indexes."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def describe(exc: ValidationError) -> str:
    """The first bad field as ``deployments[0].models.gpt-4o.rpm: message (got value)``: one line.
    Values of fields named like secrets are never shown."""
    errors = exc.errors()
    error = errors[0]
    loc = tuple(p for p in error.get("loc", ()) if p != "function-after")
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    value = error.get("input")
    secret = any(str(p) in ("api_key", "key") for p in loc)
    shown = "" if secret or isinstance(value, dict | list) or value is None else f" (got {value!r})"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where(loc)}: {message}{shown}{more}"
