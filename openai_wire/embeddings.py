"""The embeddings API's request body and the base64 form of a vector."""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, field_validator

from openai_wire.schemas import INT32_MAX, STRICT, _integral
from ratelimit.tokens import split_inputs

MAX_INPUTS = 2048
"""Inputs one request may carry (OpenAI's and Azure OpenAI's cap)."""
MAX_DIMENSIONS = 3072
"""The largest embedding any served model has (text-embedding-3-large)."""

TokenId = Annotated[int, Field(ge=0, le=INT32_MAX), BeforeValidator(_integral)]
Text = Annotated[str, Field(min_length=1)]
Tokens = Annotated[list[TokenId], Field(min_length=1)]
# The constraints are in the types so that the schema states them; ``_not_empty`` words the errors.
EmbeddingInput = (
    Text
    | Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)]
    | Tokens
    | Annotated[list[Tokens], Field(min_length=1, max_length=MAX_INPUTS)]
)


SHAPES = "a string, a list of strings, an array of token ids or a list of such arrays"


def one_shape(value: Any) -> Any:
    """Refuse, in words, an input that is none of the four shapes (the union's own error names
    its internal members); the types then check the items."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise ValueError(f"must be {SHAPES}")
    kinds = {"text" if isinstance(v, str) else "array" if isinstance(v, list) else "token" for v in value}
    if len(kinds) > 1:
        raise ValueError(f"must be {SHAPES}, not a mix of them")
    return value


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``: a string, a list of strings, a token array or a list of them."""

    model_config = STRICT

    model: str = Field(min_length=1)
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] = "float"
    # The bounds before the validator, or the schema loses them (as in ``schemas``).
    dimensions: Annotated[int, Field(ge=1, le=MAX_DIMENSIONS), BeforeValidator(_integral)] | None = None
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        # OpenAI refuses empty inputs: an empty string or array has no embedding.
        if value in ("", []):
            raise ValueError("must not be empty")
        if not isinstance(value, list):
            return one_shape(value)
        if len(value) > MAX_INPUTS and not all(isinstance(v, int) for v in value):
            raise ValueError(f"must hold at most {MAX_INPUTS} inputs (got {len(value)})")
        if any(item in ("", []) for item in value):
            raise ValueError("must not contain an empty string or an empty token array")
        return one_shape(value)

    def inputs(self) -> list[str | Sequence[int]]:
        """Each input on its own: one embedding is answered per item."""
        return split_inputs(self.input)


def base64_vector(vector: Sequence[float]) -> str:
    """A vector as OpenAI sends it for ``encoding_format: base64``: little-endian float32."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
