"""The overview: both services' limits, and the gateway's requests, queue and admissions.

Every figure says the span it covers: counts since start, rates per minute over the last 60 s,
queue waits over the requests answered in the last 60 s and those still waiting.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from monitor import readings
from monitor.client import ServiceStatus
from monitor.format import DASH, format_count, format_duration, format_ms, format_span, labelled
from monitor.history import History, sparkline
from monitor.panels import budgets_table, down_panel, limits_table, service_title

SPARK_WIDTH = 60
SPARK_MIN = 10


def mock_line(status: dict[str, Any]) -> Text:
    totals = readings.totals(status)
    return labelled(
        [
            ("received", format_count(totals.requests)),
            ("ok", format_count(totals.ok)),
            ("rate-limited (429)", format_count(totals.rate_limited)),
            ("errors", format_count(totals.errors)),
        ]
    )


def summed(total: float | None, here: float | None, clustered: bool) -> str:
    """A cluster-wide figure with this instance's share, or just this instance's."""
    if not clustered:
        return format_count(here)
    return f"{format_count(total)} ({format_count(here)} here)"


def flow_table(flow: readings.Flow) -> Table:
    """Received, admitted and answered: counts since start, then per minute over the last 60 s."""
    table = Table(box=None, pad_edge=False, expand=False, show_edge=False, header_style="dim")
    table.add_column("requests", style="dim", no_wrap=True)
    for name in ("received", "admitted", "answered"):
        table.add_column(name, justify="right", no_wrap=True, style="bold")
    if flow.instances > 1:
        since = f"since start, {flow.instances} instances"
    else:
        since = f"since start ({format_duration(flow.uptime_s)} ago)"
    table.add_row(since, *map(format_count, (flow.received, flow.admitted, flow.answered)))
    table.add_row(
        "per minute, last 60 s",
        *map(format_count, (flow.received_per_min, flow.admitted_per_min, flow.answered_per_min)),
    )
    return table


def waits_line(waits: readings.Waits | None, clustered: bool) -> Text:
    """Queue-wait percentiles over the requests answered in the window and those still waiting
    (a request waiting for minutes counts, not only the lucky ones already answered)."""
    where = " (this instance)" if clustered else ""
    if waits is None:
        return labelled([("queue wait", DASH)])
    window = f"{waits.window_s:g} s"
    if not waits.answered and not waits.waiting:
        return labelled([("queue wait", DASH)]) + Text(
            f"  none answered in {window}, none waiting{where}", "dim"
        )
    line = labelled([("queue wait p50", format_ms(waits.p50_s)), ("p99", format_ms(waits.p99_s))])
    answered, waiting = format_count(waits.answered), format_count(waits.waiting)
    line.append(f"  of {answered} answered in {window} + {waiting} waiting{where}", style="dim")
    return line


def gateway_lines(status: dict[str, Any]) -> list[RenderableType]:
    q = readings.queue(status)
    lines: list[RenderableType] = [
        flow_table(readings.flow(status)),
        labelled(
            [
                ("waiting now", summed(q.cluster_depth, q.depth, q.clustered)),
                # An empty queue has no oldest request, whatever the field says.
                (
                    "oldest" + (" here" if q.clustered else ""),
                    format_ms(q.oldest_wait_s) if q.depth else DASH,
                ),
                ("in flight", summed(q.cluster_in_flight, q.in_flight, q.clustered)),
            ]
        ),
        waits_line(readings.waits(status), q.clustered),
        labelled(
            [
                ("answered 429", format_count(q.rate_limited)),
                ("answered 5xx", format_count(q.errors)),
                ("upstream 429s (requeued)", format_count(q.upstream_429)),
            ]
        ),
    ]
    if q.paused_s:
        lines.append(
            Text(f"admission paused for {format_duration(q.paused_s)} (the upstream said so)", "yellow")
        )
    return lines


class RateLine:
    """Admissions per minute over the history's span: each point counts the 60 s before it, the
    unit of the RPM limit, and the line's full block is that limit when there is one."""

    def __init__(self, history: History, now: float, ceiling: float | None) -> None:
        self.history = history
        self.now = now
        self.ceiling = ceiling

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        history = self.history
        span = history.span_s
        peak = history.peak()
        label = Text(f"admitted in the 60 s before each point, last {format_span(span)}", style="dim")
        if peak is None:
            yield label + Text(" (builds up while the monitor runs)", style="dim")
            return
        top = max(self.ceiling or 0.0, peak)
        if self.ceiling:
            label.append(f", full block = RPM {format_count(self.ceiling)}", style="dim")
        yield label
        # Measured with the widest figures, so the sparkline keeps its width as the figures change.
        summary = "  now {}  peak {}"
        room = options.max_width - len(summary.format("99,999", "99,999"))
        width = max(SPARK_MIN, min(SPARK_WIDTH, room))
        buckets = history.buckets(width, span / width, self.now)
        text = Text(sparkline(buckets, width, top).ljust(width), style="cyan")
        latest = history.latest()
        text.append(
            summary.format(
                DASH if latest is None else format_count(round(latest)), format_count(round(peak))
            ),
            style="dim",
        )
        yield text


def mock_panel(service: ServiceStatus, interval: float | None) -> Panel:
    if not service.up:
        return down_panel(service, interval)
    status = service.status or {}
    items = readings.limits(status)
    problem = readings.limits_error(status)
    if items:
        top: RenderableType = limits_table(items)
    elif problem:
        top = Text(f"limits unknown: {problem}", style="bold red")
    else:
        top = Text("no limits reported", style="dim")
    return Panel(
        Group(top, mock_line(status)), title=service_title(service), title_align="left", border_style="green"
    )


def gateway_panel(
    service: ServiceStatus, history: History | None, now: float, interval: float | None
) -> Panel:
    if not service.up:
        return down_panel(service, interval)
    status = service.status or {}
    parts: list[RenderableType] = []
    many = readings.budgets(status)
    items = readings.limits(status)
    problem = readings.limits_error(status)
    if len(many) > 1:
        parts.append(budgets_table(many))
    elif items:
        parts.append(limits_table(items))
    elif problem:
        parts.append(Text(f"limits unknown: {problem}", style="bold red"))
    else:
        parts.append(Text("no limits reported", style="dim"))
    parts.extend(gateway_lines(status))
    if history is not None:  # a single frame (--once) has no history to show
        parts.append(RateLine(history, now, readings.rpm_ceiling(status)))
    return Panel(Group(*parts), title=service_title(service), title_align="left", border_style="green")
