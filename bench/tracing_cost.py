"""CPU per traced request: what APIM_OTEL_TRACES=true adds to one request, in this process.

One request's hooks as the exchange calls them (the request span from a caller's
``traceparent``, a queue wait and an admission recorded after the fact, the upstream call's
span and the ``traceparent`` it sends, the end), with the gateway's batch span processor in
front of an exporter that drops everything, so the figure is the gateway's own work, not the
network's. Process CPU (the batch thread included) per request, median of rounds. Off, the
gateway imports none of this: each hook is one ``is None`` test.

    python bench/tracing_cost.py [--requests 5000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from apim_server.tracing import Tracing

HEADERS = {
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "content-type": "application/json",
}
UPSTREAM_HEADERS = [(b"content-type", b"application/json"), (b"authorization", b"Bearer sk-x")]


class Dropped(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def one(tracing: Tracing, grant: Any) -> None:
    trace = tracing.request(HEADERS, "/v1/chat/completions", "gpt-4o-mini", "req_1", time.monotonic())
    trace.admitted(grant, 0.001)
    trace.upstream("default", "http://127.0.0.1:8000/v1/chat/completions", UPSTREAM_HEADERS)
    trace.upstream_done(200)
    trace.end(200, 0.001, 1)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropped()))
    tracing = Tracing(provider)
    budget = SimpleNamespace(deployment=SimpleNamespace(name="default"), name="default|*")
    grant = SimpleNamespace(budget=budget, decision=SimpleNamespace(asked_at=time.monotonic()))
    runs = []
    for _ in range(args.rounds):
        started = time.process_time()
        for _ in range(args.requests):
            one(tracing, grant)
        runs.append((time.process_time() - started) / args.requests * 1e6)
    provider.shutdown()
    shown = ", ".join(f"{r:.1f}" for r in runs)
    print(f"traced request: {statistics.median(runs):.1f} us CPU per request (median; rounds {shown})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
