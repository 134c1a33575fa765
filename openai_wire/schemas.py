"""Request and response bodies of the chat completions API (the fields we read or write).

Unknown request fields are kept, not rejected: the gateway forwards them upstream as sent.
Known fields are strict, as at OpenAI: ``"max_tokens": "5"`` or ``"temperature": true`` is a 400,
not silently converted (the cost rule reads the raw body, so a converted value would be priced
differently from what it means).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

INT32_MAX = 2**31 - 1
STRICT = ConfigDict(extra="allow", strict=True)


def _integral(value: Any) -> Any:
    """JSON has one number type: ``2.0`` is the integer 2 (as JSON Schema says), ``2.5`` is not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_integral)]
# OpenAI refuses counts beyond a 32-bit integer with a 400; unbounded, they would reach the
# limiter as costs no store can count exactly. (Bounds inside Annotated: on the Optional they
# come out of the JSON schema as unknown keywords.)
TokenCount = Annotated[int, Field(ge=1, le=INT32_MAX), BeforeValidator(_integral)]


# Only these may go without content (an assistant's message may carry tool calls instead).
CONTENT_OPTIONAL = ("assistant", "function")


def _content_rule(schema: dict[str, Any]) -> None:
    """The same rule in the JSON schema (so fuzzers generate what the validator accepts)."""
    schema["anyOf"] = [
        {"properties": {"role": {"enum": list(CONTENT_OPTIONAL)}}},
        {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
    ]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra=_content_rule)

    role: Literal["system", "user", "assistant", "tool", "function", "developer"]
    content: str | list[dict[str, Any]] | None = Field(default=None, validate_default=True)
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _content(cls, value: Any, info: ValidationInfo) -> Any:
        role = info.data.get("role")
        if value is None and role is not None and role not in CONTENT_OPTIONAL:
            # OpenAI's words for a null or missing content.
            raise ValueError("expected a string, got null")
        return value


class StreamOptions(BaseModel):
    model_config = STRICT

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = STRICT

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: TokenCount | None = None
    max_completion_tokens: TokenCount | None = None
    n: Annotated[int, Field(ge=1, le=128), BeforeValidator(_integral)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    seed: Int | None = None
    user: str | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
