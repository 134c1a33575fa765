"""/readyz stays ready while the gateway is busy: its upstream probe has a connection of its own
and never waits for a slot of the forwarding pool."""

from __future__ import annotations

import httpx

from tests.test_apim_e2e import Background, chat, mock_and_gateway, wait_for


def test_readyz_is_200_while_every_forwarding_slot_is_taken() -> None:
    with mock_and_gateway(
        {"ADMIN": "true", "FAULT_SLOW_MS": "4000"}, MAX_CONCURRENCY="1", UPSTREAM_TIMEOUT_S="30"
    ) as (_upstream, gw):
        slow = Background(lambda: chat(gw, headers={"x-mock-fault": "slow"}))
        wait_for(lambda: gw.status()["queue"]["in_flight"] == 1, what="the one slot taken")
        # The first /readyz of this gateway: nothing cached, the probe runs while the slot is held.
        ready = httpx.get(f"{gw.url}/readyz", timeout=10)
        assert gw.status()["queue"]["in_flight"] == 1, "the slow request ended before the probe"
        assert ready.status_code == 200, ready.text
        assert ready.json()["upstream"] is True
        assert slow.join().status_code == 200
