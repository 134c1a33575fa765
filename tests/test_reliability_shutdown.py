"""SIGTERM on a gateway under load: every request it took is answered (in flight: the upstream's
answer; queued or arriving while it closes: 503 with retry-after), within the deadline."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter

import httpx

from tests.test_apim_e2e import MESSAGES, MODEL, Background, mock_and_gateway, wait_for

DEADLINE_S = 15


class Load:
    """Callers that keep sending, each request on a new connection, until told to stop or the
    gateway stops listening; every outcome is recorded."""

    def __init__(self, url: str, callers: int) -> None:
        self.url = url
        self.sent = 0
        self.outcomes: Counter[str] = Counter()
        self.bad: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(callers)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        payload = {"model": MODEL, "messages": MESSAGES, "max_tokens": 8}
        while not self._stop.is_set():
            try:
                response = httpx.post(f"{self.url}/v1/chat/completions", json=payload, timeout=60)
            except httpx.ConnectError:
                return  # the listener is closed: nothing was sent
            except httpx.HTTPError as exc:
                with self._lock:
                    self.sent += 1
                    self.outcomes["lost"] += 1
                    self.bad.append(repr(exc))
                return
            with self._lock:
                self.sent += 1
                self.outcomes[str(response.status_code)] += 1
                if response.status_code == 503:
                    ok = response.json()["error"]["code"] == "shutting_down" and int(
                        response.headers["retry-after"]
                    )
                    if not ok:
                        self.bad.append(response.text)
                elif response.status_code != 200:
                    self.bad.append(f"{response.status_code} {response.text[:200]}")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(90)
            assert not thread.is_alive(), "a caller never got an answer"


def test_sigterm_under_load_loses_nothing() -> None:
    with mock_and_gateway(
        {"TTFT_MS": "2000", "RPM_LIMIT": "100000"},
        RPM_LIMIT="100000",
        MAX_CONCURRENCY="4",
        SHUTDOWN_TIMEOUT_S=str(DEADLINE_S),
    ) as (upstream, gw):
        burst = [
            Background(
                lambda: httpx.post(
                    f"{gw.v1}/chat/completions",
                    json={"model": MODEL, "messages": MESSAGES, "max_tokens": 8},
                    timeout=60,
                )
            )
            for _ in range(16)
        ]
        load = Load(gw.url, callers=4)
        # Slow answers keep the burst queued for seconds: SIGTERM lands with a queue under any load.
        wait_for(
            lambda: (q := gw.status()["queue"])["in_flight"] == 4 and q["depth"] >= 8,
            timeout=30,
            what="a full set in flight and a queue",
        )
        upstream_before = upstream.status()["totals"]["requests"]
        assert upstream_before >= 4

        signalled = time.monotonic()
        gw.process.send_signal(signal.SIGTERM)
        assert gw.process.wait(DEADLINE_S + 10) in (0, -signal.SIGTERM)
        took = time.monotonic() - signalled
        load.stop()

        burst_answers = [call.join(30) for call in burst]
        outcomes = load.outcomes + Counter(str(a.status_code) for a in burst_answers)
        sent = load.sent + len(burst)
        assert load.bad == [], load.bad
        assert outcomes["lost"] == 0
        assert sum(outcomes.values()) == sent, "every request the gateway took got an answer"
        assert set(outcomes) <= {"200", "503"}, outcomes
        assert outcomes["503"] >= 1, "the queued were answered 503"
        for answer in burst_answers:
            if answer.status_code == 503:
                assert int(answer.headers["retry-after"]) >= 1
        # In-flight requests finished: every request the upstream took was answered 200.
        assert outcomes["200"] == upstream.status()["totals"]["requests"]
        assert took < DEADLINE_S + 5
