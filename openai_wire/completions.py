"""The legacy completions API's request body (``POST /v1/completions``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field, field_validator

from openai_wire.embeddings import TokenId, one_shape
from openai_wire.schemas import INT32_MAX, STRICT, Int, StreamOptions, _integral
from ratelimit.tokens import split_inputs

DEFAULT_MAX_TOKENS = 16
"""OpenAI's default ``max_tokens`` for legacy completions (the API reference's)."""

Prompt = (
    str
    | Annotated[list[str], Field(min_length=1)]
    | Annotated[list[TokenId], Field(min_length=1)]
    | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1)]
)


class CompletionRequest(BaseModel):
    """A legacy completion: one or several prompts, ``n`` (or ``best_of``) completions each."""

    model_config = STRICT

    model: str = Field(min_length=1)
    prompt: Prompt
    # 0 is allowed at OpenAI (with ``echo``, a prompt-only answer).
    max_tokens: Annotated[int, Field(ge=0, le=INT32_MAX), BeforeValidator(_integral)] | None = None
    # Bounds before the validator, or the schema loses them (as in ``schemas``).
    n: Annotated[int, Field(ge=1, le=128), BeforeValidator(_integral)] = 1
    # best_of below n, or with stream, is a 400 at OpenAI; here the larger of the two is generated
    # (and charged) and streaming is allowed: a cross-field rule the schema could not state.
    best_of: Annotated[int, Field(ge=1, le=20), BeforeValidator(_integral)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    echo: bool = False
    suffix: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    seed: Int | None = None
    user: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        # Worded here; the types carry the same constraint for the schema.
        if value == [] or (isinstance(value, list) and [] in value):
            raise ValueError("must not be an empty array")
        return one_shape(value)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def prompts(self) -> list[str | Sequence[int]]:
        """Each prompt on its own: ``n`` choices are answered per prompt."""
        return split_inputs(self.prompt)
