"""Logging set-up: uvicorn's, plus a batched stream for the one-line-per-request log."""

from __future__ import annotations

import copy
from typing import Any

from uvicorn.config import LOGGING_CONFIG

from serving import request_log

REQUEST_LOGGER = "llm_mock_server.requests"


def flush_request_log() -> None:
    """Write out buffered request lines now (shutdown: the process may end by a signal)."""
    request_log.flush(REQUEST_LOGGER)


def logging_config(level: str, log_format: str = "text") -> dict[str, Any]:
    """uvicorn's logging config plus ours: service loggers, the request log, quiet drops; every
    logger of the process (uvicorn's, the root's) writes ``log_format``."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {
        "quiet_drops": {"()": "llm_mock_server.faults.QuietDrops"},
        "escape": {"()": "serving.request_log.EscapeArgs"},
    }
    config["loggers"]["uvicorn.error"]["filters"] = ["quiet_drops"]
    config["formatters"]["plain"] = {"format": "%(levelname)s:     %(message)s"}
    config["handlers"]["requests"] = {
        "()": "serving.request_log.BatchedStreamHandler",
        "formatter": "plain",
        "stream": "ext://sys.stderr",
    }
    if log_format == "json":
        # JSON escapes every value itself (the message's as text lines do): no escape filter.
        json_formatter = {"()": "serving.log_format.JsonFormatter"}
        config["formatters"] = {name: json_formatter for name in config["formatters"]}
        config["formatters"]["request"] = {**json_formatter, "unnamed": ["operation"]}
        config["handlers"]["requests"]["formatter"] = "request"
        config["root"] = {"handlers": ["default"], "level": "WARNING"}
    else:
        for handler in config["handlers"].values():
            handler["filters"] = [*handler.get("filters", []), "escape"]
    for name in ("llm_mock_server", "ratelimit", "openai_wire", "serving"):
        config["loggers"][name] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    config["loggers"][REQUEST_LOGGER] = {"handlers": ["requests"], "level": level.upper(), "propagate": False}
    return config
