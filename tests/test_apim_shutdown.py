"""SIGTERM on a real gateway process: queued requests get 503 at once, in-flight ones finish."""

from __future__ import annotations

import signal

import httpx

from tests.test_apim_e2e import Background, chat, mock_and_gateway, wait_for


def test_sigterm_answers_the_queued_and_lets_the_in_flight_finish() -> None:
    with mock_and_gateway({"TTFT_MS": "3000"}, RPM_LIMIT="2", SHUTDOWN_TIMEOUT_S="20") as (_slow, gw):
        in_flight = [Background(lambda: chat(gw)) for _ in range(2)]
        wait_for(lambda: gw.status()["queue"]["in_flight"] == 2, what="two requests in flight")
        queued = [Background(lambda: chat(gw)) for _ in range(2)]
        wait_for(lambda: gw.status()["queue"]["depth"] == 2, what="two requests queued")

        gw.process.send_signal(signal.SIGTERM)
        for call in queued:
            answer = call.join()
            assert answer.status_code == 503
            assert answer.json()["error"]["code"] == "shutting_down"
            assert int(answer.headers["retry-after"]) >= 1
        # Answered while the slow in-flight requests were still running.
        assert all(call.done_at is None for call in in_flight)

        def refused() -> bool:
            try:
                httpx.get(f"{gw.url}/healthz", timeout=1)
            except httpx.ConnectError:
                return True
            return False

        wait_for(refused, timeout=5, what="the listener to close")
        assert all(call.done_at is None for call in in_flight)

        for call in in_flight:
            done = call.join()
            assert done.status_code == 200
            assert done.json()["choices"][0]["message"]["content"]
        assert gw.process.wait(20) in (0, -signal.SIGTERM)
