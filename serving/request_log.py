"""The one-line-per-request log, written in batches from a thread; caller-supplied values in
every log line escaped, so none can forge a line or a field."""

from __future__ import annotations

import json
import logging
import re
import threading
from typing import TextIO

LOG_VALUE_CAP = 200
"""Characters of one value a log line shows (a 1 MB model name must not make a 1 MB line)."""
_PLAIN = re.compile(r"[A-Za-z0-9_.,:/@+*%-]*")


def logged(value: str, cap: int = LOG_VALUE_CAP) -> str:
    """``value`` as one log field: as is when plain, else JSON-quoted (newlines, control
    characters, quotes and non-ASCII escaped; spaces and ``=`` enclosed), cut to ``cap``."""
    if len(value) <= cap and _PLAIN.fullmatch(value):
        return value
    if len(value) > cap:
        value = value[:cap] + f"...({len(value)} chars)"
    return json.dumps(value)


class EscapeArgs(logging.Filter):
    """Passes every string argument of a record through ``logged``: values come from callers
    (model names, request ids, keys) and from upstreams. Put on each handler; a record is
    escaped once, however many handlers it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args and not getattr(record, "_escaped", False):
            if isinstance(record.args, tuple):
                record.args = tuple(logged(a) if isinstance(a, str) else a for a in record.args)
            record._escaped = True
        return True


class BatchedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes its records every ``interval`` seconds (or every ``max_bytes``) from a thread.

    A write and flush per request line cost a third of a service's own work per request
    (system calls are dear on virtual machines); lines appear at most ``interval`` late.
    """

    def __init__(self, stream: TextIO | None = None, interval: float = 0.25, max_bytes: int = 65_536) -> None:
        super().__init__(stream)
        self.interval = interval
        self.max_bytes = max_bytes
        self._pending: list[str] = []
        self._size = 0
        self._closed = threading.Event()
        threading.Thread(target=self._flush_periodically, name="request-log", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        # handle() holds self.lock around emit().
        try:
            line = self.format(record) + self.terminator
        except Exception:  # noqa: BLE001 - logging must never break a request
            self.handleError(record)
            return
        self._pending.append(line)
        self._size += len(line)
        if self._size >= self.max_bytes:
            self._write()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write()

    def close(self) -> None:
        self.flush()
        self._closed.set()
        super().close()

    def _write(self) -> None:
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        self._size = 0
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stderr must not take the service down

    def _flush_periodically(self) -> None:
        while not self._closed.wait(self.interval):
            self.flush()


def lighten_records() -> None:
    """Have log records skip what no line of ours shows: the calling frame's file and line (a
    walk up the stack per record), the thread's and process's names and ids.

    Together a fifth of a request line's cost. ``_srcfile`` is the logging module's own switch
    for the walk (its source says to set it to None to turn it off); the others are public.
    Process-wide: no record then has a file, line or function, and ``stack_info=True`` adds no
    stack (nothing here asks for either).
    """
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # type: ignore[attr-defined]


def flush(logger_name: str) -> None:
    """Write out buffered lines now.

    Called at shutdown: uvicorn re-raises SIGTERM after a graceful stop, so the process ends
    by the signal and ``logging.shutdown`` (an atexit hook) never runs.
    """
    for handler in logging.getLogger(logger_name).handlers:
        handler.flush()
