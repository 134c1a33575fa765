"""The lighter event and pipeline that serving.connections puts in uvicorn's connections behave
as the asyncio.Event and deque they replace, and uvicorn's flow control drains with the event."""

from __future__ import annotations

import asyncio
from collections import deque

import pytest
from uvicorn.protocols.http.flow_control import FlowControl

from serving.lean_objects import LeanEvent, LeanPipeline


async def test_an_event_wakes_every_waiter_once_set_and_a_set_event_does_not_wait() -> None:
    event = LeanEvent()
    waiters = [asyncio.create_task(event.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    event.set()
    assert await asyncio.wait_for(asyncio.gather(*waiters), 1) == [True, True, True]
    assert event.is_set()
    assert await asyncio.wait_for(event.wait(), 0.1)
    event.clear()
    again = asyncio.create_task(event.wait())
    await asyncio.sleep(0.01)
    assert not again.done(), "a cleared event waits again"
    event.set()
    assert await asyncio.wait_for(again, 1)


async def test_a_cancelled_waiter_leaves_and_the_others_still_wake() -> None:
    event = LeanEvent()
    gone, stays = asyncio.create_task(event.wait()), asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    event.set()
    assert await asyncio.wait_for(stays, 1)


def test_the_pipeline_takes_requests_in_the_order_a_deque_would() -> None:
    ours, theirs = LeanPipeline(), deque[int]()
    for step in (1, 2, "pop", 3, "pop", 4, 5, "pop", "pop", "pop"):
        if step == "pop":
            assert ours.pop() == theirs.pop()
        else:
            ours.appendleft(step)
            theirs.appendleft(step)
        assert bool(ours) == bool(theirs) and list(ours) == list(theirs)


class _Transport:
    def __init__(self) -> None:
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


async def test_uvicorns_flow_control_drains_with_the_event() -> None:
    flow = FlowControl(_Transport())  # type: ignore[arg-type]
    flow._is_writable_event = LeanEvent(True)  # type: ignore[assignment]  # as BoundedProtocol does
    await asyncio.wait_for(flow.drain(), 0.1)
    flow.pause_writing()
    drained = asyncio.create_task(flow.drain())
    await asyncio.sleep(0.01)
    assert not drained.done(), "a paused writer waits"
    flow.resume_writing()
    await asyncio.wait_for(drained, 0.1)
