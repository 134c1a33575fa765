"""The legacy completions API's request body (``POST /v1/completions``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from openai_wire.embeddings import TokenId
from openai_wire.schemas import INT32_MAX, STRICT, Int, StreamOptions
from ratelimit.tokens import split_inputs

DEFAULT_MAX_TOKENS = 16
"""OpenAI's default ``max_tokens`` for legacy completions (the API reference's)."""

Prompt = str | list[str] | list[TokenId] | list[list[TokenId]]


class CompletionRequest(BaseModel):
    """A legacy completion: one or several prompts, ``n`` (or ``best_of``) completions each."""

    model_config = STRICT

    model: str = Field(min_length=1)
    prompt: Prompt
    # 0 is allowed at OpenAI (with ``echo``, a prompt-only answer).
    max_tokens: Annotated[int, Field(ge=0, le=INT32_MAX)] | None = None
    n: Annotated[Int, Field(ge=1, le=128)] = 1
    best_of: Annotated[Int, Field(ge=1, le=20)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    echo: bool = False
    suffix: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    seed: Int | None = None
    user: str | None = None

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, value: Prompt) -> Prompt:
        if isinstance(value, list) and not value:
            raise ValueError("must not be an empty array")
        return value

    # Field validators, not a model validator: the error then names its parameter.
    @field_validator("best_of")
    @classmethod
    def _best_of_covers_n(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value < info.data.get("n", 1):
            raise ValueError("must be greater than or equal to n")
        return value

    @field_validator("stream")
    @classmethod
    def _no_best_of_stream(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("best_of") not in (None, 1):
            raise ValueError("cannot stream when best_of is greater than 1")
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def prompts(self) -> list[str | Sequence[int]]:
        """Each prompt on its own: ``n`` choices are answered per prompt."""
        return split_inputs(self.prompt)
