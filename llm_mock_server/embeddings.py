"""``POST /v1/embeddings``: deterministic unit vectors, the same input always giving the same one.

A vector is drawn from a hash of (seed, model, input) at the model's native size; ``dimensions``
keeps its first N components and normalises them again, as OpenAI's text-embedding-3 models
shorten theirs. Components are float32 values (what base64 carries), so the float and base64
forms of one answer hold the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from llm_mock_server.reply import Endpoint, Reply
from openai_wire.embeddings import EmbeddingRequest, base64_vector
from openai_wire.endpoints import EMBEDDINGS
from openai_wire.errors import APIError
from ratelimit.tokens import TokenCounter

NATIVE_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
DEFAULT_DIMENSIONS = 1536
"""The size of a configured model the table does not know."""
FIXED_SIZE = frozenset({"text-embedding-ada-002"})
"""Models that refuse ``dimensions`` at OpenAI (only text-embedding-3 and later shorten)."""
MAX_INPUT_TOKENS = 8192
"""The context of OpenAI's embedding models: a longer input is a 400, not a truncation."""


def native_dimensions(model: str) -> int:
    return NATIVE_DIMENSIONS.get(model, DEFAULT_DIMENSIONS)


# A native vector of 3,072 floats is ~100 KB as a tuple: a small cache, keyed by a digest so
# that long inputs are not kept alive as keys.
@lru_cache(maxsize=128)
def _native(digest: bytes, size: int) -> tuple[float, ...]:
    raw = struct.unpack(f"<{size}i", hashlib.shake_256(digest).digest(4 * size))
    return tuple(v / 2**31 for v in raw)


def unit_vector(seed: int, model: str, item: str | Sequence[int], dimensions: int | None) -> list[float]:
    """The embedding of one input: length 1 (to float32 precision), ``dimensions`` long."""
    key = item if isinstance(item, str) else tuple(item)
    digest = hashlib.blake2b(repr((seed, model, key)).encode(), digest_size=32).digest()
    values = _native(digest, native_dimensions(model))[: dimensions or None]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    scaled = [v / norm for v in values]
    # Round through float32, as the model's own output is.
    return list(struct.unpack(f"<{len(scaled)}f", struct.pack(f"<{len(scaled)}f", *scaled)))


class EmbeddingsEndpoint(Endpoint):
    api = EMBEDDINGS

    def __init__(
        self,
        models: Sequence[str],
        other_models: Sequence[str],
        seed: int,
        counter: TokenCounter | None = None,
    ) -> None:
        super().__init__(models, other_models, seed)
        self.counter = counter or TokenCounter()

    def check(self, body: EmbeddingRequest) -> None:
        for item in body.inputs():
            tokens = self.counter.count_inputs(item, body.model)
            if tokens > MAX_INPUT_TOKENS:
                raise APIError(
                    400,
                    f"This model's maximum context length is {MAX_INPUT_TOKENS} tokens, however you "
                    f"requested {tokens} tokens ({tokens} in your prompt; 0 for the completion). Please "
                    "reduce your prompt; or completion length.",
                    param=None,
                    code=None,
                )
        if body.dimensions is None:
            return
        if body.model in FIXED_SIZE:
            raise APIError(
                400, "This model does not support specifying dimensions.", param="dimensions", code=None
            )
        native = native_dimensions(body.model)
        if body.dimensions > native:
            raise APIError(
                400,
                f"Invalid value for 'dimensions' = {body.dimensions}. Must be less than or equal to "
                f"{native} for {body.model}.",
                param="dimensions",
                code="invalid_value",
            )

    def reply(self, data: dict[str, Any], body: EmbeddingRequest, prompt_tokens: int) -> Reply:
        rows = []
        for index, item in enumerate(body.inputs()):
            vector = unit_vector(self.seed, body.model, item, body.dimensions)
            shown = json.dumps(base64_vector(vector)) if body.encoding_format == "base64" else _floats(vector)
            rows.append(f'{{"object":"embedding","index":{index},"embedding":{shown}}}')
        content = (
            f'{{"object":"list","data":[{",".join(rows)}],"model":{json.dumps(body.model)},'
            f'"usage":{{"prompt_tokens":{prompt_tokens},"total_tokens":{prompt_tokens}}}}}'
        )
        return Reply(prompt_tokens, 0, body=content.encode())


def _floats(vector: list[float]) -> str:
    return "[" + ",".join(map(repr, vector)) + "]"
