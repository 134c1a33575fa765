"""What every view's panels share: a service's title line, its DOWN panel, tables of limits."""

from __future__ import annotations

from rich.console import RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from monitor import readings
from monitor.client import ServiceStatus
from monitor.format import DASH, Bar, format_count, format_duration, level_style
from monitor.readings import LimitReading

TITLES = {"mock": "LLM mock", "apim": "Gateway"}
# What each service calls itself in /status: a mismatch means the URLs are swapped.
EXPECTED = {"mock": "llm-mock", "apim": "apim"}
NAME_WIDTH = 18
"""Deployment, model and tenant names are cut (with an ellipsis) past this, so a row fits 80 columns."""


def cut(name: str, width: int = NAME_WIDTH) -> str:
    """``name``, or its start and an ellipsis when longer than ``width``."""
    return name if len(name) <= width else name[: width - 1] + "…"


def service_title(service: ServiceStatus, view: str | None = None) -> Text:
    title = Text(f" {TITLES.get(service.name, service.name)} ", style="bold")
    if view:
        title.append(f"{view} ", style="bold cyan")
    title.append(f"{service.url} ", style="dim")
    if not service.up:
        title.append(" DOWN ", style="bold white on red")
        return title + Text(" ")
    title.append(" UP ", style="bold black on green")
    status = service.status or {}
    reported = status.get("service")
    if reported and reported != EXPECTED.get(service.name, reported):
        title.append(f" answers as {reported!r}", style="bold yellow")
    if status.get("closing") is True:
        title.append(" shutting down", style="bold yellow")
    notes = []
    if status.get("store"):
        notes.append(f"{status['store']} store")
    if isinstance(status.get("api_key"), str):
        notes.append(f"key {status['api_key']}")
    instances = readings.number(status, "cluster.instances")
    if instances is not None and instances > 1:
        notes.append(f"{format_count(instances)} instances sharing the budget")
    if service.latency_ms is not None:
        notes.append(f"{service.latency_ms:.0f}ms")
    if notes:
        title.append(" " + " · ".join(notes), style="dim")
    return title + Text(" ")


def down_panel(service: ServiceStatus, interval: float | None, view: str | None = None) -> Panel:
    retry = f"; retrying every {interval:g}s" if interval is not None else ""
    body = Text.assemble(
        ("DOWN: ", "bold red"),
        (service.error or "no answer", "red"),
        (f"  ({service.url.rstrip('/')}/status{retry})", "dim"),
    )
    return Panel(body, title=service_title(service, view), title_align="left", border_style="red")


LIMIT_COLUMNS = ("Limit", "Usage", "Used / Limit", "%", "Left", "Resets in")


def limit_cells(item: LimitReading) -> tuple[RenderableType, ...]:
    """One limit's row: its name, a bar, used / limit, percent, left, and when it resets."""
    name = item.name.upper()
    if item.unlimited:
        return name, Text("no limit", style="dim"), f"{format_count(item.used)} / -", "", "", ""
    return (
        name,
        Bar(item.fraction),
        f"{format_count(item.used)} / {format_count(item.limit)}",
        Text(f"{item.fraction * 100:.1f}%", style=level_style(item.fraction)),
        format_count(item.remaining),
        format_duration(item.reset_s) if item.used else DASH,
    )


def limits_table(
    items: list[LimitReading], show_header: bool = True, widths: list[int] | None = None
) -> Table:
    """A row per limit. ``widths`` (each column's least width) lines up several such tables."""
    table = Table(box=None, pad_edge=False, expand=False, show_edge=False, show_header=show_header)
    for i, header in enumerate(LIMIT_COLUMNS):
        # Only the bar column gives way on a narrow terminal: the figures never wrap.
        table.add_column(
            header,
            style="bold" if i == 0 else None,
            justify="left" if i < 2 else "right",
            no_wrap=i != 1,
            min_width=widths[i] if widths and i != 1 else None,
        )
    for item in items:
        table.add_row(*limit_cells(item))
    return table


def cell_widths(rows: list[list[LimitReading]]) -> list[int]:
    """The widest text of each limits-table column over several tables, headers included."""
    widths = [len(h) for h in LIMIT_COLUMNS]
    for items in rows:
        for item in items:
            for i, cell in enumerate(limit_cells(item)):
                if isinstance(cell, str | Text):
                    widths[i] = max(widths[i], len(cell))
    return widths


def state_text(row: readings.BudgetReading) -> Text:
    """A deployment's state as a word: in, cooling, out; or paused when the upstream said so."""
    if row.paused_s > 0 and row.state == "in":
        return Text(f"paused {format_duration(row.paused_s)}", style="yellow")
    return Text(row.state, style={"in": "green", "cooling": "yellow"}.get(row.state, "bold red"))


def budgets_table(rows: list[readings.BudgetReading]) -> Table:
    """One line per budget (deployment, model): a bar for its binding limit, its pool's queue."""
    table = Table(box=None, pad_edge=False, expand=False, show_edge=False)
    table.add_column("Deployment", style="bold", no_wrap=True, overflow="ellipsis", max_width=NAME_WIDTH)
    table.add_column("Model", no_wrap=True, overflow="ellipsis", max_width=NAME_WIDTH)
    table.add_column("Limit", no_wrap=True)
    table.add_column("Usage")
    table.add_column("Used / Limit", justify="right", no_wrap=True)
    table.add_column("%", justify="right", no_wrap=True)
    table.add_column("Queue", justify="right", no_wrap=True)
    table.add_column("State", no_wrap=True)
    for row in rows:
        b = row.binding
        if b is None:
            usage = Text("no limit" if row.error is None else "unknown", style="dim")
            table.add_row(
                row.deployment, row.model, DASH, usage, "", "", format_count(row.depth), state_text(row)
            )
            continue
        table.add_row(
            row.deployment,
            row.model,
            b.name.upper(),
            Bar(b.fraction),
            f"{format_count(b.used)} / {format_count(b.limit)}",
            Text(f"{b.fraction * 100:.1f}%", style=level_style(b.fraction)),
            format_count(row.depth),
            state_text(row),
        )
    return table
