"""Lighter stand-ins for the event and the deque uvicorn keeps per connection.

A service holding tens of thousands of waiting requests holds as many connections; uvicorn gives
each an ``asyncio.Event`` for its flow control, another for the request being read and a
``deque`` for pipelined requests. An empty ``deque`` allocates a block of 64 slots (about 630
bytes, twice over in each ``Event``): together about 2 KB of each waiting request's memory for
what is almost always one waiter or none.
"""

from __future__ import annotations

import asyncio
from typing import Any


class LeanEvent:
    """``asyncio.Event``'s ``set``, ``clear``, ``is_set`` and ``wait``; its waiters' list is only
    made when someone waits on it while it is clear."""

    __slots__ = ("_value", "_waiters")

    def __init__(self, value: bool = False) -> None:
        self._value = value
        self._waiters: list[asyncio.Future[bool]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(True)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = [waiter]
        else:
            self._waiters.append(waiter)
        try:
            return await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


class LeanPipeline(list[Any]):
    """The ``deque`` operations uvicorn uses on its pipeline of requests (``appendleft``, ``pop``
    from the right), on a list: pipelines hold a request or two."""

    __slots__ = ()

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)
