"""Optional OpenTelemetry traces (``APIM_OTEL_TRACES``, the ``otel`` extra): one span per request,
with its queue wait, its admission and each upstream call as children.

The caller's ``traceparent`` is the request span's parent; the upstream request carries the
upstream call's own. Off (the default), nothing here is imported and an exchange holds ``None``
instead of a ``RequestTrace``, so tracing costs one ``is None`` test per hook.

Queue waits and admissions are recorded after the fact, from the times the exchange and the
dispatcher already keep (the admission happens on the dispatcher's task, not the request's);
only the upstream call's span is live, since its id goes upstream.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from serving.urls import redacted

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from apim_server.grant import Grant

EXTRA = "pip install 'llm-ratelimit-gateway[otel]'"
SERVICE_NAME = "apim"


def available() -> bool:
    """Whether the ``otel`` extra (the SDK and its OTLP exporter) is installed."""
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")
    )


def _epoch_ns(monotonic_s: float) -> int:
    """A ``time.monotonic()`` instant on the wall clock spans are stamped with."""
    return time.time_ns() - int((time.monotonic() - monotonic_s) * 1e9)


class Tracing:
    """The gateway's tracer; ``request`` starts one request's trace."""

    def __init__(self, provider: TracerProvider) -> None:
        # Imported here, once: only a gateway with traces on needs the extra.
        from opentelemetry import trace  # noqa: PLC0415
        from opentelemetry.trace.propagation.tracecontext import (  # noqa: PLC0415
            TraceContextTextMapPropagator,
        )

        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("apim_server")
        self.propagator = TraceContextTextMapPropagator()
        self.api = trace

    @classmethod
    def exporting(cls) -> Tracing:
        """Spans batched to the OTLP/HTTP endpoint the standard ``OTEL_EXPORTER_OTLP_*``
        variables name (default ``http://localhost:4318/v1/traces``)."""
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

        name = os.environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME
        provider = TracerProvider(resource=Resource.create({"service.name": name}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        return cls(provider)

    def request(
        self, headers: Mapping[str, str], path: str, model: str, request_id: str, arrived: float
    ) -> RequestTrace:
        """The trace of one request that arrived (monotonic) at ``arrived``, under the caller's
        ``traceparent`` when it sent one."""
        parent = self.propagator.extract(carrier=headers)
        span = self.tracer.start_span(
            f"POST {path}",
            context=parent,
            kind=self.api.SpanKind.SERVER,
            start_time=_epoch_ns(arrived),
            attributes={
                "http.request.method": "POST",
                "http.route": path,
                "apim.model": model,
                "apim.request_id": request_id,
            },
        )
        return RequestTrace(self, span, self.api.set_span_in_context(span))

    def shutdown(self) -> None:
        """Send what is batched and stop (at the gateway's stop)."""
        self.provider.shutdown()


class RequestTrace:
    """One request's spans. The exchange calls ``admitted`` after each grant, ``upstream`` and
    ``upstream_done`` around each upstream call, and ``end`` once with the answer; waits are read
    from its ``queue_s`` (the time it spent in the queue so far)."""

    __slots__ = ("_call", "_context", "_queued_s", "_recording", "_span", "_tracing", "_waits")

    def __init__(self, tracing: Tracing, span: Span, context: object) -> None:
        self._tracing = tracing
        self._span = span
        self._context = context
        # Not sampled (OTEL_TRACES_SAMPLER): no child is made, only the context goes upstream.
        self._recording = span.is_recording()
        self._queued_s = 0.0  # of the exchange's queue_s, what spans already show
        self._call: Span | None = None
        self._waits = 0

    def _child(self, name: str, start: float, end: float, attributes: dict[str, str | int]) -> None:
        if not self._recording:
            return
        span = self._tracing.tracer.start_span(
            name,
            context=self._context,  # type: ignore[arg-type]
            start_time=_epoch_ns(start),
            attributes=attributes,
        )
        span.end(end_time=_epoch_ns(end))

    def _wait(self, queue_s: float, now: float, outcome: str) -> None:
        """The wait that ended now: what ``queue_s`` grew by since the last one."""
        waited = queue_s - self._queued_s
        self._queued_s = queue_s
        self._waits += 1
        self._child("queue wait", now - waited, now, {"apim.wait": self._waits, "apim.outcome": outcome})

    def admitted(self, grant: Grant, queue_s: float) -> None:
        """The wait that just ended in ``grant``, and the limiter call that granted it (asked on
        the dispatcher's task, or inline)."""
        now = time.monotonic()
        self._wait(queue_s, now, "admitted")
        budget = grant.budget
        asked = grant.decision.asked_at
        self._child(
            "admission",
            asked if 0 < asked <= now else now,
            now,
            {"apim.deployment": budget.deployment.name, "apim.budget": budget.name},
        )

    def upstream(
        self, deployment: str, url: str, headers: list[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        """Start the upstream call's span: ``headers`` plus its ``traceparent`` (a new list)."""
        api = self._tracing.api
        carrier: dict[str, str] = {}
        if not self._recording:
            self._tracing.propagator.inject(carrier, context=self._context)  # type: ignore[arg-type]
            return [*headers, *((k.encode(), v.encode()) for k, v in carrier.items())]
        self._call = self._tracing.tracer.start_span(
            "upstream call",
            context=self._context,  # type: ignore[arg-type]
            kind=api.SpanKind.CLIENT,
            attributes={
                "apim.deployment": deployment,
                "http.request.method": "POST",
                "url.full": redacted(url),
            },
        )
        self._tracing.propagator.inject(carrier, context=api.set_span_in_context(self._call))
        return [*headers, *((k.encode(), v.encode()) for k, v in carrier.items())]

    def upstream_done(self, status: int | str) -> None:
        """The upstream call ended: its status, or why no answer came (``error``)."""
        error = self._tracing.api.StatusCode.ERROR
        call, self._call = self._call, None
        if call is None:
            return
        if isinstance(status, int):
            call.set_attribute("http.response.status_code", status)
            if status >= 500 or status == 429:
                call.set_status(error)
        else:
            call.set_attribute("error.type", status)
            call.set_status(error)
        call.end()

    def end(self, status: int, queue_s: float, attempts: int) -> None:
        """The answer: a wait that ended without a grant (timeout, 429, hang-up) ends with it,
        then the request's span."""
        now = time.monotonic()
        if self._call is not None:
            self.upstream_done("cancelled")
        if queue_s > self._queued_s:
            self._wait(queue_s, now, str(status))
        span = self._span
        span.set_attribute("http.response.status_code", status)
        span.set_attribute("apim.queue_ms", round(queue_s * 1000))
        span.set_attribute("apim.attempts", attempts)
        if status >= 500:
            span.set_status(self._tracing.api.StatusCode.ERROR)
        span.end(end_time=_epoch_ns(now))
