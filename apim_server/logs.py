"""Logging set-up: plain lines on stderr, the one-line-per-request log written in batches."""

from __future__ import annotations

import logging
import sys

from serving import request_log
from serving.request_log import BatchedStreamHandler, EscapeArgs

REQUEST_LOGGER = "apim.request"
FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure(level: str) -> None:
    """Root logging on stderr; request lines batched; httpx's own request lines silenced.

    Once per process: later calls (several apps in one test process) change nothing.
    """
    requests = logging.getLogger(REQUEST_LOGGER)
    if any(isinstance(h, BatchedStreamHandler) for h in requests.handlers):
        return
    numeric = logging.DEBUG if level == "trace" else getattr(logging, level.upper())
    logging.basicConfig(level=numeric, format=FORMAT, stream=sys.stderr)
    for root_handler in logging.getLogger().handlers:
        root_handler.addFilter(EscapeArgs())
    handler = BatchedStreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(EscapeArgs())
    requests.addHandler(handler)
    requests.propagate = False
    # httpx logs every request at INFO: our own line per request says more, once.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def flush() -> None:
    """Write out buffered request lines now (shutdown: the process may end by a signal)."""
    request_log.flush(REQUEST_LOGGER)
