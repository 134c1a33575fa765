"""The levels a budget follows, as every instance on one Redis sees them: one small hash beside
the budget's record (same hash tag, so the same Cluster slot), one field per limit and kind of
evidence, newest write winning."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from ratelimit.redis_store import RedisStore

KEY_TTL_MS = 15 * 60_000
"""The hash outlives its longest-held field (``following.LIMIT_HOLD_MS``); every write renews it."""


@dataclass(slots=True)
class Level:
    """One limit's level from one kind of evidence, or its end.

    ``value`` None is a level that ended (the upstream recovered): kept, with its time, so that
    the recovery travels between instances like the level did.
    """

    value: int | None
    model: str  # the model whose answers set it: only they end or raise it
    since_ms: int  # wall clock: when this level began
    updated_ms: int  # wall clock of the latest change or confirmation; the newest write wins
    until_ms: int  # wall clock: it lapses then unless an answer confirms it again

    def active(self, now_ms: int) -> bool:
        return self.value is not None and now_ms < self.until_ms

    def dumps(self) -> str:
        return json.dumps(
            {"v": self.value, "m": self.model, "s": self.since_ms, "u": self.updated_ms, "t": self.until_ms},
            separators=(",", ":"),
        )

    @classmethod
    def loads(cls, raw: bytes | str) -> Level | None:
        """A stored level, or None for anything malformed (never trusted blindly)."""
        try:
            data = json.loads(raw)
            value = data["v"]
            if value is not None and (not isinstance(value, int) or value < 1):
                return None
            return cls(value, str(data["m"]), int(data["s"]), int(data["u"]), int(data["t"]))
        except (ValueError, KeyError, TypeError):
            return None


class FollowRecords:
    """Reads and writes the levels of budgets in a Redis store."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store

    def key(self, budget_key: str) -> str:
        return f"{{{self.store.prefix}:{budget_key}}}:follow"

    async def read(self, budget_keys: Iterable[str]) -> dict[str, dict[str, Level]]:
        """Every field of the named budgets' hashes, in one pipeline (split per node on a Cluster)."""
        keys = list(budget_keys)
        if not keys:
            return {}
        pipe = (await self.store.client()).pipeline(transaction=False)
        for budget_key in keys:
            pipe.hgetall(self.key(budget_key))
        rows = await pipe.execute()
        out: dict[str, dict[str, Level]] = {}
        for budget_key, row in zip(keys, rows, strict=True):
            fields = {}
            for name, raw in (row or {}).items():
                level = Level.loads(raw)
                if level is not None:
                    fields[name.decode() if isinstance(name, bytes) else str(name)] = level
            out[budget_key] = fields
        return out

    async def write(self, budget_key: str, fields: dict[str, Level]) -> None:
        key = self.key(budget_key)
        pipe = (await self.store.client()).pipeline(transaction=False)
        pipe.hset(key, mapping={name: level.dumps() for name, level in fields.items()})
        pipe.pexpire(key, KEY_TTL_MS)
        await pipe.execute()
