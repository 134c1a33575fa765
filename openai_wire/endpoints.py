"""The OpenAI API's POST endpoints both services serve: path, request schema, cost operation."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from openai_wire.completions import CompletionRequest
from openai_wire.embeddings import EmbeddingRequest
from openai_wire.responses import ResponsesRequest
from openai_wire.schemas import ChatCompletionRequest
from ratelimit.cost import Operation


@dataclass(frozen=True, slots=True)
class ApiEndpoint:
    path: str
    """Under the API's base URL (``/v1``), as the SDKs call it."""
    operation: Operation
    """What the cost rules read of the body."""
    schema: type[BaseModel]
    azure_operation: str
    """How Azure OpenAI names the operation in its 429 messages."""


CHAT = ApiEndpoint("/v1/chat/completions", Operation.CHAT, ChatCompletionRequest, "ChatCompletions_Create")
EMBEDDINGS = ApiEndpoint("/v1/embeddings", Operation.EMBEDDINGS, EmbeddingRequest, "Embeddings_Create")
# No Azure 429 for the Responses API was found quoted; the name follows the pattern.
RESPONSES = ApiEndpoint("/v1/responses", Operation.RESPONSES, ResponsesRequest, "Responses_Create")
COMPLETIONS = ApiEndpoint("/v1/completions", Operation.COMPLETIONS, CompletionRequest, "Completions_Create")
BY_PATH = {e.path: e for e in (CHAT, EMBEDDINGS, RESPONSES, COMPLETIONS)}
