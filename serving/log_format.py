"""The two log formats both services write: ``text`` (one plain line) and ``json`` (one JSON
object per line, each ``name=value`` of a line's template as a key of its own)."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from serving.request_log import LOG_VALUE_CAP, logged

FORMATS = ("text", "json")
RESERVED = ("ts", "level", "logger", "message", "exc_info", "stack_info")
"""Keys every JSON line has (or may have): a template's own ``name=`` never replaces them."""
_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[hlL]?([diouxXeEfFgGcrsa%])")
_NAMED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=$")
_CONSTANT = re.compile(r"(?:^|(?<=\s))([A-Za-z_][A-Za-z0-9_]*)=([^\s%]+)(?=\s|$)")
_NUMBER_KINDS = frozenset("diouxXeEfFgG")
_TEMPLATES_KEPT = 512
"""Parsed templates cached; beyond, messages are parsed each time (a template built per call,
an f-string, must not grow the cache without bound)."""

Field = tuple[str, int, str, int | None]
"""(key, index of its argument, conversion, decimals of a ``%.Nf``)."""
Template = tuple[tuple[Field, ...], dict[str, Any]]
"""A template's keyed arguments, and the values it writes itself (``attempts=0``)."""


def parse(template: str, unnamed: tuple[str, ...] = ()) -> Template:
    """The keyed arguments of a %-template (``id=%s`` keys argument i as ``id``; arguments with
    no ``name=`` before them take the names in ``unnamed``, in order, while those last) and its
    constant ``name=value`` pairs (a refusal's line writes ``attempts=0`` itself)."""
    constants = {
        m.group(1): _constant(m.group(2)) for m in _CONSTANT.finditer(template) if m.group(1) not in RESERVED
    }
    taken = set(RESERVED) | constants.keys()
    out: list[Field] = []
    index = 0
    spare = iter(unnamed)
    for match in _SPEC.finditer(template):
        kind = match.group(1)
        if kind == "%":
            continue
        stars = match.group(0).count("*")  # a `*` width or precision takes an argument first
        named = _NAMED.search(template, 0, match.start())
        key = named.group(1) if named else next(spare, None)
        if key is not None and key not in taken:
            taken.add(key)
            precision = match.group(0).partition(".")[2][:-1]
            decimals = int(precision) if kind in "fF" and precision.isdigit() else None
            out.append((key, index + stars, kind, decimals))
        index += 1 + stars
    return tuple(out), constants


def _constant(text: str) -> Any:
    if text == "-":
        return None
    return int(text) if text.isdigit() else text


def _value(arg: Any, kind: str, decimals: int | None) -> Any:
    """An argument as a JSON value: numbers as numbers, ``-`` (the text lines' "none") as null,
    strings cut as the text line cuts them, anything else as its text."""
    if kind in _NUMBER_KINDS and isinstance(arg, int | float) and not isinstance(arg, bool):
        return round(arg, decimals) if decimals is not None else arg
    if isinstance(arg, str):
        if arg == "-":
            return None
        return arg if len(arg) <= LOG_VALUE_CAP else f"{arg[:LOG_VALUE_CAP]}...({len(arg)} chars)"
    if arg is None or isinstance(arg, bool | int | float):
        return arg
    return _value(str(arg), "s", None)


class _PerSecond:
    """A whole second's ``strftime``, made once per second: a busy service writes many lines
    within each."""

    __slots__ = ("_convert", "_format", "_stamp")

    def __init__(self, form: str, convert: Callable[[float], time.struct_time]) -> None:
        self._format = form
        self._convert = convert
        self._stamp: tuple[int, str] = (-1, "")

    def __call__(self, second: int) -> str:
        stamp = self._stamp
        if stamp[0] != second:
            # Replaced whole, never changed in place: handlers on other threads may read it.
            stamp = self._stamp = (second, time.strftime(self._format, self._convert(second)))
        return stamp[1]


class TextFormatter(logging.Formatter):
    """``logging.Formatter`` with its default time stamp made once per second, not per record."""

    def __init__(self, fmt: str | None = None) -> None:
        super().__init__(fmt)
        self._second = _PerSecond(self.default_time_format, self.converter)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return self.default_msec_format % (self._second(int(record.created)), record.msecs)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message`` (the
    text line's message, values escaped as there), each ``name=%s`` argument of the template as a
    key, and ``exc_info`` / ``stack_info`` when present. JSON escapes what a caller sends, so no
    value can forge a line or a key; the message's values are escaped as in text lines.

    ``unnamed``: names for a template's arguments that have no ``name=`` before them (the mock's
    request line starts with its operation)."""

    def __init__(self, unnamed: tuple[str, ...] | list[str] = ()) -> None:
        super().__init__()
        self.unnamed = tuple(unnamed)
        self._templates: dict[str, Template] = {}
        self._second = _PerSecond("%Y-%m-%dT%H:%M:%S", time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        args = record.args
        template = record.msg
        fields: tuple[Field, ...] = ()
        constants: dict[str, Any] = {}
        message = None
        if type(args) is tuple and args and type(template) is str:
            fields, constants = self._parsed(template)
            # A template that does not take the escaped values: as logging itself would say it.
            with contextlib.suppress(TypeError, ValueError):
                message = template % tuple([logged(a) if isinstance(a, str) else a for a in args])
        out: dict[str, Any] = {
            "ts": self._ts(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage() if message is None else message,
        }
        for key, index, kind, decimals in fields:
            if index < len(args):  # type: ignore[arg-type]
                value = args[index]  # type: ignore[index]
                # Most values are plain: ints, and short strings other than "-".
                if type(value) is int or (
                    type(value) is str and value != "-" and len(value) <= LOG_VALUE_CAP
                ):
                    out[key] = value
                else:
                    out[key] = _value(value, kind, decimals)
        if constants:
            out.update(constants)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out)

    def _parsed(self, template: str) -> Template:
        found = self._templates.get(template)
        if found is None:
            found = parse(template, self.unnamed)
            if len(self._templates) < _TEMPLATES_KEPT:
                self._templates[template] = found
        return found

    def _ts(self, created: float) -> str:
        second = int(created)
        return f"{self._second(second)}.{int((created - second) * 1000):03d}Z"
