"""What the gateway counts: Prometheus metrics for ``/metrics`` and rolling figures for ``/status``."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ratelimit.limiter import status_limits
from ratelimit.limits import Decision

if TYPE_CHECKING:
    from apim_server.budget import Budget
    from apim_server.routing import Pool

WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_ERROR_BUCKETS = (-1000, -100, -10, -1, 0, 1, 10, 100, 1000, 10_000, 100_000)
WAIT_WINDOW_S = 60.0
SCRAPE_PEEK_S = 2.0
"""How long a scrape of ``/metrics`` waits for the store's view of the budgets."""
"""The span of ``/status``'s queue-wait percentiles (answered requests; waiting ones at any age)."""


class RollingMinute:
    """Events in the last 60 s, in one-second buckets: O(1) to add and to read."""

    def __init__(self) -> None:
        self._counts = [0] * 60
        self._stamps = [-1] * 60

    def add(self, n: int = 1) -> None:
        second = int(time.monotonic())
        i = second % 60
        if self._stamps[i] != second:
            self._stamps[i] = second
            self._counts[i] = 0
        self._counts[i] += n

    def total(self) -> int:
        now = int(time.monotonic())
        return sum(c for c, s in zip(self._counts, self._stamps, strict=True) if now - s < 60)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class _Budgets(Collector):
    """Per budget (deployment, model) and per pool figures, read at scrape time.

    ``apim_budget_remaining{limit}`` keeps its single-budget shape (only with one budget);
    ``apim_budget_left``, ``_used`` and ``_limit{deployment,model,limit}`` are there for every
    budget, as of the scrape (``refresh``) or, when the store could not be read, the latest
    admission.
    """

    def __init__(self, budgets: Callable[[], list[Budget]], pools: Callable[[], dict[str, Pool]]) -> None:
        self._budgets = budgets
        self._pools = pools
        self._peeked: dict[int, Decision] = {}

    async def refresh(self) -> None:
        """Read every budget's use now (one peek each, concurrently), for the scrape that follows;
        a store that does not answer within ``SCRAPE_PEEK_S`` leaves the latest admissions' view."""
        budgets = self._budgets()
        try:
            async with asyncio.timeout(SCRAPE_PEEK_S):
                found = await asyncio.gather(*(b.peek() for b in budgets), return_exceptions=True)
        except TimeoutError:
            self._peeked = {}
            return
        self._peeked = {id(b): d for b, d in zip(budgets, found, strict=True) if isinstance(d, Decision)}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        budgets = self._budgets()
        single = GaugeMetricFamily(
            "apim_budget_remaining", "Budget left per limit, as of the latest admission", labels=["limit"]
        )
        labels = ["deployment", "model", "limit"]
        left = GaugeMetricFamily(
            "apim_budget_left", "Budget left per deployment, model and limit, as of the scrape", labels=labels
        )
        used = GaugeMetricFamily(
            "apim_budget_used",
            "Budget used per deployment, model and limit (requests or tokens), as of the scrape",
            labels=labels,
        )
        size = GaugeMetricFamily(
            "apim_budget_limit", "Configured size of each limit per deployment and model", labels=labels
        )
        paused = GaugeMetricFamily(
            "apim_budget_paused_seconds",
            "How long a budget stays paused (the upstream's 429 or reset, or its deployment cooling)",
            labels=["deployment", "model"],
        )
        for budget in budgets:
            names = [budget.deployment.name, budget.model]
            paused.add_metric(names, budget.ready_in())
            decision = self._peeked.get(id(budget), budget.last_decision)
            if decision is not None:
                for name, view in status_limits(decision).items():
                    left.add_metric([*names, name], float(view["remaining"]))
                    used.add_metric([*names, name], float(view["used"]))
                    size.add_metric([*names, name], float(view["limit"]))
            if len(budgets) == 1 and budget.last_decision is not None:
                for name, view in status_limits(budget.last_decision).items():
                    single.add_metric([name], float(view["remaining"]))
        depth = GaugeMetricFamily(
            "apim_pool_queue_depth", "Requests waiting, per pool (model)", labels=["model"]
        )
        oldest = GaugeMetricFamily(
            "apim_pool_oldest_wait_seconds",
            "How long the longest-waiting request of a pool (model) has waited so far (0: none waits)",
            labels=["model"],
        )
        now = time.monotonic()
        for model, pool in self._pools().items():
            depth.add_metric([model], pool.queue.depth)
            arrived = pool.queue.oldest_arrival()
            oldest.add_metric([model], 0.0 if arrived is None else now - arrived)
        in_service = GaugeMetricFamily(
            "apim_deployment_in_service",
            "1 while a deployment takes requests, 0 while it is taken out after repeated failures",
            labels=["deployment"],
        )
        seen = {b.deployment.name: b.deployment for b in budgets}
        for name, deployment in seen.items():
            in_service.add_metric([name], 0.0 if deployment.out else 1.0)
        yield from (single, left, used, size, paused, depth, oldest, in_service)


class _Received(Collector):
    """Requests received, counted as a plain integer on the request path and exported at scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "apim_requests_received",
            "Requests that arrived at an API endpoint, answered or not yet",
            value=self._metrics.total_received,
        )


class Metrics:
    """Every counter the gateway keeps, in a registry of its own (several apps per process in tests)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "apim_requests", "Chat requests answered, by HTTP status", ["status"], registry=r
        )
        self.admissions = Counter(
            "apim_admissions", "Admissions granted by the limiter (every attempt)", registry=r
        )
        self.budget_admissions = Counter(
            "apim_budget_admissions",
            "Admissions granted, per budget (every attempt)",
            ["deployment", "model"],
            registry=r,
        )
        # Per budget (deployment, model: both from the configuration, never the caller's words,
        # so the series stay few): which upstream refuses or fails is what an operator acts on.
        self.upstream_responses = Counter(
            "apim_upstream_responses",
            "Upstream answers per deployment and model (the budget's) by HTTP status (`error` = no "
            "answer: connect error, reset)",
            ["deployment", "model", "status"],
            registry=r,
        )
        self.upstream_rate_limited = Counter(
            "apim_upstream_rate_limited",
            "Upstream 429s that paused a budget and requeued, per deployment and model",
            ["deployment", "model"],
            registry=r,
        )
        self.tokens_charged = Counter(
            "apim_tokens_charged",
            "Tokens charged to the budget: `estimate` at admission, `excess` of usage over it",
            ["kind"],
            registry=r,
        )
        self.tokens_refunded = Counter(
            "apim_tokens_refunded",
            "Tokens returned to the budget: `unused` estimate (refund mode), `abandoned` admissions",
            ["kind"],
            registry=r,
        )
        self.tokens_used = Counter("apim_tokens_used", "Tokens the upstream reported as usage", registry=r)
        self.estimate_error = Histogram(
            "apim_estimate_error_tokens",
            "Estimate minus actual usage per answered request (tokens)",
            buckets=TOKEN_ERROR_BUCKETS,
            registry=r,
        )
        self.drift = Gauge(
            "apim_budget_drift",
            "Upstream x-ratelimit-remaining minus ours at admission, latest answer (>0: we are stricter)",
            ["limit"],
            registry=r,
        )
        self.drift_pauses = Counter(
            "apim_drift_pauses",
            "Pauses because the upstream reported 0 remaining while we had budget left",
            registry=r,
        )
        self.queue_wait = Histogram(
            "apim_queue_wait_seconds", "Time a request waited in the queue", buckets=WAIT_BUCKETS, registry=r
        )
        self.prediction_error = Histogram(
            "apim_queue_wait_prediction_error_seconds",
            "Actual queue wait minus the wait predicted at arrival (x-apim-expected-wait-ms), per "
            "admitted request, by direction: `late` = admitted after the prediction, `early` = before",
            ["direction"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self._late = self.prediction_error.labels(direction="late")
        self._early = self.prediction_error.labels(direction="early")
        self.upstream_latency = Histogram(
            "apim_upstream_latency_seconds",
            "Upstream time of one attempt, to the end of its body or stream",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.dispatch_lag = Histogram(
            "apim_dispatch_lag_seconds",
            "From asking the limiter to the request leaving for the upstream, on this process's "
            "clock (the admission happens within): the jitter APIM_WINDOW_MARGIN_MS must cover",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=r,
        )
        self.queue_depth = Gauge("apim_queue_depth", "Requests waiting for admission", registry=r)
        self.in_flight = Gauge("apim_in_flight", "Requests forwarded and not yet answered", registry=r)
        self.paused = Gauge("apim_admission_paused_seconds", "How long admission stays paused", registry=r)
        self._estimate = self.tokens_charged.labels(kind="estimate")
        self._status_children: dict[int, Counter] = {}
        self._upstream_children: dict[Budget | None, dict[int | str, Counter]] = {}
        self._rate_limited_children: dict[Budget | None, Counter] = {}
        self._budget_children: dict[int, Counter] = {}

        # Rolling figures for /status.
        self.total_received = 0
        self.total_requests = 0
        self.total_rate_limited = 0
        self.total_errors = 0
        self.total_admitted = 0
        self.total_upstream_429 = 0
        self.admitted_minute = RollingMinute()
        self.received_minute = RollingMinute()
        self.answered_minute = RollingMinute()
        # (monotonic time answered, seconds waited in the queue)
        self.recent_waits: deque[tuple[float, float]] = deque(maxlen=4096)
        self.recent_lags: deque[float] = deque(maxlen=4096)
        self.max_lag = 0.0

    def bind(
        self,
        depth: Callable[[], float],
        in_flight: Callable[[], float],
        paused: Callable[[], float],
        budgets: Callable[[], list[Budget]],
        pools: Callable[[], dict[str, Pool]],
    ) -> None:
        self.queue_depth.set_function(depth)
        self.in_flight.set_function(in_flight)
        self.paused.set_function(paused)
        self._budgets = _Budgets(budgets, pools)
        self.registry.register(self._budgets)
        self.registry.register(_Received(self))
        # Every budget's 429 series from the start, at 0: a rate() over a series that appears
        # with its first 429 misses that 429.
        for budget in budgets():
            self._rate_limited_child(budget)

    async def before_scrape(self) -> None:
        """Read what ``/metrics`` shows as of now rather than of the latest admission."""
        await self._budgets.refresh()

    def received(self) -> None:
        """One request arrived at an API endpoint (answered or not yet)."""
        self.total_received += 1
        self.received_minute.add()

    def answered(self, status: int) -> None:
        child = self._status_children.get(status)
        if child is None:
            child = self._status_children[status] = self.requests.labels(status=str(status))
        child.inc()
        self.total_requests += 1
        self.answered_minute.add()
        if status == 429:
            self.total_rate_limited += 1
        elif status >= 500:
            self.total_errors += 1

    def admitted(self, tokens: int, budget: Budget) -> None:
        child = self._budget_children.get(id(budget))
        if child is None:
            child = self._budget_children[id(budget)] = self.budget_admissions.labels(
                deployment=budget.deployment.name, model=budget.model
            )
        child.inc()
        self.admissions.inc()
        self._estimate.inc(tokens)
        self.total_admitted += 1
        self.admitted_minute.add()

    def upstream(self, status: int | str, seconds: float, budget: Budget | None = None) -> None:
        """One upstream attempt's outcome, for ``budget`` (its deployment and model)."""
        children = self._upstream_children.get(budget)
        if children is None:
            children = self._upstream_children[budget] = {}
        child = children.get(status)
        if child is None:
            child = children[status] = self.upstream_responses.labels(*_names(budget), str(status))
        child.inc()
        self.upstream_latency.observe(seconds)
        if status == 429:
            self.total_upstream_429 += 1

    def upstream_paused(self, budget: Budget | None = None) -> None:
        """An upstream 429 paused ``budget`` and its request went back to its queue."""
        self._rate_limited_child(budget).inc()

    def _rate_limited_child(self, budget: Budget | None) -> Counter:
        child = self._rate_limited_children.get(budget)
        if child is None:
            child = self._rate_limited_children[budget] = self.upstream_rate_limited.labels(*_names(budget))
        return child

    def waited(self, seconds: float) -> None:
        self.queue_wait.observe(seconds)
        self.recent_waits.append((time.monotonic(), seconds))

    def predicted(self, predicted_s: float, actual_s: float) -> None:
        """One admitted request's wait against its prediction (a histogram holds no negatives)."""
        error = actual_s - predicted_s
        (self._late if error >= 0 else self._early).observe(abs(error))

    def dispatched(self, lag_s: float) -> None:
        self.dispatch_lag.observe(lag_s)
        self.recent_lags.append(lag_s)
        self.max_lag = max(self.max_lag, lag_s)

    def lag_percentiles(self) -> tuple[float | None, float | None]:
        lags = list(self.recent_lags)
        return percentile(lags, 0.5), percentile(lags, 0.99)

    def wait_percentiles(self) -> tuple[float | None, float | None]:
        """Over the last answered requests (up to 4096, however old)."""
        waits = [w for _, w in self.recent_waits]
        return percentile(waits, 0.5), percentile(waits, 0.99)

    def waits(self, waiting_since: Iterable[float], window_s: float = WAIT_WINDOW_S) -> dict[str, Any]:
        """Queue waits of the requests answered in the last ``window_s`` and, so far, of those
        still waiting (their monotonic arrivals): a queue that admits nothing shows long waits."""
        now = time.monotonic()
        answered = [w for at, w in self.recent_waits if now - at <= window_s]
        waiting = [now - arrived for arrived in waiting_since]
        waits = answered + waiting
        return {
            "window_s": window_s,
            "answered": len(answered),
            "waiting": len(waiting),
            "p50_s": _rounded(percentile(waits, 0.5)),
            "p99_s": _rounded(percentile(waits, 0.99)),
            "max_s": _rounded(max(waits, default=None)),
        }

    def per_min(self) -> dict[str, int]:
        """Requests received, admitted and answered in the last 60 s (one-second steps)."""
        return {
            "received": self.received_minute.total(),
            "admitted": self.admitted_minute.total(),
            "answered": self.answered_minute.total(),
        }


def _names(budget: Budget | None) -> tuple[str, str]:
    """A budget's ``deployment`` and ``model`` labels (empty without one)."""
    return ("", "") if budget is None else (budget.deployment.name, budget.model)


def _rounded(value: float | None) -> float | None:
    """To the millisecond, as ``oldest_wait_s`` (rounding keeps order: max >= oldest holds)."""
    return None if value is None else round(value, 3)
