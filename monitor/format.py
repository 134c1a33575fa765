"""How figures read on screen: counts, durations, shares, usage bars, ``label value`` lines."""

from __future__ import annotations

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.text import Text

BAR_WIDTH = 32
BAR_MIN = 8
DASH = "-"


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


def format_percent(fraction: float | None) -> str:
    return DASH if fraction is None else f"{fraction * 100:.1f}%"


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


def labelled(pairs: list[tuple[str, str]], lead: str = "") -> Text:
    """``label value`` pairs on one line, labels dim, after an optional bold ``lead``."""
    text = Text()
    if lead:
        text.append(lead, style="bold")
    for i, (label, value) in enumerate(pairs):
        if i or lead:
            text.append("  ")
        if label:
            text.append(f"{label} ", style="dim")
        text.append(value, style="bold")
    return text
