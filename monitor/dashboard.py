"""A snapshot of both services as one frame of the chosen view: pure functions, no I/O."""

from __future__ import annotations

from datetime import datetime

from rich.console import Group, RenderableType
from rich.text import Text

from monitor import readings
from monitor.client import Snapshot
from monitor.details import detail_panel
from monitor.history import History
from monitor.keys import HELP, View
from monitor.overview import gateway_panel, mock_panel


def views_available(snapshot: Snapshot) -> list[View]:
    """The views worth a key: tenants only when the gateway reports some."""
    status = snapshot.apim.status or {}
    return [v for v, _ in HELP if v is not View.TENANTS or readings.tenants(status)]


def help_line(view: View, available: list[View]) -> Text:
    text = Text("keys ", style="dim")
    for shown, key in HELP:
        if shown not in available:
            continue
        style = "bold reverse" if shown is view else "bold"
        text.append(f" {key} ", style=style)
        text.append(f"{shown.value} ", style="dim")
    text.append(" q ", style="bold")
    text.append("quit", style="dim")
    return text


def render(
    snapshot: Snapshot,
    history: History | None = None,
    interval: float | None = None,
    view: View = View.OVERVIEW,
    keys: bool = False,
) -> RenderableType:
    """The whole frame for one snapshot. ``interval`` is shown when the frame refreshes; ``keys``
    says whether key presses reach the dashboard (a help line then says which)."""
    when = datetime.fromtimestamp(snapshot.taken_at).strftime("%Y-%m-%d %H:%M:%S")
    header = Text("apim-monitor", style="bold")
    header.append(f"  {when}", style="dim")
    if interval is not None:
        header.append(f"  every {interval:g}s", style="dim")
        if not keys:
            header.append("  Ctrl-C quits", style="dim")
    parts: list[RenderableType] = [header]
    if view is View.OVERVIEW:
        parts.append(mock_panel(snapshot.mock, interval))
        parts.append(gateway_panel(snapshot.apim, history, snapshot.taken_at, interval))
    else:
        parts.append(detail_panel(snapshot.apim, view, interval))
    if keys:
        parts.append(help_line(view, views_available(snapshot)))
    return Group(*parts)
