"""How much a request costs at admission, before its answer exists: chat, embeddings,
Responses API and legacy completions, priced by one estimator both services use."""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from ratelimit.limits import Cost
from ratelimit.tokens import CHARS_PER_TOKEN, TokenCounter, split_inputs

LEGACY_DEFAULT_MAX_TOKENS = 16
"""What OpenAI's legacy completions generate when ``max_tokens`` is absent (its API reference)."""


class CostRule(StrEnum):
    """``sum``: prompt tokens + max tokens (Azure OpenAI; never under-counts either).
    ``max``: the larger of max tokens and a character-based estimate (OpenAI's guide)."""

    SUM = "sum"
    MAX = "max"


class Operation(StrEnum):
    """The API a request body belongs to: it says where the prompt and the output cap are."""

    CHAT = "chat"
    EMBEDDINGS = "embeddings"
    RESPONSES = "responses"
    COMPLETIONS = "completions"


class CostEstimator:
    """Turns a request body into the cost charged at admission."""

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
        """A chat request's output cap per choice."""
        for name in ("max_completion_tokens", "max_tokens"):
            value = _int(body.get(name))
            if value is not None:
                return value
        return self.default_max_tokens

    def output_tokens(self, body: Mapping[str, Any], operation: Operation = Operation.CHAT) -> int:
        """The most output the request may produce: what the cost charges besides its prompt."""
        if operation is Operation.CHAT:
            return self.max_tokens(body) * max(1, _int_or(body.get("n"), 1))
        if operation is Operation.RESPONSES:
            return _int_or(body.get("max_output_tokens"), self.default_max_tokens)
        if operation is Operation.COMPLETIONS:
            per_choice = _int_or(body.get("max_tokens"), LEGACY_DEFAULT_MAX_TOKENS)
            # best_of completions are generated (and billed) server-side; n of them are returned.
            choices = max(1, _int_or(body.get("n"), 1), _int_or(body.get("best_of"), 1))
            return per_choice * choices * max(1, len(split_inputs(body.get("prompt"))))
        return 0  # embeddings produce no tokens

    def prompt_tokens(self, body: Mapping[str, Any], operation: Operation = Operation.CHAT) -> int:
        model = str(body.get("model", ""))
        if operation is Operation.CHAT:
            return self.counter.count_messages(body.get("messages") or [], model, body.get("tools"))
        if operation is Operation.EMBEDDINGS:
            return self.counter.count_inputs(body.get("input"), model)
        if operation is Operation.COMPLETIONS:
            return self.counter.count_inputs(body.get("prompt"), model)
        return self.counter.count_response_input(body.get("input"), body.get("instructions"), model)

    def estimate(
        self,
        body: Mapping[str, Any],
        prompt_tokens: int | None = None,
        operation: Operation = Operation.CHAT,
    ) -> Cost:
        """The cost of ``body``; pass ``prompt_tokens`` if already counted."""
        if operation is Operation.EMBEDDINGS:
            # Nothing to estimate: the input is the whole cost, under either rule.
            return Cost(1, self.prompt_tokens(body, operation) if prompt_tokens is None else prompt_tokens)
        output = self.output_tokens(body, operation)
        if self.rule is CostRule.MAX:
            return Cost(1, max(output, math.ceil(_chars(body, operation) / CHARS_PER_TOKEN)))
        prompt = self.prompt_tokens(body, operation) if prompt_tokens is None else prompt_tokens
        return Cost(1, prompt + output)


def _chars(body: Mapping[str, Any], operation: Operation) -> int:
    """The characters OpenAI's guide estimates tokens from (token arrays count one per token)."""
    if operation is Operation.CHAT:
        return sum(
            len(str(m.get("content") or "")) for m in body.get("messages") or [] if isinstance(m, Mapping)
        )
    if operation is Operation.COMPLETIONS:
        return sum(len(item) for item in split_inputs(body.get("prompt")))
    instructions = body.get("instructions")
    total = len(instructions) if isinstance(instructions, str) else 0
    value = body.get("input")
    if isinstance(value, str):
        return total + len(value)
    for item in value if isinstance(value, list) else []:
        if isinstance(item, Mapping):
            total += len(str(item.get("content") or ""))
    return total


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


def _int_or(value: Any, default: int) -> int:
    number = _int(value)
    return default if number is None else number
