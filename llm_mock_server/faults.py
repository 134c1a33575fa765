"""Injected faults: configured random rates, or one forced per request by a header.

A dropped connection has no ASGI message: the route marks the scope, the outermost
wrapper returns a value instead of None, and uvicorn answers that by closing the socket
without writing a byte, which is what a client sees when an upstream dies mid-request.
"""

from __future__ import annotations

import logging
import random
from enum import StrEnum
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from llm_mock_server.config import MockSettings
from openai_wire.errors import APIError

FAULT_HEADER = "x-mock-fault"
DROP_SCOPE_KEY = "llm_mock.drop"
DROP_SENTINEL = "llm-mock: x-mock-fault drop"


class Fault(StrEnum):
    RATE_LIMIT = "429"
    ERROR_500 = "500"
    ERROR_503 = "503"
    SLOW = "slow"
    DROP = "drop"
    CAPACITY = "capacity"


class FaultPicker:
    """Chooses the fault of each request (or none) from the settings and the request header."""

    def __init__(self, settings: MockSettings) -> None:
        self.allow_header = settings.admin
        self.slow_ms = settings.fault_slow_ms
        # Cumulative shares in a fixed order, so one draw picks at most one fault.
        self.thresholds: list[tuple[float, Fault]] = []
        total = 0.0
        for rate, fault in (
            (settings.fault_500_rate, Fault.ERROR_500),
            (settings.fault_503_rate, Fault.ERROR_503),
            (settings.fault_slow_rate, Fault.SLOW),
            (settings.fault_drop_rate, Fault.DROP),
            (settings.fault_capacity_rate, Fault.CAPACITY),
        ):
            if rate > 0:
                total += rate
                self.thresholds.append((total, fault))
        self.rng = random.Random(settings.seed)

    def pick(self, header: str | None) -> Fault | None:
        """The forced fault if the header names one (admin mode only), else a random one."""
        if header is not None and self.allow_header:
            try:
                return Fault(header.strip().lower())
            except ValueError:
                # A typo in a test's fault header should fail loudly, not pass as a normal answer.
                raise APIError(
                    400,
                    f"Invalid {FAULT_HEADER} header {header!r}: use one of "
                    + ", ".join(f.value for f in Fault)
                    + ".",
                    param=FAULT_HEADER,
                    code="invalid_request",
                ) from None
        if not self.thresholds:
            return None
        draw = self.rng.random()
        for threshold, fault in self.thresholds:
            if draw < threshold:
                return fault
        return None


class DropConnection(Response):
    """A response that sends nothing and asks the outer wrapper to have the server hang up."""

    def __init__(self) -> None:
        super().__init__(status_code=599)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[DROP_SCOPE_KEY] = True


class QuietDrops(logging.Filter):
    """Hides uvicorn's complaint about the value returned for a deliberate drop."""

    def filter(self, record: logging.LogRecord) -> bool:
        args: Any = record.args
        return not (isinstance(args, tuple) and args and args[0] == DROP_SENTINEL)
