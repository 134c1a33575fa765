"""Rendering a snapshot of both services as rich renderables: pure functions, no I/O."""

from __future__ import annotations

from datetime import datetime

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from monitor import readings
from monitor.client import ServiceStatus, Snapshot
from monitor.history import RateHistory, sparkline
from monitor.readings import LimitReading

BAR_WIDTH = 32
SPARK_WIDTH = 60
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


def limits_table(items: list[LimitReading]) -> Table:
    table = Table(box=None, pad_edge=False, expand=False, show_edge=False)
    table.add_column("Limit", style="bold")
    table.add_column("Usage", no_wrap=True)
    table.add_column("Used / Limit", justify="right", no_wrap=True)
    table.add_column("%", justify="right")
    table.add_column("Remaining", justify="right")
    table.add_column("Resets in", justify="right")
    for item in items:
        name = item.name.upper()
        if item.unlimited:
            table.add_row(name, Text("no limit", style="dim"), f"{format_count(item.used)} / -", "", "", "")
            continue
        reset = format_duration(item.reset_s) if item.used else DASH
        table.add_row(
            name,
            bar(item.fraction),
            f"{format_count(item.used)} / {format_count(item.limit)}",
            Text(f"{item.fraction * 100:.1f}%", style=level_style(item.fraction)),
            format_count(item.remaining),
            reset,
        )
    return table


def figures(pairs: list[tuple[str, str]]) -> Text:
    """``label value`` pairs on one line, labels dim."""
    text = Text()
    for i, (label, value) in enumerate(pairs):
        if i:
            text.append("   ")
        text.append(f"{label} ", style="dim")
        text.append(value, style="bold")
    return text


def totals_line(status: dict) -> Text:
    totals = readings.totals(status)
    return figures(
        [
            ("requests", format_count(totals.requests)),
            ("rate-limited (429)", format_count(totals.rate_limited)),
            ("errors", format_count(totals.errors)),
        ]
    )


def queue_lines(status: dict) -> list[Text]:
    q = readings.queue(status)
    lines = []
    if q.clustered:
        lines.append(
            figures(
                [
                    ("cluster", f"{format_count(q.instances)} instances on one Redis"),
                    ("queue depth", format_count(q.cluster_depth)),
                    ("in flight", format_count(q.cluster_in_flight)),
                ]
            )
        )
        lines.append(
            figures(
                [
                    ("this instance: queue depth", format_count(q.depth)),
                    ("in flight", format_count(q.in_flight)),
                    ("oldest wait", format_ms(q.oldest_wait_s)),
                ]
            )
        )
    else:
        lines.append(
            figures(
                [
                    ("queue depth", format_count(q.depth)),
                    ("in flight", format_count(q.in_flight)),
                    ("oldest wait", format_ms(q.oldest_wait_s)),
                ]
            )
        )
    lines.append(
        figures(
            [
                ("queue wait p50", format_ms(q.wait_p50_s)),
                ("p99", format_ms(q.wait_p99_s)),
                ("admitted/min", format_count(q.admitted_per_min)),
                ("upstream 429s", format_count(q.upstream_429)),
                ("errors", format_count(q.errors)),
            ]
        )
    )
    return lines


def sparkline_line(history: RateHistory | None, now: float, width: int = SPARK_WIDTH) -> Text:
    """The admitted rate over the history's span, one block per ``span / width`` seconds."""
    text = Text("admitted/min history ", style="dim")
    rates = [r for r in history.rates() if r is not None] if history else []
    if history is None or not rates:
        text.append("(history builds up while the monitor runs)", style="dim")
        return text
    buckets = history.buckets(width, history.span_s / width, now)
    text.append(sparkline(buckets, width).ljust(width), style="cyan")
    peak = max((b for b in buckets if b is not None), default=0.0)
    text.append(
        f"  last {format_duration(history.span_s)}: now {format_count(round(rates[-1]))}, "
        f"peak {format_count(round(peak))}",
        style="dim",
    )
    return text


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
    store = status.get("store")
    if store:
        title.append(f" {store} store", style="dim")
    if service.latency_ms is not None:
        title.append(f" {service.latency_ms:.0f}ms", style="dim")
    return title + Text(" ")


def service_panel(
    service: ServiceStatus,
    history: RateHistory | None = None,
    now: float = 0.0,
    interval: float | None = None,
) -> Panel:
    if not service.up:
        retry = f"; retrying every {format_duration(interval)}" if interval is not None else ""
        body: RenderableType = Text.assemble(
            ("DOWN: ", "bold red"),
            (service.error or "no answer", "red"),
            (f"  ({service.url.rstrip('/')}/status{retry})", "dim"),
        )
        return Panel(body, title=service_title(service), title_align="left", border_style="red")
    status = service.status or {}
    parts: list[RenderableType] = []
    items = readings.limits(status)
    parts.append(limits_table(items) if items else Text("no limits reported", style="dim"))
    parts.append(totals_line(status))
    if service.name == "apim" or "queue" in status:
        parts.extend(queue_lines(status))
        parts.append(sparkline_line(history, now))
    return Panel(Group(*parts), title=service_title(service), title_align="left", border_style="green")


def render(
    snapshot: Snapshot, history: RateHistory | None = None, interval: float | None = None
) -> RenderableType:
    """The whole dashboard for one snapshot; ``interval`` is shown when the view refreshes."""
    when = datetime.fromtimestamp(snapshot.taken_at).strftime("%Y-%m-%d %H:%M:%S")
    header = Text("apim-monitor", style="bold")
    header.append(f"  {when}", style="dim")
    if interval is not None:
        header.append(f"  refresh {format_duration(interval)}  Ctrl-C quits", style="dim")
    return Group(
        header,
        service_panel(snapshot.mock, interval=interval),
        service_panel(snapshot.apim, history, snapshot.taken_at, interval),
    )
