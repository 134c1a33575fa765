"""The embeddings API's request body and the base64 form of a vector."""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator

from openai_wire.schemas import INT32_MAX, STRICT, Int
from ratelimit.tokens import split_inputs

MAX_INPUTS = 2048
"""Inputs one request may carry (OpenAI's and Azure OpenAI's cap)."""

TokenId = Annotated[int, Field(ge=0, le=INT32_MAX)]
EmbeddingInput = str | list[str] | list[TokenId] | list[list[TokenId]]


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``: a string, a list of strings, a token array or a list of them."""

    model_config = STRICT

    model: str = Field(min_length=1)
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[Int, Field(ge=1)] | None = None
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: EmbeddingInput) -> EmbeddingInput:
        # OpenAI refuses empty inputs: an empty string or array has no embedding.
        if isinstance(value, str):
            if not value:
                raise ValueError("must not be an empty string")
            return value
        if not value:
            raise ValueError("must not be an empty array")
        if len(value) > MAX_INPUTS and not isinstance(value[0], int):
            raise ValueError(f"must hold at most {MAX_INPUTS} inputs (got {len(value)})")
        if any(isinstance(item, str | list) and not item for item in value):
            raise ValueError("must not contain an empty string or an empty token array")
        return value

    def inputs(self) -> list[str | Sequence[int]]:
        """Each input on its own: one embedding is answered per item."""
        return split_inputs(self.input)


def base64_vector(vector: Sequence[float]) -> str:
    """A vector as OpenAI sends it for ``encoding_format: base64``: little-endian float32."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
