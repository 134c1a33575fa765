"""The gateway seen per budget and per tenant: the views behind the ``b`` and ``t`` keys."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from monitor import readings
from monitor.client import ServiceStatus
from monitor.format import DASH, format_count, format_ms, format_percent
from monitor.keys import View
from monitor.panels import (
    NAME_WIDTH,
    cell_widths,
    cut,
    down_panel,
    limits_table,
    service_title,
    state_text,
)


def budget_heading(row: readings.BudgetReading) -> Text:
    text = Text()
    text.append(f"{cut(row.deployment)} / {cut(row.model)}", style="bold")
    text.append("  ")
    text.append_text(state_text(row))
    if row.reason and row.state != "in":
        text.append(f" ({cut(row.reason, 16)})", style="dim")
    text.append("  queue ", style="dim")
    text.append(format_count(row.depth), style="bold")
    if row.depth:
        text.append("  oldest ", style="dim")
        text.append(format_ms(row.oldest_wait_s), style="bold")
    return text


def budgets_body(status: dict) -> RenderableType:
    """Every budget with all its limits; the queue is its model's, which its pool's members share."""
    rows = readings.budgets(status)
    if not rows:
        return Text("this gateway reports no budgets", style="dim")
    parts: list[RenderableType] = []
    widths = cell_widths([row.limits for row in rows])  # every budget's columns line up
    for i, row in enumerate(rows):
        parts.append(budget_heading(row))
        if row.limits:
            parts.append(Padding(limits_table(row.limits, i == 0, widths), (0, 0, 0, 2)))
        else:
            parts.append(Text(f"  limits unknown: {row.error or 'not reported'}", style="red"))
    return Group(*parts)


def tenants_table(rows: list[readings.TenantReading]) -> Table:
    table = Table(box=None, pad_edge=False, expand=False, show_edge=False, header_style="dim")
    # On a narrow terminal only the names give way (cut with an ellipsis); the figures never do.
    table.add_column("Tenant", style="bold", max_width=NAME_WIDTH + 6)
    table.add_column("Weight", justify="right", no_wrap=True)
    table.add_column("Waiting\nnow", justify="right", no_wrap=True)
    table.add_column("Admitted\nper min", justify="right", no_wrap=True)
    table.add_column("Wait\np50", justify="right", no_wrap=True)
    table.add_column("Wait\np99", justify="right", no_wrap=True)
    for row in rows:
        table.add_row(
            Text(row.name, no_wrap=True, overflow="ellipsis"),
            format_count(row.weight),
            format_count(row.queued),
            format_count(row.admitted_per_min),
            format_ms(row.wait_p50_s),
            format_ms(row.wait_p99_s),
        )
    return table


def shares_table(rows: list[readings.TenantReading]) -> Table | None:
    """Tenants by budgets: each tenant's share of each budget (``deployment/model`` as a two-line
    header), a table of its own so that many budgets never squeeze the figures above."""
    budgets = list(dict.fromkeys(name for row in rows for name in row.share))
    if not budgets:
        return None
    table = Table(box=None, pad_edge=False, expand=False, show_edge=False, header_style="dim")
    table.add_column("Share of\neach budget", style="bold", max_width=NAME_WIDTH + 6)
    for name in budgets:
        deployment, _, model = name.partition("/")
        header = Text(f"{deployment}\n{model}" if model else name, no_wrap=True, overflow="ellipsis")
        table.add_column(header, justify="right", max_width=NAME_WIDTH)
    for row in rows:
        cells = [format_percent(row.share[name]) if name in row.share else DASH for name in budgets]
        table.add_row(Text(row.name, no_wrap=True, overflow="ellipsis"), *cells)
    return table


def tenants_body(status: dict) -> RenderableType:
    rows = readings.tenants(status)
    if not rows:
        return Text("this gateway reports no tenants (they are set in its configuration file)", style="dim")
    shares = shares_table(rows)
    return tenants_table(rows) if shares is None else Group(tenants_table(rows), Text(""), shares)


def detail_panel(service: ServiceStatus, view: View, interval: float | None) -> Panel:
    if not service.up:
        return down_panel(service, interval, view.value)
    status = service.status or {}
    body = budgets_body(status) if view is View.BUDGETS else tenants_body(status)
    return Panel(body, title=service_title(service, view.value), title_align="left", border_style="green")
