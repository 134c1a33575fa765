"""OpenTelemetry traces (APIM_OTEL_TRACES, the ``otel`` extra): a real gateway process exports
over OTLP/HTTP to a receiver in this test, in front of an upstream that echoes the headers it got."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from apim_server import tracing
from apim_server.config import Settings
from tests.processes import Service, running

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed (pip install -e '.[dev]')")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
SERVER, CLIENT = 2, 3  # the protocol's SpanKind values
ERROR = 2  # the protocol's Status.code for an error


class Receiver:
    """An OTLP/HTTP traces endpoint: every span it is sent, decoded."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                request = ExportTraceServiceRequest.FromString(body)
                with receiver.lock:
                    for resource in request.resource_spans:
                        for scope in resource.scope_spans:
                            receiver.spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def trace(self, trace_id: str, count: int) -> list[Any]:
        """The spans of ``trace_id`` once ``count`` of them have arrived."""
        deadline = time.monotonic() + 20
        while True:
            with self.lock:
                found = [s for s in self.spans if s.trace_id.hex() == trace_id]
            if len(found) >= count:
                return found
            assert time.monotonic() < deadline, f"{len(found)} of {count} spans arrived: {found}"
            time.sleep(0.05)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    found.thread.start()
    try:
        yield found
    finally:
        found.server.shutdown()
        found.server.server_close()


def gateway_env(upstream: Service, receiver: Receiver, **extra: str) -> dict[str, str]:
    return {
        "APIM_UPSTREAM_URL": upstream.v1,
        "APIM_UPSTREAM_API_KEY": "sk-gateway-own-key",
        "APIM_REDIS_URL": "",
        "APIM_LOG_REQUESTS": "false",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        **extra,
    }


def chat(gateway: Service, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{gateway.v1}/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **body},
        headers={"traceparent": TRACEPARENT},
        timeout=30,
    )


def attributes(span: Any) -> dict[str, Any]:
    out = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value"))
    return out


def by_name(spans: list[Any], name: str) -> list[Any]:
    return sorted((s for s in spans if s.name == name), key=lambda s: s.start_time_unix_nano)


def test_a_request_is_one_span_with_its_wait_admission_and_upstream_call_as_children(
    receiver: Receiver,
) -> None:
    with (
        running("tests.echo_upstream") as upstream,
        running("apim_server", env=gateway_env(upstream, receiver, APIM_OTEL_TRACES="true")) as gateway,
    ):
        answer = chat(gateway)
        assert answer.status_code == 200
        sent_upstream = answer.json()["echo"]["traceparent"]
        spans = receiver.trace(CALLER_TRACE, 4)
    (request,) = [s for s in spans if s.kind == SERVER]
    # The caller's trace goes on: its span is the request's parent.
    assert request.parent_span_id.hex() == CALLER_SPAN
    assert request.name == "POST /v1/chat/completions"
    assert attributes(request) | {"apim.request_id": "x"} == {
        "http.request.method": "POST",
        "http.route": "/v1/chat/completions",
        "apim.model": "gpt-4o-mini",
        "apim.request_id": "x",
        "http.response.status_code": 200,
        "apim.queue_ms": int(answer.headers["x-apim-queue-ms"]),
        "apim.attempts": 1,
    }
    assert attributes(request)["apim.request_id"] == answer.headers["x-request-id"]
    (wait,) = by_name(spans, "queue wait")
    (admission,) = by_name(spans, "admission")
    (call,) = by_name(spans, "upstream call")
    for child in (wait, admission, call):
        assert child.parent_span_id == request.span_id, child.name
        assert request.start_time_unix_nano <= child.start_time_unix_nano
        assert child.end_time_unix_nano <= request.end_time_unix_nano
    assert attributes(wait)["apim.outcome"] == "admitted"
    assert attributes(admission)["apim.deployment"] == "default"
    assert wait.end_time_unix_nano <= call.start_time_unix_nano, "sent after its wait"
    # The upstream request carried the upstream call's own context, in the caller's trace.
    assert sent_upstream == f"00-{CALLER_TRACE}-{call.span_id.hex()}-01"
    assert call.kind == CLIENT
    assert attributes(call)["http.response.status_code"] == 200
    assert attributes(call)["url.full"] == f"{upstream.v1}/chat/completions"


def test_each_retry_is_a_wait_an_admission_and_a_call_of_its_own(receiver: Receiver) -> None:
    with running("tests.echo_upstream") as upstream:
        env = gateway_env(upstream, receiver, APIM_OTEL_TRACES="true", APIM_UPSTREAM_RETRIES="1")
        with running("apim_server", env=env) as gateway:
            answer = chat(gateway, user="echo-status-500")
            assert answer.status_code == 500
            spans = receiver.trace(CALLER_TRACE, 7)
    (request,) = [s for s in spans if s.kind == SERVER]
    assert request.status.code == ERROR
    assert attributes(request)["apim.attempts"] == 2
    calls = by_name(spans, "upstream call")
    waits = by_name(spans, "queue wait")
    assert len(calls) == len(waits) == len(by_name(spans, "admission")) == 2
    for call in calls:
        assert attributes(call)["http.response.status_code"] == 500
        assert call.status.code == ERROR
    assert [attributes(w)["apim.wait"] for w in waits] == [1, 2]
    assert waits[1].start_time_unix_nano >= calls[0].end_time_unix_nano, "the retry waited after the call"


def test_off_by_default_no_span_is_sent_and_no_traceparent_goes_upstream(receiver: Receiver) -> None:
    with (
        running("tests.echo_upstream") as upstream,
        running("apim_server", env=gateway_env(upstream, receiver)) as gateway,
    ):
        answer = chat(gateway)
        assert answer.status_code == 200
        assert "traceparent" not in answer.json()["echo"], "the caller's stays here, and none of ours"
        time.sleep(0.5)  # ten export periods: a span would have been sent by now
    assert receiver.spans == []


def test_an_unsampled_request_sends_no_span_but_passes_the_trace_on(receiver: Receiver) -> None:
    """OTEL_TRACES_SAMPLER=always_off (or a ratio): nothing recorded, and the upstream still
    continues the caller's trace, told it is not sampled."""
    with running("tests.echo_upstream") as upstream:
        env = gateway_env(upstream, receiver, APIM_OTEL_TRACES="true", OTEL_TRACES_SAMPLER="always_off")
        with running("apim_server", env=env) as gateway:
            answer = chat(gateway)
            assert answer.status_code == 200
            time.sleep(0.5)  # ten export periods: a span would have been sent by now
    version, trace_id, span_id, flags = answer.json()["echo"]["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", CALLER_TRACE, "00")
    assert span_id != CALLER_SPAN, "the gateway's (unrecorded) request span is the upstream's parent"
    assert receiver.spans == []


def test_the_setting_without_the_extra_fails_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "available", lambda: False)
    with pytest.raises(ValidationError) as raised:
        Settings(otel_traces=True)
    assert "needs the otel extra: pip install 'llm-ratelimit-gateway[otel]'" in str(raised.value)
    assert Settings(otel_traces=False).otel_traces is False
