"""The parts of one gateway instance, wired together, with their start and stop."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from apim_server.accounting import Accounting
from apim_server.auth import CallerKeys
from apim_server.cluster import Cluster
from apim_server.config import Settings
from apim_server.dispatcher import Dispatcher
from apim_server.metrics import Metrics
from apim_server.probe import UpstreamProbe
from apim_server.queue import Ticket, TicketQueue
from apim_server.redaction import Redactor
from apim_server.upstream import Upstream
from ratelimit.cost import CostEstimator
from ratelimit.embedded import EmbeddedStore
from ratelimit.limiter import Limiter, open_store
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
    parts = urlsplit(upstream_url)
    return f"upstream:{parts.scheme}://{parts.hostname}:{parts.port or ''}{parts.path}"


class Gateway:
    """Settings, limiter, queue, dispatcher, upstream client, metrics: one instance's state."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.store = store or open_store(
            settings.redis_url,
            settings.redis_prefix,
            replicas=settings.redis_wait_replicas,
            replica_wait_ms=settings.redis_wait_ms,
        )
        self.limiter = Limiter(settings.limits(), self.store)
        self.key = budget_key(settings.upstream_url)
        self.estimator = CostEstimator(settings.cost_rule, settings.default_max_tokens)
        self.metrics = Metrics()
        self.queue = TicketQueue(settings.max_queue)
        self.dispatcher = Dispatcher(
            self.limiter,
            self.key,
            self.queue,
            settings.max_concurrency,
            on_admit=self._on_admit,
            # In-process admissions take microseconds and never suspend: a request can admit
            # itself when nothing waits. Only a network store gains from batches.
            batch_size=1 if isinstance(self.store, EmbeddedStore) else ADMISSION_BATCH,
            inline=isinstance(self.store, EmbeddedStore),
            store_restarted=self._store_restarted if isinstance(self.store, RedisStore) else None,
            on_return=self.metrics.tokens_refunded.labels(kind="abandoned").inc,
        )
        self.upstream = Upstream(
            settings.upstream_url,
            settings.upstream_api_key.get_secret_value(),
            settings.max_concurrency,
            settings.upstream_timeout_s,
            forward_caller_auth=not settings.api_keys,
            forward_mock_faults=settings.forward_mock_faults,
        )
        # Whatever the upstream echoes of our key never reaches a caller.
        self.redactor = Redactor([settings.upstream_api_key.get_secret_value()])
        self.operator = OperatorKey(settings.operator_key.get_secret_value())
        self.probe = UpstreamProbe(self.upstream)
        self.caller_keys = CallerKeys(k.get_secret_value() for k in settings.api_keys)
        self.accounting = Accounting(
            self.limiter, self.key, settings.refund_unused, self.metrics, self.dispatcher
        )
        self.instance_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.cluster = Cluster(
            self.store if isinstance(self.store, RedisStore) else None,
            settings.redis_prefix,
            self.instance_id,
            self.figures,
            on_failure=self.dispatcher.note_store_failure,
            budget_key=self.key,
        )
        self.metrics.bind(
            depth=lambda: self.queue.depth,
            in_flight=lambda: self.dispatcher.in_flight,
            paused=lambda: self.dispatcher.paused_for,
            latest=lambda: self.dispatcher.last_decision,
        )
        self.closing = False
        self.started_at = time.time()
        self._ready: tuple[float, dict[str, bool]] | None = None

    async def _store_restarted(self, within_s: float) -> bool:
        """Whether the Redis server holding the budget started less than ``within_s`` ago
        (restarted in an outage)."""
        assert isinstance(self.store, RedisStore)
        if not await self.store.ready(self.key):
            # Answering is not enough (a replica answers reads): hold until a write can succeed.
            raise ConnectionError(
                "the limiter store cannot admit yet (a replica, or no master for the budget)"
            )
        return (await self.store.server(self.key)).uptime_s <= within_s + 1

    def _on_admit(self, ticket: Ticket, decision: Decision) -> None:
        self.metrics.admitted(ticket.cost.tokens)

    async def start(self) -> None:
        if isinstance(self.store, RedisStore):
            log.info(
                "limiter store: redis at %s (prefix %s), budget %s",
                redacted(self.settings.redis_url),
                self.settings.redis_prefix,
                self.key,
            )
        else:
            log.info("limiter store: embedded (in-process, this instance only), budget %s", self.key)
        if not self.caller_keys.enabled:
            log.warning(
                "APIM_API_KEYS is empty: anyone who can reach this gateway may spend the upstream's "
                "budget (set APIM_API_KEYS to require a key)"
            )
        # Load the token encodings now: the first request should not pay for it.
        for name in ("o200k_base", "cl100k_base"):
            encoding(name)
        self.dispatcher.start()
        self.cluster.start()

    def begin_shutdown(self) -> None:
        """Stop taking requests and answer every queued one now; in-flight ones finish."""
        if self.closing:
            return
        self.closing = True
        drained = self.dispatcher.close()
        log.info(
            "shutting down: %d queued request(s) answered 503, %d in flight finishing",
            len(drained),
            self.dispatcher.in_flight,
        )

    async def stop(self) -> None:
        self.begin_shutdown()
        await self.dispatcher.stop()
        await self.cluster.stop()
        await self.upstream.close()
        await self.probe.close()
        await self.store.close()

    def figures(self) -> dict[str, Any]:
        """This instance's queue figures (also what it publishes to the cluster view)."""
        oldest = self.queue.oldest_arrival()
        return {
            "depth": self.queue.depth,
            "in_flight": self.dispatcher.in_flight,
            "oldest_wait_s": round(time.monotonic() - oldest, 3) if oldest is not None else 0.0,
            "admitted": self.metrics.total_admitted,
            "requests": self.metrics.total_requests,
        }

    async def readiness(self) -> dict[str, bool]:
        """Whether the store could admit for this budget now, and upstream reachability, cached
        briefly so probes cost nothing."""
        now = time.monotonic()
        if self._ready is not None and now - self._ready[0] < READY_CACHE_S:
            return self._ready[1]
        store_ok = await self.store.ready(self.key)
        upstream_ok = await self.probe.reachable()
        result = {"store": store_ok, "upstream": upstream_ok}
        self._ready = (now, result)
        return result
