"""The two log formats both services write: ``text`` (one plain line) and ``json`` (one JSON
object per line, each ``name=value`` of a line's template as a key of its own)."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from serving.request_log import LOG_VALUE_CAP, logged

FORMATS = ("text", "json")
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
    constants = {m.group(1): _constant(m.group(2)) for m in _CONSTANT.finditer(template)}
    out: list[Field] = []
    index = 0
    spare = iter(unnamed)
    for match in _SPEC.finditer(template):
        kind = match.group(1)
        if kind == "%":
            continue
        named = _NAMED.search(template, 0, match.start())
        key = named.group(1) if named else next(spare, None)
        if key is not None:
            dot = match.group(0).find(".")
            decimals = int(match.group(0)[dot + 1 : -1]) if dot > 0 and kind in "fF" else None
            out.append((key, index, kind, decimals))
        index += 1
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
        self._stamp: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self._ts(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": self._message(record),
        }
        args = record.args
        if isinstance(args, tuple) and args and isinstance(record.msg, str):
            fields, constants = self._parsed(record.msg)
            for key, index, kind, decimals in fields:
                if index < len(args) and key not in out:
                    out[key] = _value(args[index], kind, decimals)
            for key, value in constants.items():
                out.setdefault(key, value)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str)

    def _message(self, record: logging.LogRecord) -> str:
        args = record.args
        if isinstance(args, tuple) and args:
            try:
                return str(record.msg) % tuple(logged(a) if isinstance(a, str) else a for a in args)
            except (TypeError, ValueError):
                pass  # a template that does not take the escaped values: as logging would
        return record.getMessage()

    def _parsed(self, template: str) -> Template:
        found = self._templates.get(template)
        if found is None:
            found = parse(template, self.unnamed)
            if len(self._templates) < _TEMPLATES_KEPT:
                self._templates[template] = found
        return found

    def _ts(self, created: float) -> str:
        # One strftime per second: a busy service writes many lines within each.
        # Replaced whole, never changed in place: handlers on other threads may read it meanwhile.
        second = int(created)
        stamp = self._stamp
        if stamp[0] != second:
            stamp = self._stamp = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{stamp[1]}.{int((created - second) * 1000):03d}Z"
