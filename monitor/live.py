"""The refresh loop: fetch, remember the admitted rate, render; and the live terminal view of it."""

from __future__ import annotations

import asyncio
import time

from rich.console import Console, RenderableType
from rich.live import Live

from monitor import readings
from monitor.client import StatusClient
from monitor.dashboard import render
from monitor.history import RateHistory


class Monitor:
    """Both services seen over time: each refresh fetches a snapshot and renders it."""

    def __init__(self, client: StatusClient, interval: float | None = None) -> None:
        self.client = client
        self.interval = interval
        self.history = RateHistory()

    async def refresh(self) -> RenderableType:
        snapshot = await self.client.snapshot()
        status = snapshot.apim.status
        if status is None:
            self.history.sample(snapshot.taken_at, None)
        else:
            counter = readings.admitted_total(status)
            self.history.sample(snapshot.taken_at, counter, readings.counter_source(status))
        return render(snapshot, self.history, self.interval)


async def run_live(monitor: Monitor, console: Console, interval: float) -> None:
    """Redraw in place every ``interval`` seconds until cancelled (Ctrl-C)."""
    with Live(console=console, auto_refresh=False, redirect_stdout=False) as live:
        while True:
            started = time.monotonic()
            live.update(await monitor.refresh(), refresh=True)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
