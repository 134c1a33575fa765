"""``x-ratelimit-*`` and ``retry-after`` headers, with OpenAI's Go-style durations."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from ratelimit.limits import LIVE_CAP, Decision, LimitState

KINDS = ("requests", "tokens")


def go_duration(ms: int | float) -> str:
    """Milliseconds as OpenAI writes reset times: ``20ms``, ``1s``, ``1.5s``, ``6m0s``, ``1h2m3s``."""
    ms = max(0, math.ceil(ms))
    if ms == 0:
        return "0s"  # as Go writes a zero duration
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


def parse_go_duration(text: str) -> float:
    """Seconds in a Go-style duration (``6m0s``, ``20ms``, ``1.5s``); 0 if unparsable."""
    total, number = 0.0, ""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    i = 0
    text = text.strip()
    try:
        while i < len(text):
            ch = text[i]
            if ch.isdigit() or ch == ".":
                number += ch
                i += 1
                continue
            unit = text[i : i + 2] if text[i : i + 2] in units else ch
            total += float(number) * units[unit]
            number = ""
            i += len(unit)
        return total + (float(number) if number else 0.0)
    except (KeyError, ValueError):
        return 0.0


def _pair(decision: Decision, kind: str) -> LimitState:
    return decision.state(f"{kind}/minute")


def ratelimit_headers(decision: Decision) -> dict[str, str]:
    """The six ``x-ratelimit-*`` headers, for the per-minute window as OpenAI reports them."""
    headers: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        state = _pair(decision, kind)
        if not state.limit:
            continue
        headers[f"x-ratelimit-limit-{kind}"] = str(state.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(state.remaining)
        headers[f"x-ratelimit-reset-{kind}"] = go_duration(state.reset_ms)
    return headers


def retry_after_headers(wait_ms: int) -> dict[str, str]:
    return {"retry-after": str(max(1, math.ceil(wait_ms / 1000))), "retry-after-ms": str(max(0, wait_ms))}


@dataclass(frozen=True, slots=True)
class UpstreamFigures:
    """What an upstream's ``x-ratelimit-*`` headers say of one kind (requests or tokens) over its
    minute window; None for a header it did not send."""

    limit: int | None
    remaining: int | None
    reset: str | None  # as sent (a Go duration): read only when it matters (nothing remains)

    @property
    def reset_s(self) -> float | None:
        return None if self.reset is None else parse_go_duration(self.reset)


def _count(text: str | None, least: int) -> int | None:
    """A header's count if it is a plain integer from ``least`` to LIVE_CAP, else None."""
    if text is None:
        return None
    text = text.strip()
    if not text.isdigit() or not text.isascii():
        return None
    value = int(text)
    return value if least <= value <= LIVE_CAP else None


def _ratelimit_only(headers: Mapping[str, str]) -> dict[str, str]:
    """The ``x-ratelimit-*`` headers, found in one pass (httpx's ``Headers`` scans all of them
    for each lookup by name)."""
    raw = getattr(headers, "raw", None)
    if raw is not None:
        return {
            name.lower().decode("latin-1"): value.decode("latin-1")
            for name, value in raw
            if name[:12].lower() == b"x-ratelimit-"
        }
    return {name.lower(): value for name, value in headers.items() if name[:12].lower() == "x-ratelimit-"}


def read_ratelimit(headers: Mapping[str, str]) -> dict[str, UpstreamFigures]:
    """The figures of each kind an upstream reported, the inverse of ``ratelimit_headers``.

    OpenAI sends all six headers; Azure OpenAI only ``x-ratelimit-remaining-*``. A kind with any
    figure that is not a plain count is left out whole: a limit below 1 (0 would read as "no
    limit"; Azure has been seen sending -1 for both, https://github.com/openai/openai-dotnet/issues/838),
    a count past what the stores hold, or a remaining above its own limit (the pair contradicts
    itself).
    """
    found = _ratelimit_only(headers)
    out: dict[str, UpstreamFigures] = {}
    if not found:
        return out
    for kind in KINDS:
        limit_text = found.get(f"x-ratelimit-limit-{kind}")
        remaining_text = found.get(f"x-ratelimit-remaining-{kind}")
        if limit_text is None and remaining_text is None:
            continue
        limit = _count(limit_text, 1)
        remaining = _count(remaining_text, 0)
        if (limit is None and limit_text is not None) or (remaining is None and remaining_text is not None):
            continue
        if limit is not None and remaining is not None and remaining > limit:
            continue
        out[kind] = UpstreamFigures(limit, remaining, found.get(f"x-ratelimit-reset-{kind}"))
    return out
