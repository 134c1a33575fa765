"""Rendering a snapshot of both services as rich renderables: pure functions, no I/O."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from monitor import readings
from monitor.client import ServiceStatus, Snapshot
from monitor.history import RateHistory, sparkline
from monitor.readings import LimitReading

BAR_WIDTH = 32
BAR_MIN = 8
SPARK_WIDTH = 60
SPARK_MIN = 10
DASH = "-"
TITLES = {"mock": "LLM mock", "apim": "Gateway"}
# What each service calls itself in /status: a mismatch means the URLs are swapped.
EXPECTED = {"mock": "llm-mock", "apim": "apim"}


def format_count(value: float | None) -> str:
    if value is None:
        return DASH
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.1f}"


def format_duration(value: float | None) -> str:
    """Seconds as ``41.2s``, ``6m05s`` or ``5h12m``; tenths below a minute, where they matter."""
    if value is None:
        return DASH
    if value < 60:
        return f"{value:.1f}s"
    whole = round(value)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def format_span(value: float) -> str:
    """A history span: whole minutes as ``5m``."""
    return f"{value / 60:g}m" if value >= 60 and value % 60 == 0 else format_duration(value)


def format_ms(value_s: float | None) -> str:
    """Short waits read best in milliseconds."""
    if value_s is None:
        return DASH
    return f"{value_s * 1000:.0f}ms" if value_s < 1 else format_duration(value_s)


def level_style(fraction: float) -> str:
    if fraction >= 0.9:
        return "red"
    if fraction >= 0.75:
        return "yellow"
    return "green"


def bar(fraction: float, width: int = BAR_WIDTH) -> Text:
    """A bar of full and light blocks; over 100% (an excess charged after the answer) stays full."""
    filled = round(min(max(fraction, 0.0), 1.0) * width)
    if fraction > 0 and filled == 0:
        filled = 1  # any use at all shows
    text = Text()
    text.append("█" * filled, style=level_style(fraction))
    text.append("░" * (width - filled), style="bright_black")
    return text


class Bar:
    """A usage bar as wide as its table column allows (up to ``BAR_WIDTH``), so narrow terminals fit."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(BAR_MIN, BAR_WIDTH).clamp(max_width=options.max_width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield bar(self.fraction, max(1, min(BAR_WIDTH, options.max_width)))


def limits_table(items: list[LimitReading]) -> Table:
    table = Table(box=None, pad_edge=False, expand=False, show_edge=False)
    # Only the bar column gives way on a narrow terminal: the figures never wrap.
    table.add_column("Limit", style="bold", no_wrap=True)
    table.add_column("Usage")
    table.add_column("Used / Limit", justify="right", no_wrap=True)
    table.add_column("%", justify="right", no_wrap=True)
    table.add_column("Left", justify="right", no_wrap=True)
    table.add_column("Resets in", justify="right", no_wrap=True)
    for item in items:
        name = item.name.upper()
        if item.unlimited:
            table.add_row(name, Text("no limit", style="dim"), f"{format_count(item.used)} / -", "", "", "")
            continue
        reset = format_duration(item.reset_s) if item.used else DASH
        table.add_row(
            name,
            Bar(item.fraction),
            f"{format_count(item.used)} / {format_count(item.limit)}",
            Text(f"{item.fraction * 100:.1f}%", style=level_style(item.fraction)),
            format_count(item.remaining),
            reset,
        )
    return table


def budgets_table(rows: list[readings.BudgetReading]) -> Table:
    """One line per budget (deployment, model): a bar for its binding limit, its pool's queue."""
    table = Table(box=None, pad_edge=False, expand=False, show_edge=False)
    table.add_column("Deployment", style="bold", no_wrap=True)
    table.add_column("Model", no_wrap=True)
    table.add_column("Limit", no_wrap=True)
    table.add_column("Usage")
    table.add_column("Used / Limit", justify="right", no_wrap=True)
    table.add_column("%", justify="right", no_wrap=True)
    table.add_column("Queue", justify="right", no_wrap=True)
    table.add_column("State", no_wrap=True)
    for row in rows:
        state = Text(row.state, style={"in": "green", "cooling": "yellow"}.get(row.state, "bold red"))
        if row.paused_s > 0 and row.state == "in":
            state = Text(f"paused {format_duration(row.paused_s)}", style="yellow")
        b = row.binding
        if b is None:
            table.add_row(row.deployment, row.model, DASH, Text("no limit", style="dim"), "", "", "", state)
            continue
        table.add_row(
            row.deployment,
            row.model,
            b.name.upper(),
            Bar(b.fraction),
            f"{format_count(b.used)} / {format_count(b.limit)}",
            Text(f"{b.fraction * 100:.1f}%", style=level_style(b.fraction)),
            format_count(row.depth),
            state,
        )
    return table


def figures(pairs: list[tuple[str, str]]) -> Text:
    """``label value`` pairs on one line, labels dim."""
    text = Text()
    for i, (label, value) in enumerate(pairs):
        if i:
            text.append("  ")
        text.append(f"{label} ", style="dim")
        text.append(value, style="bold")
    return text


def mock_totals_line(status: dict[str, Any]) -> Text:
    totals = readings.totals(status)
    return figures(
        [
            ("requests", format_count(totals.requests)),
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


def gateway_lines(status: dict[str, Any]) -> list[Text]:
    q = readings.queue(status)
    totals = readings.totals(status)
    lines = [
        figures(
            [
                ("queue depth", summed(q.cluster_depth, q.depth, q.clustered)),
                ("in flight", summed(q.cluster_in_flight, q.in_flight, q.clustered)),
                # An empty queue has no oldest request, whatever the field says.
                ("oldest wait", format_ms(q.oldest_wait_s) if q.depth else DASH),
                ("queue wait p50", format_ms(q.wait_p50_s)),
                ("p99", format_ms(q.wait_p99_s)),
            ]
        ),
        figures(
            [
                ("requests", format_count(totals.requests)),
                ("admitted/min", format_count(q.admitted_per_min)),
                ("answered 429", format_count(totals.rate_limited)),
                ("upstream 429s", format_count(q.upstream_429)),
                ("errors", format_count(totals.errors)),
            ]
        ),
    ]
    if q.paused_s:
        lines.append(
            Text(f"admission paused for {format_duration(q.paused_s)} (the upstream said so)", "yellow")
        )
    return lines


class RateLine:
    """The admitted rate over the history's span as a sparkline that fits the line it is on."""

    def __init__(self, history: RateHistory, now: float) -> None:
        self.history = history
        self.now = now

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        history = self.history
        span = history.span_s
        text = Text(f"admitted/min, last {format_span(span)} ", style="dim")
        if not any(r is not None for r in history.rates()):
            text.append("(builds up while the monitor runs)", style="dim")
            yield text
            return
        # Measured with the widest figures, so the sparkline keeps its width as the figures change.
        summary = "  now {}, peak {}"
        room = options.max_width - len(text) - len(summary.format("99,999", "99,999"))
        width = max(SPARK_MIN, min(SPARK_WIDTH, room))
        buckets = history.buckets(width, span / width, self.now)
        known = [b for b in buckets if b is not None]
        now = format_count(round(known[-1])) if known else DASH
        text.append(sparkline(buckets, width).ljust(width), style="cyan")
        text.append(summary.format(now, format_count(round(max(known, default=0.0)))), style="dim")
        yield text


def service_title(service: ServiceStatus) -> Text:
    title = Text(f" {TITLES.get(service.name, service.name)} ", style="bold")
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


def service_panel(
    service: ServiceStatus,
    history: RateHistory | None = None,
    now: float = 0.0,
    interval: float | None = None,
) -> Panel:
    if not service.up:
        retry = f"; retrying every {interval:g}s" if interval is not None else ""
        body: RenderableType = Text.assemble(
            ("DOWN: ", "bold red"),
            (service.error or "no answer", "red"),
            (f"  ({service.url.rstrip('/')}/status{retry})", "dim"),
        )
        return Panel(body, title=service_title(service), title_align="left", border_style="red")
    status = service.status or {}
    parts: list[RenderableType] = []
    items = readings.limits(status)
    problem = readings.limits_error(status)
    many = readings.budgets(status) if service.name == "apim" else []
    if len(many) > 1:
        parts.append(budgets_table(many))
    elif items:
        parts.append(limits_table(items))
    elif problem:
        parts.append(Text(f"limits unknown: {problem}", style="bold red"))
    else:
        parts.append(Text("no limits reported", style="dim"))
    if service.name == "apim":
        parts.extend(gateway_lines(status))
        if history is not None:  # a single frame (--once) has no history to show
            parts.append(RateLine(history, now))
    else:
        parts.append(mock_totals_line(status))
    return Panel(Group(*parts), title=service_title(service), title_align="left", border_style="green")


def render(
    snapshot: Snapshot, history: RateHistory | None = None, interval: float | None = None
) -> RenderableType:
    """The whole dashboard for one snapshot; ``interval`` is shown when the view refreshes."""
    when = datetime.fromtimestamp(snapshot.taken_at).strftime("%Y-%m-%d %H:%M:%S")
    header = Text("apim-monitor", style="bold")
    header.append(f"  {when}", style="dim")
    if interval is not None:
        header.append(f"  every {interval:g}s  Ctrl-C quits", style="dim")
    return Group(
        header,
        service_panel(snapshot.mock, interval=interval),
        service_panel(snapshot.apim, history, snapshot.taken_at, interval),
    )
