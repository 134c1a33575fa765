"""The refresh loop: fetch, remember the admitted rate, render the chosen view; and the live
terminal view of it, with keys to switch views."""

from __future__ import annotations

import asyncio
import contextlib
import time

from rich.console import Console, RenderableType
from rich.live import Live

from monitor import readings
from monitor.client import Snapshot, StatusClient
from monitor.dashboard import render
from monitor.history import History
from monitor.keys import KEYS, QUIT, KeyReader, View


class Monitor:
    """Both services seen over time: each refresh fetches a snapshot and renders it."""

    def __init__(
        self, client: StatusClient, interval: float | None = None, view: View = View.OVERVIEW
    ) -> None:
        self.client = client
        self.interval = interval
        self.view = view
        self.keys = False  # whether key presses reach it
        self.history = History()
        self.snapshot: Snapshot | None = None

    async def refresh(self) -> RenderableType:
        snapshot = self.snapshot = await self.client.snapshot()
        status = snapshot.apim.status
        self.history.sample(snapshot.taken_at, None if status is None else readings.admitted_per_min(status))
        return self.render()

    def render(self) -> RenderableType:
        """The latest snapshot in the current view (a key press redraws without fetching)."""
        assert self.snapshot is not None
        return render(self.snapshot, self.history, self.interval, self.view, self.keys)

    def press(self, key: str) -> bool:
        """Switch view for ``key``; whether the frame changed."""
        view = KEYS.get(key.lower())
        if view is None or view is self.view:
            return False
        self.view = view
        return True


async def run_live(monitor: Monitor, console: Console, interval: float) -> None:
    """Redraw in place every ``interval`` seconds, and at once on a key, until ``q`` or Ctrl-C."""
    pressed = asyncio.Event()
    quitting = False

    def on_key(key: str) -> None:
        nonlocal quitting
        if key in QUIT:
            quitting = True
            pressed.set()
        elif monitor.press(key):
            pressed.set()

    with KeyReader(on_key) as keys, Live(console=console, auto_refresh=False, redirect_stdout=False) as live:
        monitor.keys = keys.active
        while not quitting:
            started = time.monotonic()
            live.update(await monitor.refresh(), refresh=True)
            while not quitting and (left := interval - (time.monotonic() - started)) > 0:
                pressed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(pressed.wait(), left)
                if not quitting and pressed.is_set():
                    live.update(monitor.render(), refresh=True)
