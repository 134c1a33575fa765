"""Logging set-up: lines on stderr (plain or JSON), the one-line-per-request log written in batches."""

from __future__ import annotations

import logging
import sys

from serving import request_log
from serving.log_format import JsonFormatter, TextFormatter
from serving.request_log import BatchedStreamHandler, EscapeArgs, lighten_records

REQUEST_LOGGER = "apim.request"
FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def configure(level: str, log_format: str = "text") -> None:
    """Root logging on stderr; request lines batched; httpx's own request lines silenced.

    Every record of the process (uvicorn's too: it is given no logging config of its own) goes
    through these handlers, so all come out in ``log_format``. Once per process: later calls
    (several apps in one test process) change nothing.
    """
    requests = logging.getLogger(REQUEST_LOGGER)
    if any(isinstance(h, BatchedStreamHandler) for h in requests.handlers):
        return
    numeric = logging.DEBUG if level == "trace" else getattr(logging, level.upper())
    lighten_records()
    root = logging.getLogger()
    before = list(root.handlers)
    logging.basicConfig(level=numeric, format=FORMAT, stream=sys.stderr)
    handler = BatchedStreamHandler(sys.stderr)
    handlers = [*root.handlers, handler]
    for each in handlers:
        if log_format == "json":
            # JSON escapes every value itself (the message's as text lines do).
            each.setFormatter(JsonFormatter())
        else:
            each.addFilter(EscapeArgs())
            if each not in before:  # ours; a handler someone else set up keeps its format
                each.setFormatter(TextFormatter(FORMAT))
    if log_format == "json":
        logging.captureWarnings(True)  # a Python warning is a line on stderr too
    requests.addHandler(handler)
    requests.propagate = False
    # httpx logs every request at INFO: our own line per request says more, once.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def flush() -> None:
    """Write out buffered request lines now (shutdown: the process may end by a signal)."""
    request_log.flush(REQUEST_LOGGER)
