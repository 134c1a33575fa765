"""What of a caller's request headers goes upstream: an allow-list (content negotiation, what
the SDKs send, the request id), so that no caller can steer the upstream for everyone."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from apim_server.upstream import Upstream
from tests.processes import Service
from tests.test_apim_e2e import chat, gateway, mock

CALLER = [
    (b"host", b"gw:8001"),
    (b"content-type", b"application/json"),
    (b"accept", b"application/json"),
    (b"user-agent", b"OpenAI/Python 1.0"),
    (b"x-stainless-lang", b"python"),
    (b"x-stainless-retry-count", b"0"),
    (b"openai-beta", b"assistants=v2"),
    (b"idempotency-key", b"abc"),
    (b"x-request-id", b"req_caller"),
    (b"authorization", b"Bearer sk-caller"),
    (b"api-key", b"sk-caller"),
    (b"openai-organization", b"org-caller"),
    (b"openai-project", b"proj-caller"),
    (b"x-mock-fault", b"429"),
    (b"forwarded", b"for=10.0.0.1"),
    (b"x-forwarded-for", b"10.0.0.1"),
    (b"x-forwarded-host", b"evil.example"),
    (b"x-real-ip", b"10.0.0.1"),
    (b"via", b"1.1 proxy"),
    (b"cookie", b"session=1"),
    (b"expect", b"100-continue"),
    (b"connection", b"keep-alive"),
    (b"keep-alive", b"timeout=5"),
    (b"te", b"trailers"),
    (b"transfer-encoding", b"chunked"),
    (b"upgrade", b"h2c"),
    (b"proxy-authorization", b"Basic x"),
    (b"content-length", b"99"),
    (b"accept-encoding", b"gzip"),
    (b"x-apim-priority", b"high"),
    (b"x-apim-timeout-ms", b"100"),
]
ALWAYS = {
    b"content-type",
    b"accept",
    b"user-agent",
    b"x-stainless-lang",
    b"x-stainless-retry-count",
    b"openai-beta",
    b"idempotency-key",
}


def _names(upstream: Upstream) -> dict[bytes, bytes]:
    out = upstream.headers(CALLER, "req_ours")
    assert len({n for n, _ in out}) == len(out), "a header was sent twice"
    return dict(out)


def test_with_the_gateways_own_key_only_the_allow_list_and_our_key_go() -> None:
    sent = _names(Upstream("http://127.0.0.1:1/v1", "sk-gateway", 4, 5))
    assert set(sent) == ALWAYS | {b"x-request-id", b"accept-encoding", b"authorization"}
    assert sent[b"authorization"] == b"Bearer sk-gateway"
    assert sent[b"x-request-id"] == b"req_ours"
    assert sent[b"accept-encoding"] == b"identity"


def test_forwarding_the_callers_key_forwards_its_organization_and_project() -> None:
    sent = _names(Upstream("http://127.0.0.1:1/v1", "", 4, 5))
    extra = {b"authorization", b"api-key", b"openai-organization", b"openai-project"}
    assert set(sent) == ALWAYS | extra | {b"x-request-id", b"accept-encoding"}
    assert sent[b"authorization"] == b"Bearer sk-caller"


def test_a_gateway_key_never_goes_upstream() -> None:
    sent = _names(Upstream("http://127.0.0.1:1/v1", "", 4, 5, forward_caller_auth=False))
    assert not {b"authorization", b"api-key", b"openai-organization", b"openai-project"} & set(sent)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Service]:
    with mock(RPM_LIMIT="100000", TPM_LIMIT="100000000", ADMIN="true") as service:
        yield service


def test_a_callers_fault_header_never_reaches_the_mock(upstream: Service) -> None:
    # Had x-mock-fault gone through, the mock would answer 429/500 and the gateway would pause
    # every caller (429) or retry (500).
    with gateway(upstream, FORWARD_MOCK_FAULTS="false") as gw:
        for fault in ("429", "500", "503", "drop"):
            answer = chat(gw, headers={"x-mock-fault": fault, "forwarded": "for=1.2.3.4"})
            assert answer.status_code == 200, answer.text
        status = upstream.status()
        assert status["totals"]["rate_limited"] == 0
        assert status["totals"]["errors"] == 0
        seen = httpx.get(f"{gw.url}/status", timeout=5).json()
        assert seen["totals"]["upstream_429"] == 0
        assert seen["paused_s"] == 0
        # The same header straight to the mock does force the fault: the test can fail.
        direct = httpx.post(
            f"{upstream.v1}/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
            headers={"x-mock-fault": "429"},
            timeout=5,
        )
        assert direct.status_code == 429
