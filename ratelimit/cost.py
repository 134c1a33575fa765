"""How much a chat request costs at admission, before its answer exists."""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from ratelimit.limits import Cost
from ratelimit.tokens import CHARS_PER_TOKEN, TokenCounter


class CostRule(StrEnum):
    """``sum``: prompt tokens + max tokens (Azure OpenAI; never under-counts either).
    ``max``: the larger of max tokens and a character-based estimate (OpenAI's guide)."""

    SUM = "sum"
    MAX = "max"


class CostEstimator:
    """Turns a chat completion request body into the cost charged at admission."""

    def __init__(
        self,
        rule: CostRule = CostRule.SUM,
        default_max_tokens: int = 1024,
        counter: TokenCounter | None = None,
    ) -> None:
        self.rule = CostRule(rule)
        self.default_max_tokens = default_max_tokens
        self.counter = counter or TokenCounter()

    def max_tokens(self, body: Mapping[str, Any]) -> int:
        for name in ("max_completion_tokens", "max_tokens"):
            value = _int(body.get(name))
            if value is not None:
                return value
        return self.default_max_tokens

    def prompt_tokens(self, body: Mapping[str, Any]) -> int:
        return self.counter.count_messages(
            body.get("messages") or [], str(body.get("model", "")), body.get("tools")
        )

    def estimate(self, body: Mapping[str, Any], prompt_tokens: int | None = None) -> Cost:
        """The cost of ``body``; pass ``prompt_tokens`` if already counted."""
        completion = self.max_tokens(body) * max(1, _int(body.get("n")) or 1)
        if self.rule is CostRule.MAX:
            chars = sum(
                len(str(m.get("content") or "")) for m in body.get("messages") or [] if isinstance(m, Mapping)
            )
            return Cost(1, max(completion, math.ceil(chars / CHARS_PER_TOKEN)))
        prompt = self.prompt_tokens(body) if prompt_tokens is None else prompt_tokens
        return Cost(1, prompt + completion)


def _int(value: Any) -> int | None:
    """An integer as the request schema reads one: ``300.0`` is 300 (JSON has one number type,
    and the upstream reads it so), ``true`` and ``300.5`` are not integers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None
