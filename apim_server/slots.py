"""A deployment's concurrency: how many requests may be out on its connection pool at once."""

from __future__ import annotations

from collections.abc import Callable


class Slots:
    """Counts the slots in use and wakes whoever waits for one when a slot frees."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0
        self._waiting: set[Callable[[], None]] = set()

    @property
    def free(self) -> int:
        return self.size - self.used

    def take(self) -> Slot:
        self.used += 1
        return Slot(self)

    def want(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` once, at the next release (a dispatcher waiting for a free slot)."""
        self._waiting.add(wake)

    def _give_back(self) -> None:
        self.used -= 1
        if self._waiting:
            waiting, self._waiting = self._waiting, set()
            for wake in waiting:
                wake()


class Slot:
    """One slot in use; ``release`` is idempotent, so every path may call it."""

    __slots__ = ("_slots",)

    def __init__(self, slots: Slots) -> None:
        self._slots: Slots | None = slots

    @property
    def held(self) -> bool:
        return self._slots is not None

    def release(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots._give_back()
