"""CORS on the gateway (APIM_CORS_ORIGINS): preflights answered, the gateway's headers exposed
to browser scripts, other origins refused, and nothing of it when the setting is empty."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from apim_server.cors import EXPOSED
from tests.processes import Service
from tests.test_apim_e2e import chat, gateway, mock

ORIGIN = "https://app.example.com"
PREFLIGHT = {
    "origin": ORIGIN,
    "access-control-request-method": "POST",
    "access-control-request-headers": "authorization, content-type, x-stainless-lang, x-apim-priority",
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[Service]:
    with mock(RPM_LIMIT="100000", TPM_LIMIT="100000000") as service:
        yield service


@pytest.fixture(scope="module")
def gw(upstream: Service) -> Iterator[Service]:
    with gateway(upstream, CORS_ORIGINS=f"{ORIGIN},https://other.example.com") as service:
        yield service


def test_preflight_is_answered(gw: Service) -> None:
    answer = httpx.options(f"{gw.v1}/chat/completions", headers=PREFLIGHT, timeout=5)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in answer.headers["access-control-allow-methods"]
    allowed = {h.strip() for h in answer.headers["access-control-allow-headers"].lower().split(",")}
    assert {"authorization", "content-type", "x-stainless-lang", "x-apim-priority"} <= allowed


def test_answers_expose_the_gateways_headers(gw: Service) -> None:
    answer = chat(gw, headers={"origin": ORIGIN})
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == ORIGIN
    exposed = {h.strip() for h in answer.headers["access-control-expose-headers"].split(",")}
    assert set(EXPOSED) <= exposed
    assert {"x-ratelimit-remaining-tokens", "x-apim-queue-ms", "retry-after", "retry-after-ms"} <= exposed
    # The exposed headers are really there to be read.
    assert "x-apim-queue-ms" in answer.headers
    assert "x-ratelimit-remaining-requests" in answer.headers


def test_other_origins_are_refused_in_openais_shape(gw: Service) -> None:
    answer = httpx.options(
        f"{gw.v1}/chat/completions", headers={**PREFLIGHT, "origin": "https://evil.example"}, timeout=5
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "cors_refused"
    assert "access-control-allow-origin" not in answer.headers
    # A simple request from there is still served (CORS binds browsers), but not exposed to them.
    served = chat(gw, headers={"origin": "https://evil.example"})
    assert served.status_code == 200
    assert "access-control-allow-origin" not in served.headers


def test_server_side_callers_see_no_cors_headers(gw: Service) -> None:
    answer = chat(gw)
    assert answer.status_code == 200
    assert not any(h.startswith("access-control-") for h in answer.headers)


def test_any_origin_with_star_and_none_when_empty(upstream: Service) -> None:
    with gateway(upstream, CORS_ORIGINS="*") as star:
        answer = httpx.options(
            f"{star.v1}/models", headers={**PREFLIGHT, "origin": "https://x.test"}, timeout=5
        )
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == "*"
    with gateway(upstream) as off:
        answer = httpx.options(f"{off.v1}/chat/completions", headers=PREFLIGHT, timeout=5)
        assert answer.status_code == 405
        assert "access-control-allow-origin" not in answer.headers
