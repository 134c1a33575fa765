"""What the dashboard shows, read tolerantly out of a ``/status`` body.

The services may add, rename or omit fields; a figure that is missing reads as ``None`` and
the dashboard shows a dash instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The spec's four limits first, in this order; any other limit (a sub-window) follows.
LIMIT_ORDER = ("rpm", "tpm", "rpd", "tpd")


def dig(data: Any, path: str) -> Any:
    """``data["a"]["b"]`` for ``"a.b"``, or ``None`` where a step is missing."""
    for key in path.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def number(data: Any, *paths: str) -> float | None:
    """The first of ``paths`` that holds a number."""
    for path in paths:
        value = dig(data, path)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
    return None


def seconds(data: Any, *paths: str) -> float | None:
    """The first of ``paths`` holding a duration; paths ending in ``_ms`` are milliseconds."""
    for path in paths:
        value = number(data, path)
        if value is not None:
            return value / 1000 if path.endswith("_ms") else value
    return None


@dataclass(frozen=True, slots=True)
class LimitReading:
    """One limit: ``limit`` 0 means no limit."""

    name: str
    limit: float
    used: float
    remaining: float | None
    reset_s: float | None

    @property
    def unlimited(self) -> bool:
        return not self.limit

    @property
    def fraction(self) -> float:
        return 0.0 if self.unlimited else self.used / self.limit


def limits(status: dict[str, Any]) -> list[LimitReading]:
    raw = status.get("limits")
    if not isinstance(raw, dict):
        return []
    names = [n for n in LIMIT_ORDER if n in raw] + [n for n in raw if n not in LIMIT_ORDER]
    out = []
    for name in names:
        entry = raw[name]
        if not isinstance(entry, dict):
            continue
        out.append(
            LimitReading(
                name=name,
                limit=number(entry, "limit") or 0,
                used=number(entry, "used") or 0,
                remaining=number(entry, "remaining"),
                reset_s=seconds(entry, "reset_s", "reset_ms"),
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class Totals:
    requests: float | None
    ok: float | None
    rate_limited: float | None
    errors: float | None


def totals(status: dict[str, Any]) -> Totals:
    return Totals(
        requests=number(status, "totals.requests"),
        ok=number(status, "totals.ok"),
        rate_limited=number(status, "totals.rate_limited"),
        errors=number(status, "totals.errors"),
    )


@dataclass(frozen=True, slots=True)
class Queue:
    """The gateway's queue: this instance's, and the cluster's sum when instances share Redis."""

    depth: float | None
    in_flight: float | None
    oldest_wait_s: float | None
    wait_p50_s: float | None
    wait_p99_s: float | None
    admitted_per_min: float | None
    upstream_429: float | None
    errors: float | None
    admitted_total: float | None
    instances: float | None = None
    cluster_depth: float | None = None
    cluster_in_flight: float | None = None

    @property
    def clustered(self) -> bool:
        return self.instances is not None


def queue(status: dict[str, Any]) -> Queue:
    return Queue(
        depth=number(status, "queue.depth"),
        in_flight=number(status, "queue.in_flight"),
        oldest_wait_s=seconds(
            status,
            "cluster.oldest_wait_s",
            "cluster.oldest_wait_ms",
            "queue.oldest_wait_s",
            "queue.oldest_wait_ms",
        ),
        wait_p50_s=seconds(
            status,
            "queue.wait_p50_s",
            "queue.wait_p50_ms",
            "queue_wait.p50_s",
            "queue_wait.p50_ms",
            "latency.queue_wait_p50_s",
            "latency.queue_wait_p50_ms",
        ),
        wait_p99_s=seconds(
            status,
            "queue.wait_p99_s",
            "queue.wait_p99_ms",
            "queue_wait.p99_s",
            "queue_wait.p99_ms",
            "latency.queue_wait_p99_s",
            "latency.queue_wait_p99_ms",
        ),
        admitted_per_min=number(
            status, "admitted_per_min", "queue.admitted_per_min", "totals.admitted_per_min"
        ),
        upstream_429=number(status, "totals.upstream_429", "upstream.rate_limited", "upstream.429"),
        errors=number(status, "totals.errors"),
        admitted_total=admitted_total(status),
        instances=number(status, "cluster.instances"),
        cluster_depth=number(status, "cluster.depth"),
        cluster_in_flight=number(status, "cluster.in_flight"),
    )


def admitted_total(status: dict[str, Any]) -> float | None:
    """The counter the admitted-rate history samples: cluster-wide when the gateway reports one."""
    return number(status, "cluster.admitted", "totals.admitted", "totals.requests")
