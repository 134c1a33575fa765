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


def limits_error(status: dict[str, Any]) -> str | None:
    """Why a service could not read its limits (its store is down), when it says so."""
    error = dig(status, "limits.error")
    return error if isinstance(error, str) else None


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
                reset_s=number(entry, "reset_s"),
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
    paused_s: float | None
    instances: float | None
    cluster_depth: float | None
    cluster_in_flight: float | None

    @property
    def clustered(self) -> bool:
        """Several instances share one budget (one instance reports itself as a cluster of one)."""
        return (self.instances or 0) > 1


def queue(status: dict[str, Any]) -> Queue:
    return Queue(
        depth=number(status, "queue.depth"),
        in_flight=number(status, "queue.in_flight"),
        oldest_wait_s=number(status, "queue.oldest_wait_s"),
        wait_p50_s=number(status, "queue.wait_p50_s"),
        wait_p99_s=number(status, "queue.wait_p99_s"),
        admitted_per_min=number(status, "admitted_per_min"),
        upstream_429=number(status, "totals.upstream_429"),
        paused_s=number(status, "paused_s"),
        instances=number(status, "cluster.instances"),
        cluster_depth=number(status, "cluster.depth"),
        cluster_in_flight=number(status, "cluster.in_flight"),
    )


def admitted_total(status: dict[str, Any]) -> float | None:
    """The counter the admitted-rate history samples: the cluster's sum when instances share Redis."""
    return number(status, "cluster.admitted", "totals.admitted")


def counter_source(status: dict[str, Any]) -> tuple[Any, ...]:
    """What the admitted counter is a sum over: when it changes (a restart, an instance joining or
    leaving the cluster) the counter jumps, and that jump is not traffic."""
    return (status.get("instance"), number(status, "cluster.instances"))


@dataclass(frozen=True, slots=True)
class BudgetReading:
    """One (deployment, model) budget of a gateway: its binding limit (the fullest) and state."""

    deployment: str
    model: str
    binding: LimitReading | None  # None: no limit set, or the store is down
    depth: float  # its pool's queue
    state: str  # the deployment's: in, cooling, out
    paused_s: float


def budgets(status: dict[str, Any]) -> list[BudgetReading]:
    """Every budget a gateway reports (``budgets`` in its /status), in its order."""
    raw = status.get("budgets")
    if not isinstance(raw, list):
        return []
    pools = status.get("pools") if isinstance(status.get("pools"), dict) else {}
    deployments = status.get("deployments") if isinstance(status.get("deployments"), dict) else {}
    out = []
    for entry in raw:
        if not isinstance(entry, dict):
            continue
        limited = [r for r in limits(entry) if not r.unlimited]
        binding = max(limited, key=lambda r: r.fraction) if limited else None
        deployment = str(entry.get("deployment", "?"))
        model = str(entry.get("model", "?"))
        out.append(
            BudgetReading(
                deployment=deployment,
                model=model,
                binding=binding,
                depth=number(pools.get(model), "depth") or 0,
                state=str(dig(deployments, f"{deployment}.state") or "in"),
                paused_s=number(entry, "paused_s") or 0,
            )
        )
    return out
