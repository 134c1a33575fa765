"""``x-ratelimit-*`` and ``retry-after`` headers, with OpenAI's Go-style durations."""

from __future__ import annotations

import math

from ratelimit.limits import Decision, LimitState


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
