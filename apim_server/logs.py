"""Logging set-up: plain lines on stderr, the one-line-per-request log written in batches."""

from __future__ import annotations

import logging
import sys
import threading
from typing import TextIO

REQUEST_LOGGER = "apim.request"
FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class BatchedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes its records every ``interval`` seconds (or every ``max_bytes``) from a thread.

    A write per request line is a system call per request on the hot path, and system calls
    are dear on virtual machines; lines appear at most ``interval`` late instead.
    """

    def __init__(self, stream: TextIO | None = None, interval: float = 0.25, max_bytes: int = 65_536) -> None:
        super().__init__(stream)
        self.interval = interval
        self.max_bytes = max_bytes
        self._pending: list[str] = []
        self._size = 0
        self._closed = threading.Event()
        threading.Thread(target=self._flush_periodically, name="apim-request-log", daemon=True).start()

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
            pass  # a closed or broken stderr must not take the gateway down

    def _flush_periodically(self) -> None:
        while not self._closed.wait(self.interval):
            self.flush()


def configure(level: str) -> None:
    """Root logging on stderr; request lines batched; httpx's own request lines silenced.

    Once per process: later calls (several apps in one test process) change nothing.
    """
    requests = logging.getLogger(REQUEST_LOGGER)
    if any(isinstance(h, BatchedStreamHandler) for h in requests.handlers):
        return
    numeric = logging.DEBUG if level == "trace" else getattr(logging, level.upper())
    logging.basicConfig(level=numeric, format=FORMAT, stream=sys.stderr)
    handler = BatchedStreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    requests.addHandler(handler)
    requests.propagate = False
    # httpx logs every request at INFO: our own line per request says more, once.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def flush() -> None:
    """Write out buffered request lines now (shutdown: the process may end by a signal)."""
    for handler in logging.getLogger(REQUEST_LOGGER).handlers:
        handler.flush()
