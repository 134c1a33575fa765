"""The shared rate-limit core: limits, costs, stores and token counting."""

from ratelimit.embedded import EmbeddedStore
from ratelimit.limiter import Limiter, open_store, status_limits
from ratelimit.limits import Cost, Decision, Limits, LimitState, Policy, Window
from ratelimit.redis_store import RedisStore
from ratelimit.store import Store

__all__ = [
    "Cost",
    "Decision",
    "EmbeddedStore",
    "LimitState",
    "Limiter",
    "Limits",
    "Policy",
    "RedisStore",
    "Store",
    "Window",
    "open_store",
    "status_limits",
]
