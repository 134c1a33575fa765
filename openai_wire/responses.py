"""The Responses API: its request body, its stream's event types, and where its usage is."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field, field_validator

from openai_wire.schemas import INT32_MAX, STRICT, _integral

MIN_OUTPUT_TOKENS = 16
"""OpenAI refuses a smaller ``max_output_tokens`` with a 400."""
ROLES = frozenset({"user", "assistant", "system", "developer"})

# The events of a streamed text answer, in the order OpenAI sends them; deltas repeat.
CREATED = "response.created"
IN_PROGRESS = "response.in_progress"
ITEM_ADDED = "response.output_item.added"
PART_ADDED = "response.content_part.added"
TEXT_DELTA = "response.output_text.delta"
TEXT_DONE = "response.output_text.done"
PART_DONE = "response.content_part.done"
ITEM_DONE = "response.output_item.done"
COMPLETED = "response.completed"
INCOMPLETE = "response.incomplete"
FAILED = "response.failed"
FINAL_EVENTS = frozenset({COMPLETED, INCOMPLETE, FAILED})
"""The events that end a stream; each carries the whole response, its ``usage`` included."""


class ResponsesRequest(BaseModel):
    """``POST /v1/responses`` with text input: a string, or a list of input items."""

    model_config = STRICT

    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: (
        Annotated[int, Field(ge=MIN_OUTPUT_TOKENS, le=INT32_MAX), BeforeValidator(_integral)] | None
    ) = None
    stream: bool = False
    store: bool | None = None
    previous_response_id: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _messages(cls, value: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        if isinstance(value, str):
            return value
        for item in value:
            # Messages are checked; other items (tool outputs, reasoning) pass as sent.
            if "role" in item or item.get("type") == "message":
                if item.get("role") not in ROLES:
                    raise ValueError(f"a message's role must be one of {', '.join(sorted(ROLES))}")
                if not isinstance(item.get("content"), str | list):
                    raise ValueError("a message's content must be a string or a list of parts")
        return value


def usage_of(event: Mapping[str, Any]) -> tuple[int, int] | None:
    """(input tokens, output tokens) of a final stream event or a response body, if present."""
    response = event.get("response", event) if event.get("type") in FINAL_EVENTS else event
    usage = response.get("usage") if isinstance(response, Mapping) else None
    if not isinstance(usage, Mapping):
        return None
    tokens = usage.get("input_tokens"), usage.get("output_tokens")
    if all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        return tokens  # type: ignore[return-value]
    return None
