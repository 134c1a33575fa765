"""The pool's deadline buckets: every waiting request expires once, in deadline order, no more
than a bucket late, and never after it left."""

from __future__ import annotations

import asyncio
import time

from apim_server.expiry import BUCKET_S, Deadlines


class Waiter:
    def __init__(self, name: str, log: list[tuple[str, float]]) -> None:
        self.name = name
        self.log = log

    def expired(self) -> None:
        self.log.append((self.name, time.monotonic()))


async def test_expires_in_deadline_order_within_a_bucket() -> None:
    log: list[tuple[str, float]] = []
    deadlines = Deadlines()
    now = time.monotonic()
    due = {"late": now + 0.3, "early": now + 0.1, "middle": now + 0.2}
    for name, at in due.items():
        deadlines.add(Waiter(name, log), at)
    await asyncio.sleep(0.3 + 3 * BUCKET_S)
    assert [name for name, _ in log] == ["early", "middle", "late"]
    for name, at in log:
        assert due[name] <= at <= due[name] + BUCKET_S + 0.1  # never early
    assert len(deadlines) == 0


async def test_a_removed_waiter_never_expires_and_a_sooner_one_rearms() -> None:
    log: list[tuple[str, float]] = []
    deadlines = Deadlines()
    now = time.monotonic()
    gone = Waiter("gone", log)
    deadlines.add(gone, now + 0.1)
    deadlines.add(Waiter("later", log), now + 0.4)
    deadlines.remove(gone, now + 0.1)
    deadlines.add(Waiter("sooner", log), now + 0.05)  # before the armed timer's bucket
    await asyncio.sleep(0.2)
    assert [name for name, _ in log] == ["sooner"]
    await asyncio.sleep(0.3 + BUCKET_S)
    assert [name for name, _ in log] == ["sooner", "later"]
