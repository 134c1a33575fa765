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
    rate_limited: float | None  # answered 429 (queue full, too large, cannot fit in time)
    errors: float | None  # answered 5xx
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
        rate_limited=number(status, "totals.rate_limited"),
        errors=number(status, "totals.errors"),
        upstream_429=number(status, "totals.upstream_429"),
        paused_s=number(status, "paused_s"),
        instances=number(status, "cluster.instances"),
        cluster_depth=number(status, "cluster.depth"),
        cluster_in_flight=number(status, "cluster.in_flight"),
    )


@dataclass(frozen=True, slots=True)
class Flow:
    """Requests through the gateway as counts since start and per minute over the last 60 s, every
    figure over the same span: the sum of all instances sharing the budget when there are several."""

    received: float | None
    admitted: float | None  # every admission: a retried request is admitted again
    answered: float | None
    received_per_min: float | None
    admitted_per_min: float | None
    answered_per_min: float | None
    uptime_s: float | None  # None for a cluster: each instance started at its own time
    instances: int


def flow(status: dict[str, Any]) -> Flow:
    instances = int(number(status, "cluster.instances") or 1)
    if instances > 1:
        return Flow(
            received=number(status, "cluster.received"),
            admitted=number(status, "cluster.admitted"),
            answered=number(status, "cluster.requests"),
            received_per_min=number(status, "cluster.received_per_min"),
            admitted_per_min=number(status, "cluster.admitted_per_min"),
            answered_per_min=number(status, "cluster.answered_per_min"),
            uptime_s=None,
            instances=instances,
        )
    return Flow(
        received=number(status, "totals.received"),
        admitted=number(status, "totals.admitted"),
        answered=number(status, "totals.requests"),
        received_per_min=number(status, "per_min.received"),
        admitted_per_min=number(status, "per_min.admitted", "admitted_per_min"),
        answered_per_min=number(status, "per_min.answered"),
        uptime_s=number(status, "uptime_s"),
        instances=1,
    )


@dataclass(frozen=True, slots=True)
class Waits:
    """Queue waits of the requests answered in the last ``window_s`` and, so far, of those waiting."""

    window_s: float
    answered: float
    waiting: float
    p50_s: float | None
    p99_s: float | None
    max_s: float | None


def waits(status: dict[str, Any]) -> Waits | None:
    raw = dig(status, "queue.waits")
    if not isinstance(raw, dict):
        return None
    return Waits(
        window_s=number(raw, "window_s") or 60,
        answered=number(raw, "answered") or 0,
        waiting=number(raw, "waiting") or 0,
        p50_s=number(raw, "p50_s"),
        p99_s=number(raw, "p99_s"),
        max_s=number(raw, "max_s"),
    )


def admitted_per_min(status: dict[str, Any]) -> float | None:
    """What the monitor's history samples: admissions in the last 60 s (the cluster's sum)."""
    return flow(status).admitted_per_min


def rpm_ceiling(status: dict[str, Any]) -> float | None:
    """The most the gateway may admit in a minute: the sum of its budgets' RPM limits (None when a
    budget has no RPM limit or its limits are unknown)."""
    raw = status.get("budgets")
    views = [b.get("limits") for b in raw if isinstance(b, dict)] if isinstance(raw, list) else []
    total = 0.0
    for view in views or [status.get("limits")]:
        rpm = number(view, "rpm.limit")
        if not rpm:
            return None
        total += rpm
    return total


@dataclass(frozen=True, slots=True)
class BudgetReading:
    """One (deployment, model) budget of a gateway: its limits, the binding one (the fullest), its
    pool's queue and its deployment's state."""

    deployment: str
    model: str
    limits: list[LimitReading]
    binding: LimitReading | None  # None: no limit set, or the store is down
    error: str | None  # why its limits are unknown
    depth: float  # its pool's queue (shared by the budgets serving that model)
    oldest_wait_s: float
    state: str  # the deployment's: in, cooling, out
    reason: str | None
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
        items = limits(entry)
        limited = [r for r in items if not r.unlimited]
        deployment = str(entry.get("deployment", "?"))
        model = str(entry.get("model", "?"))
        reason = dig(deployments, f"{deployment}.reason")
        out.append(
            BudgetReading(
                deployment=deployment,
                model=model,
                limits=items,
                binding=max(limited, key=lambda r: r.fraction) if limited else None,
                error=limits_error(entry),
                depth=number(pools.get(model), "depth") or 0,
                oldest_wait_s=number(pools.get(model), "oldest_wait_s") or 0,
                state=str(dig(deployments, f"{deployment}.state") or "in"),
                reason=reason if isinstance(reason, str) and reason else None,
                paused_s=number(entry, "paused_s") or 0,
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class TenantReading:
    """One tenant of a gateway: its weight, its requests waiting, its admissions, its share of
    each budget (``deployment/model``: a fraction) and its queue waits."""

    name: str
    weight: float | None
    queued: float | None
    admitted_per_min: float | None
    share: dict[str, float]
    wait_p50_s: float | None
    wait_p99_s: float | None


def tenants(status: dict[str, Any]) -> list[TenantReading]:
    """The tenants a gateway reports (``tenants`` in its /status, keyed by name); none without
    that block. A tenant's share of a budget is ``budgets_last_minute.<deployment/model>.share``."""
    raw = status.get("tenants")
    if not isinstance(raw, dict):
        return []
    out = []
    for name, entry in raw.items():
        if not isinstance(entry, dict):
            continue
        out.append(
            TenantReading(
                name=str(name),
                weight=number(entry, "weight"),
                queued=number(entry, "queued"),
                admitted_per_min=number(entry, "admitted_per_min"),
                share=_shares(entry),
                wait_p50_s=number(entry, "wait_p50_s"),
                wait_p99_s=number(entry, "wait_p99_s"),
            )
        )
    return out


def _shares(entry: dict[str, Any]) -> dict[str, float]:
    budgets = entry.get("budgets_last_minute")
    if not isinstance(budgets, dict):
        return {}
    pairs = ((k, dig(v, "share")) for k, v in budgets.items())
    return {str(k): float(v) for k, v in pairs if isinstance(v, int | float) and not isinstance(v, bool)}
