"""Counters of what the mock answered: Prometheus metrics and the totals of ``/status``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from ratelimit.limits import Decision

CLIENT_CLOSED = 499  # nginx's code for a client that hung up before the answer ended
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass(slots=True)
class Totals:
    """What ``/status`` reports under ``totals``."""

    requests: int = 0
    ok: int = 0
    rate_limited: int = 0
    capacity: int = 0  # capacity 429s (the service's load, not a key's limits)
    errors: int = 0


class Metrics:
    """One registry per app, so several apps in one process (tests) never collide."""

    def __init__(self, models: Iterable[str]) -> None:
        self.models = frozenset(models)
        self.totals = Totals()
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter(
            "llm_mock_requests", "Chat requests, by model and status", ["model", "status"], registry=r
        )
        self.tokens = Counter(
            "llm_mock_tokens", "Tokens in answered requests, by model and kind", ["model", "kind"], registry=r
        )
        self.rate_limited = Counter(
            "llm_mock_rate_limited",
            "429 answers for rate limits, by limit and reason (limit, too_large, forced)",
            ["limit", "reason"],
            registry=r,
        )
        self.faults = Counter("llm_mock_faults", "Injected faults, by kind", ["fault"], registry=r)
        self.latency = Histogram(
            "llm_mock_request_duration_seconds",
            "Time from a chat request's arrival to the end of its answer",
            ["stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.remaining = Gauge(
            "llm_mock_ratelimit_remaining",
            "Budget left in each limit, by API key",
            ["api_key", "limit"],
            registry=r,
        )
        self.limit = Gauge("llm_mock_ratelimit_limit", "Configured size of each limit", ["limit"], registry=r)
        # Labelled children are looked up once: .labels() costs more than the increment.
        self._children: dict[tuple[str, ...], MetricWrapperBase] = {}

    def _child(self, metric: MetricWrapperBase, *labels: str) -> MetricWrapperBase:
        key = (metric._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def model_label(self, model: str | None) -> str:
        return model if model in self.models else "other"

    def answered(
        self,
        model: str | None,
        status: int,
        seconds: float,
        stream: bool,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        """Count one chat request once its answer is complete (or dropped: status 0)."""
        label = self.model_label(model)
        self._child(self.requests, label, str(status) if status else "dropped").inc()  # type: ignore[attr-defined]
        self._child(self.latency, "true" if stream else "false").observe(seconds)  # type: ignore[attr-defined]
        if prompt_tokens:
            self._child(self.tokens, label, "prompt").inc(prompt_tokens)  # type: ignore[attr-defined]
        if completion_tokens:
            self._child(self.tokens, label, "completion").inc(completion_tokens)  # type: ignore[attr-defined]
        if status == 200:
            self.totals.ok += 1
        elif status not in (429, CLIENT_CLOSED):
            self.totals.errors += 1

    def limited(self, limit: str, reason: str) -> None:
        """A 429 for a rate limit: ``limit`` is full, the request is ``too_large``, or ``forced``."""
        self.totals.rate_limited += 1
        self._child(self.rate_limited, limit, reason).inc()  # type: ignore[attr-defined]

    def fault(self, fault: str) -> None:
        self._child(self.faults, fault).inc()  # type: ignore[attr-defined]

    def budget(self, api_key_label: str, decision: Decision, names: dict[str, str]) -> None:
        """Set the remaining-budget gauges of one key from a peek."""
        for state in decision.states:
            if not state.limit:
                continue
            name = names[state.name]
            self.remaining.labels(api_key_label, name).set(state.remaining)
            self.limit.labels(name).set(state.limit)

    def render(self) -> bytes:
        return generate_latest(self.registry)
