"""Logging set-up: uvicorn's, plus a batched stream for the one-line-per-request log."""

from __future__ import annotations

import copy
import logging
import threading
import time
from typing import Any, TextIO

from uvicorn.config import LOGGING_CONFIG

REQUEST_LOGGER = "llm_mock_server.requests"


class BufferedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes its records in batches from a background thread.

    A write and flush per request line cost more than a third of the mock's own work per
    request; batching them every ``interval`` seconds (or every ``max_bytes``) keeps the log
    without that cost. Lines appear at most ``interval`` late.
    """

    def __init__(self, stream: TextIO | None = None, interval: float = 0.25, max_bytes: int = 65_536) -> None:
        super().__init__(stream)
        self.interval = interval
        self.max_bytes = max_bytes
        self._pending: list[str] = []
        self._size = 0
        self._closed = False
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
        self._closed = True
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
            pass  # a closed or broken stderr must not take the server down

    def _flush_periodically(self) -> None:
        while not self._closed:
            time.sleep(self.interval)
            self.flush()


def flush_request_log() -> None:
    """Write out buffered request lines now.

    Called at shutdown: uvicorn re-raises SIGTERM after a graceful stop, so the process ends
    by the signal and ``logging.shutdown`` (an atexit hook) never runs.
    """
    for handler in logging.getLogger(REQUEST_LOGGER).handlers:
        handler.flush()


def logging_config(level: str) -> dict[str, Any]:
    """uvicorn's logging config plus ours: service loggers, the request log, quiet drops."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"quiet_drops": {"()": "llm_mock_server.faults.QuietDrops"}}
    config["loggers"]["uvicorn.error"]["filters"] = ["quiet_drops"]
    config["formatters"]["plain"] = {"format": "%(levelname)s:     %(message)s"}
    config["handlers"]["requests"] = {
        "()": "llm_mock_server.logs.BufferedStreamHandler",
        "formatter": "plain",
        "stream": "ext://sys.stderr",
    }
    for name in ("llm_mock_server", "ratelimit", "openai_wire"):
        config["loggers"][name] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    config["loggers"][REQUEST_LOGGER] = {"handlers": ["requests"], "level": level.upper(), "propagate": False}
    return config
