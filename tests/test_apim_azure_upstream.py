"""The gateway in front of a MOCK_FLAVOR=azure mock (its v1 API path, RPM derived from TPM and
enforced per second): a burst queues and is answered in full, with zero upstream 429."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.test_apim_e2e import MESSAGES, MODEL, gateway, mock

TPM = 100_000  # Azure's rule: 600 RPM, so 10 requests per 1 s sub-window
BURST = 25


def test_a_burst_through_the_gateway_meets_no_azure_429() -> None:
    with (
        mock(FLAVOR="azure", TPM_LIMIT=str(TPM), RPM_LIMIT="600", SHORT_WINDOW_S="1") as upstream,
        gateway(f"{upstream.url}/openai/v1", TPM_LIMIT=str(TPM), RPM_LIMIT="600", SHORT_WINDOW_S="1") as gw,
    ):
        status = httpx.get(f"{upstream.url}/status", timeout=5).json()
        assert status["limits"]["rp1s"]["limit"] == 10
        # Straight to the mock, the burst is refused in Azure's words: the test can fail.
        body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 5}

        def direct(_: int) -> int:
            return httpx.post(f"{upstream.url}/openai/v1/chat/completions", json=body, timeout=10).status_code

        with ThreadPoolExecutor(20) as pool:
            assert 429 in list(pool.map(direct, range(20)))
        httpx.post(f"{upstream.url}/admin/reset", timeout=5).raise_for_status()
        refused = httpx.get(f"{upstream.url}/status", timeout=5).json()["totals"]["rate_limited"]

        def send(_: int) -> int:
            return httpx.post(f"{gw.v1}/chat/completions", json=body, timeout=60).status_code

        with ThreadPoolExecutor(BURST) as pool:
            answers = list(pool.map(send, range(BURST)))
        assert answers == [200] * BURST
        assert httpx.get(f"{upstream.url}/status", timeout=5).json()["totals"]["rate_limited"] == refused
        assert httpx.get(f"{gw.url}/status", timeout=5).json()["totals"]["upstream_429"] == 0
