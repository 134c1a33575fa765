"""Per-tenant figures for ``/status`` and ``/metrics``: queued, admitted, share of each budget
over the last minute, waits, sub-limit use. Labels are configured tenant names (and ``(none)``
for callers that are no tenant), never keys, so the series are bounded by the file."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from apim_server.metrics import WAIT_BUCKETS, RollingMinute, percentile
from apim_server.tenants import Tenant, Tenants, name_of
from ratelimit.limiter import status_limits

if TYPE_CHECKING:
    from apim_server.budget import Budget
    from apim_server.queue import Ticket
    from apim_server.routing import Pool

Pools = Callable[[], dict[str, "Pool"]]


class _Figures:
    """One tenant's rolling figures in this instance."""

    def __init__(self) -> None:
        self.admitted = RollingMinute()
        self.waits: deque[float] = deque(maxlen=2048)
        # Per budget: requests and tokens admitted in the last minute.
        self.used: dict[int, tuple[Budget, RollingMinute, RollingMinute]] = {}


class TenantFigures:
    def __init__(self, registry: CollectorRegistry, tenants: Tenants, pools: Pools) -> None:
        self.tenants = tenants
        self._pools = pools
        self._figures: dict[Tenant | None, _Figures] = {t: _Figures() for t in tenants.all}
        self._figures[None] = _Figures()
        if not tenants.enabled:
            return
        self._admitted = Counter(
            "apim_tenant_admitted",
            "Admissions granted per tenant (every attempt)",
            ["tenant"],
            registry=registry,
        )
        self._tokens = Counter(
            "apim_tenant_tokens_admitted",
            "Tokens charged at admission per tenant",
            ["tenant"],
            registry=registry,
        )
        self._wait = Histogram(
            "apim_tenant_queue_wait_seconds",
            "Time a request waited in the queue, per tenant",
            ["tenant"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        registry.register(_Queued(self))

    def admitted(self, ticket: Ticket, budget: Budget) -> None:
        figures = self._figures.get(ticket.tenant)
        if figures is None:
            return
        name = name_of(ticket.tenant)
        figures.admitted.add()
        used = figures.used.get(id(budget))
        if used is None:
            used = figures.used[id(budget)] = (budget, RollingMinute(), RollingMinute())
        used[1].add(ticket.cost.requests)
        used[2].add(ticket.cost.tokens)
        self._admitted.labels(tenant=name).inc()
        self._tokens.labels(tenant=name).inc(ticket.cost.tokens)

    def waited(self, tenant: Tenant | None, seconds: float) -> None:
        figures = self._figures.get(tenant)
        if figures is None:
            return
        figures.waits.append(seconds)
        self._wait.labels(tenant=name_of(tenant)).observe(seconds)

    def queued(self) -> dict[str, int]:
        out = {name_of(t): 0 for t in self._figures}
        for pool in self._pools().values():
            for tenant, n in pool.queue.depth_by_tenant().items():
                out[name_of(tenant)] = out.get(name_of(tenant), 0) + n
        return out

    async def status(self) -> dict[str, Any]:
        """The ``tenants`` block of ``/status``."""
        queued = self.queued()
        out: dict[str, Any] = {}
        for tenant, figures in self._figures.items():
            waits = list(figures.waits)
            p50, p99 = percentile(waits, 0.5), percentile(waits, 0.99)
            shares = {}
            for budget, requests, tokens in figures.used.values():
                minute = budget.limiter.policy.windows[0]
                r, t = requests.total(), tokens.total()
                fraction = max(
                    r / minute.requests if minute.requests else 0.0,
                    t / minute.tokens if minute.tokens else 0.0,
                )
                shares[budget.name] = {"requests": r, "tokens": t, "share": round(fraction, 4)}
            entry: dict[str, Any] = {
                "weight": 1.0 if tenant is None else tenant.weight,
                "queued": queued.get(name_of(tenant), 0),
                "admitted_per_min": figures.admitted.total(),
                "budgets_last_minute": shares,
                "wait_p50_s": None if p50 is None else round(p50, 4),
                "wait_p99_s": None if p99 is None else round(p99, 4),
            }
            if tenant is not None:
                entry["max_priority"] = tenant.max_priority.name.lower()
                entry["sub_limits"] = await _sub_limits(tenant)
            if tenant is not None or entry["admitted_per_min"] or entry["queued"]:
                out[name_of(tenant)] = entry
        return out


async def _sub_limits(tenant: Tenant) -> dict[str, Any] | None:
    if tenant.limiter is None:
        return None
    try:
        return status_limits(await tenant.limiter.peek(tenant.key))
    except Exception as exc:  # noqa: BLE001 - the store may be down; say so, keep answering
        return {"error": f"limiter store unavailable: {type(exc).__name__}"}


class _Queued(Collector):
    def __init__(self, figures: TenantFigures) -> None:
        self._figures = figures

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("apim_tenant_queued", "Requests waiting per tenant", labels=["tenant"])
        for name, n in self._figures.queued().items():
            gauge.add_metric([name], n)
        yield gauge


__all__ = ["TenantFigures"]
