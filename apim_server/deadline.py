"""Deadlines: a request's own timeout, when it would be admitted, and the 429 when that is too late.

At arrival the gateway predicts the wait from the budgets' own record: the costs queued ahead
of the request in its pool plus its own, asked of each member with ``peek`` (the store says
exactly when old costs leave the window, or when midnight frees the day), and the member's
pause. The earliest member is the prediction. When it falls after the deadline the request is
answered at once and never queued; a queued head whose deadline can no longer be met is
answered by its dispatcher (see ``Dispatcher``), so it never holds back the requests behind it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from openai_wire.errors import LIMIT_WORDS, APIError, clip
from openai_wire.headers import retry_after_headers
from ratelimit.limiter import Limiter
from ratelimit.limits import Cost, Decision, LimitState, Window

if TYPE_CHECKING:
    from apim_server.budget import Budget
    from apim_server.queue import Ticket
    from apim_server.routing import Pool
    from apim_server.store_health import StoreHealth

TIMEOUT_HEADER = "x-apim-timeout-ms"
EXPECTED_HEADER = "x-apim-expected-wait-ms"


def timeout_s(headers: Mapping[str, str], default_s: float) -> float:
    """The request's timeout: ``x-apim-timeout-ms`` if given (never beyond ``default_s``, the
    operator's APIM_QUEUE_TIMEOUT_S), else ``default_s``; a 400 for a value that is not a
    positive whole number of milliseconds."""
    raw = headers.get(TIMEOUT_HEADER)
    if raw is None:
        return default_s
    text = raw.strip()
    if not text.isascii() or not text.isdigit() or int(text) <= 0 or len(text) > 12:
        raise APIError(
            400,
            f"Invalid {TIMEOUT_HEADER} header: expected a positive whole number of milliseconds "
            f"(at most {round(default_s * 1000)}).",
            param=TIMEOUT_HEADER,
            code="invalid_timeout",
        )
    return min(default_s, int(text) / 1000)


@dataclass(frozen=True, slots=True)
class Prediction:
    """When a request would be admitted: ``wait_ms`` from now, and what binds it (None: a pause)."""

    wait_ms: int
    binding: LimitState | None = None
    cost: Cost | None = None  # what was asked: the queue ahead plus the request
    pause: str = "the upstream asked the gateway to pause"  # what holds it when no limit binds
    ahead: int = 0  # requests queued ahead of it, counted in ``cost``
    who: str = ""  # whose limit binds when it is not the model's budget ("tenant team-a")


NOW = Prediction(0)


class Unfittable(Exception):
    """A request cannot be admitted before its deadline: the 429 to answer at once."""

    def __init__(self, prediction: Prediction, timeout_s: float) -> None:
        super().__init__(prediction.wait_ms)
        self.prediction = prediction
        self.timeout_s = timeout_s

    def error(self, model: str) -> APIError:
        """OpenAI's rate-limit 429, naming the binding limit, with when the request would fit."""
        p = self.prediction
        wait_s = p.wait_ms / 1000
        later = (
            f"The gateway predicts it would be admitted in {wait_s:.3f}s, after this request's "
            f"deadline of {self.timeout_s:g}s ({TIMEOUT_HEADER} or APIM_QUEUE_TIMEOUT_S), so it "
            "was answered now instead of queued; it was not sent."
        )
        state = p.binding
        if state is None:
            message = f"Rate limit reached for {clip(model)}: {p.pause}. {later}"
            kind = "requests"
        else:
            words = LIMIT_WORDS.get(state.name, state.name)
            kind = "tokens" if state.name.startswith("tokens") else "requests"
            asked = p.cost.tokens if p.cost is not None and kind == "tokens" else None
            if asked is None and p.cost is not None:
                asked = p.cost.requests
            with_queue = f" (with the {p.ahead} queued ahead of it)" if p.ahead else ""
            subject = p.who or clip(model)
            message = (
                f"Rate limit reached for {subject} on {words}: Limit {state.limit}, Used {state.used}, "
                f"Requested {asked}{with_queue}. {later}"
            )
        return APIError(
            429, message, type=kind, code="rate_limit_exceeded", headers=retry_after_headers(p.wait_ms)
        )


def fits_now(decision: Decision | None, cost: Cost) -> bool:
    """Whether the latest decision leaves room for ``cost`` in every limit (no store call)."""
    if decision is None or not decision.allowed:
        return False
    for state in decision.states:
        if state.limit and state.remaining < (cost.requests if state.name.startswith("req") else cost.tokens):
            return False
    return True


async def predict(pool: Pool, ticket: Ticket, health: StoreHealth | None = None) -> Prediction:
    """When ``ticket``, about to join ``pool``'s queue, would be admitted (see the module)."""
    requests, tokens = pool.queue.ahead(ticket.priority, ticket.tenant)
    total = Cost(requests + ticket.cost.requests, tokens + ticket.cost.tokens)
    best = None
    if fits_now(pool.dispatcher.last_decision, total) and _ready_member(pool, ticket):
        # Room for all of it as of the latest admission: no store round trip on the hot path
        # (if another instance took that room meanwhile, the dispatcher finds out at the head).
        best = NOW
    if best is None:
        for member in pool.members:
            if member.limiter.too_large(ticket.cost) is not None:
                continue
            found = await member_prediction(member, total, requests)
            if best is None or found.wait_ms < best.wait_ms:
                best = found
    if best is None:
        return NOW  # no member could ever take it: refused elsewhere as too large
    tenant = ticket.tenant
    if tenant is not None and tenant.limiter is not None:
        # Its tenant's own sub-limits, with what the tenant has queued ahead of it in this pool.
        mine_r, mine_t = pool.queue.tenant_ahead(ticket.priority, tenant)
        own = Cost(mine_r + ticket.cost.requests, mine_t + ticket.cost.tokens)
        found = await limiter_prediction(tenant.limiter, tenant.key, own, mine_r)
        if found.wait_ms > best.wait_ms:
            best = replace(found, who=f"tenant {tenant.name}")
    held = health.wait_s() if health is not None else None
    if held is not None and held != math.inf and held * 1000 > best.wait_ms:
        reason = "admission is held while the limiter store's record is rebuilt (the store restarted)"
        best = Prediction(math.ceil(held * 1000), None, best.cost, reason, best.ahead)
    return best


def _ready_member(pool: Pool, ticket: Ticket) -> bool:
    return any(m.ready_in() <= 0 and m.limiter.too_large(ticket.cost) is None for m in pool.members)


async def member_prediction(member: Budget, total: Cost, ahead: int = 0) -> Prediction:
    """When ``total`` fits ``member``: its pause, or the store's wait for that cost."""
    found = await limiter_prediction(member.limiter, member.key, total, ahead)
    paused = math.ceil(member.ready_in() * 1000)
    return replace(found, wait_ms=paused) if paused > found.wait_ms else found


async def limiter_prediction(limiter: Limiter, key: str, total: Cost, ahead: int = 0) -> Prediction:
    """When ``total`` fits ``key``'s limits, as the store says.

    A total larger than a window's limit drains over several windows: each full window ahead
    adds its length, and the store is asked about the rest.
    """
    policy = limiter.policy
    extra_ms = 0
    requests, tokens = total.requests, total.tokens
    for window in policy.windows:
        for limit, amount in ((window.requests, requests), (window.tokens, tokens)):
            if limit and amount > limit:
                windows = (amount - 1) // limit
                extra_ms = max(extra_ms, windows * window.length_ms)
    if extra_ms:
        requests, tokens = _rest(policy.windows, requests, tokens)
    decision = await limiter.peek(key, Cost(requests, tokens))
    wait_ms = decision.wait_ms + extra_ms
    binding = decision.binding
    if binding is None and extra_ms:
        binding = _over(decision, total)
    return Prediction(wait_ms, binding, total, ahead=ahead)


def _rest(windows: tuple[Window, ...], requests: int, tokens: int) -> tuple[int, int]:
    """What is left of a cost beyond whole windows of every limit (at least one unit each)."""
    for window in windows:
        if window.requests and requests > window.requests:
            requests = (requests - 1) % window.requests + 1
        if window.tokens and tokens > window.tokens:
            tokens = (tokens - 1) % window.tokens + 1
    return requests, tokens


def _over(decision: Decision, total: Cost) -> LimitState | None:
    """The limit a total exceeds outright (its own wait is whole windows)."""
    for state in decision.states:
        amount = total.requests if state.name.startswith("req") else total.tokens
        if state.limit and amount > state.limit:
            return state
    return None
