"""The parts of one gateway instance, wired together, with their start and stop."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from typing import Any

from apim_server.accounting import Accounting
from apim_server.auth import CallerKeys
from apim_server.budget import Budget, Deployment
from apim_server.cluster import Cluster
from apim_server.config import Settings
from apim_server.config_file import Plan, from_settings, upstream_id
from apim_server.following import Following
from apim_server.metrics import Metrics
from apim_server.probe import UpstreamProbe
from apim_server.queue import Ticket
from apim_server.redaction import Redactor
from apim_server.routing import Router
from apim_server.store_health import StoreHealth
from apim_server.tenant_figures import TenantFigures
from apim_server.tenants import Tenants
from apim_server.tracing import Tracing
from apim_server.upstream import Upstream
from ratelimit.embedded import EmbeddedStore
from ratelimit.limiter import open_store
from ratelimit.limits import Decision
from ratelimit.redis_store import RedisStore
from ratelimit.store import Store
from ratelimit.tokens import encoding
from serving.operator import OperatorKey
from serving.urls import redacted

log = logging.getLogger("apim")

READY_CACHE_S = 2.0
ADMISSION_BATCH = 32


def budget_key(upstream_url: str) -> str:
    """One budget per upstream: every instance naming the same upstream on one Redis shares it."""
    return upstream_id(upstream_url)


class Gateway:
    """Settings, store and its health, deployments, budgets and pools, metrics: one instance."""

    def __init__(self, settings: Settings, store: Store | None = None, plan: Plan | None = None) -> None:
        self.settings = settings
        self.plan = plan or from_settings(settings)
        self.store = store or open_store(
            settings.redis_url,
            settings.redis_prefix,
            replicas=settings.redis_wait_replicas,
            replica_wait_ms=settings.redis_wait_ms,
        )
        self.metrics = Metrics()
        embedded = isinstance(self.store, EmbeddedStore)
        longest_s = (
            max(limits.policy().longest_ms for d in self.plan.deployments for limits in d.models.values())
            / 1000
        )
        self.health = StoreHealth(self.store, longest_s)
        forward_caller_auth = not settings.api_keys and not self.plan.tenant_keys
        self.deployments = {
            d.name: Deployment(
                d,
                Upstream(
                    d.url,
                    d.api_key,
                    d.max_concurrency,
                    settings.upstream_timeout_s,
                    forward_caller_auth=forward_caller_auth,
                    forward_mock_faults=settings.forward_mock_faults,
                    kind=d.kind,
                    api_version=d.api_version,
                    azure_names=d.azure_names,
                ),
                settings.default_max_tokens,
            )
            for d in self.plan.deployments
        }
        self.router = Router(
            self.plan,
            self.store,
            self.deployments,
            self.health,
            settings.max_queue,
            # In-process admissions take microseconds and never suspend: a request can admit
            # itself when nothing waits. Only a network store gains from batches.
            batch_size=1 if embedded else ADMISSION_BATCH,
            inline=embedded,
            on_admit=self._on_admit,
            on_return=self.metrics.tokens_refunded.labels(kind="abandoned").inc,
            queue_shares=(100, settings.queue_share_normal_pct, settings.queue_share_low_pct),
            aging_s=settings.priority_aging_s,
            # On a shared store every instance registers what it has waiting with the budget, so
            # priorities (and tenants' shares) hold across instances; alone, the local order
            # decides and the store is asked nothing more.
            instance=None if embedded else uuid.uuid4().hex[:12],
        )
        self.health.record_empty = self.router.record_empty
        self.health.key = self.router.budgets[0].key
        # Whatever an upstream echoes of our keys never reaches a caller.
        self.redactor = Redactor([d.api_key for d in self.plan.deployments])
        self.operator = OperatorKey(settings.operator_key.get_secret_value())
        self.probe = UpstreamProbe(self.first_upstream)
        self.caller_keys = CallerKeys(
            [k.get_secret_value() for k in settings.api_keys] + list(self.plan.tenant_keys)
        )
        self.tenants = Tenants(self.plan.tenants, self.store)
        self.tenant_figures = TenantFigures(self.metrics.registry, self.tenants, lambda: self.router.pools)
        self.accounting = Accounting(settings.refund_unused, self.metrics)
        self.following = Following(self.router.budgets, self.store, self.metrics, on_raise=self._limits_rose)
        self.instance_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.cluster = Cluster(
            self.store if isinstance(self.store, RedisStore) else None,
            settings.redis_prefix,
            self.instance_id,
            self.figures,
            on_failure=self.health.failed,
        )
        self.metrics.bind(
            depth=lambda: self.router.depth,
            in_flight=lambda: self.router.in_flight,
            paused=self.paused_for,
            budgets=lambda: self.router.budgets,
            pools=lambda: self.router.pools,
        )
        self.tracing = Tracing.exporting() if settings.otel_traces else None
        self.closing = False
        self.started_at = time.time()
        self._ready: tuple[float, dict[str, bool]] | None = None

    @property
    def first_upstream(self) -> Upstream:
        return next(iter(self.deployments.values())).upstream

    def paused_for(self) -> float:
        """The longest any pool must wait before admitting again (a hold counts for all)."""
        return max((d.paused_for for d in self.router.dispatchers()), default=0.0)

    def _limits_rose(self, budget: Budget) -> None:
        for pool in self.router.pools.values():
            if budget in pool.members:
                pool.dispatcher.reconsider()

    def _on_admit(self, ticket: Ticket, budget: Budget, decision: Decision) -> None:
        self.metrics.admitted(ticket.cost.tokens, budget)
        if self.tenants.enabled:
            self.tenant_figures.admitted(ticket, budget)

    async def start(self) -> None:
        names = ", ".join(b.name for b in self.router.budgets)
        if isinstance(self.store, RedisStore):
            log.info(
                "limiter store: redis at %s (prefix %s); budgets (%s): %s",
                redacted(self.settings.redis_url),
                self.settings.redis_prefix,
                self.plan.source,
                names,
            )
        else:
            log.info(
                "limiter store: embedded (in-process, this instance only); budgets (%s): %s",
                self.plan.source,
                names,
            )
        if not self.caller_keys.enabled:
            log.warning(
                "APIM_API_KEYS is empty: anyone who can reach this gateway may spend the upstream's "
                "budget (set APIM_API_KEYS to require a key)"
            )
        # Load the token encodings now: the first request should not pay for it.
        for name in ("o200k_base", "cl100k_base"):
            encoding(name)
        for dispatcher in self.router.dispatchers():
            dispatcher.start()
        self.health.start()
        self.cluster.start()
        self.following.start()

    def begin_shutdown(self) -> None:
        """Stop taking requests and answer every queued one now; in-flight ones finish."""
        if self.closing:
            return
        self.closing = True
        drained = sum(len(d.close()) for d in self.router.dispatchers())
        log.info(
            "shutting down: %d queued request(s) answered 503, %d in flight finishing",
            drained,
            self.router.in_flight,
        )

    async def stop(self) -> None:
        self.begin_shutdown()
        for dispatcher in self.router.dispatchers():
            await dispatcher.stop()
        await self.health.stop()
        await self.cluster.stop()
        await self.following.stop()
        for deployment in self.deployments.values():
            await deployment.upstream.close()
        await self.probe.close()
        await self.store.close()
        if self.tracing is not None:
            self.tracing.shutdown()

    def figures(self) -> dict[str, Any]:
        """This instance's queue figures (also what it publishes to the cluster view)."""
        oldest = self.router.oldest_arrival()
        return {
            "depth": self.router.depth,
            "in_flight": self.router.in_flight,
            "oldest_wait_s": round(time.monotonic() - oldest, 3) if oldest is not None else 0.0,
            "admitted": self.metrics.total_admitted,
            "requests": self.metrics.total_requests,
            "received": self.metrics.total_received,
            **{f"{name}_per_min": n for name, n in self.metrics.per_min().items()},
        }

    async def readiness(self) -> dict[str, bool]:
        """Whether the store could admit for this budget now, and upstream reachability, cached
        briefly so probes cost nothing."""
        now = time.monotonic()
        if self._ready is not None and now - self._ready[0] < READY_CACHE_S:
            return self._ready[1]
        store_ok = await self.store.ready(self.health.key)
        upstream_ok = await self.probe.reachable()
        result = {"store": store_ok, "upstream": upstream_ok}
        self._ready = (now, result)
        return result
