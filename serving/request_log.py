"""The one-line-per-request log, written in batches from a thread."""

from __future__ import annotations

import logging
import threading
from typing import TextIO


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


def flush(logger_name: str) -> None:
    """Write out buffered lines now.

    Called at shutdown: uvicorn re-raises SIGTERM after a graceful stop, so the process ends
    by the signal and ``logging.shutdown`` (an atexit hook) never runs.
    """
    for handler in logging.getLogger(logger_name).handlers:
        handler.flush()
