"""What every endpoint of the mock shares: how it is priced and what an admitted request answers.

The limits, faults, headers and accounting are the same for every endpoint (``routes``); an
``Endpoint`` only says which schema and models it takes and builds its answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel

from llm_mock_server.rejections import model_not_found, unsupported_model
from openai_wire.endpoints import ApiEndpoint
from ratelimit.cost import Operation


@dataclass(slots=True)
class Reply:
    """An admitted request's answer: a JSON body, or the frames of a stream.

    A stream is ``head`` (at the first token), one frame per generated token step, then
    ``tail``: the pacing of every endpoint is the same and lives in ``routes``.
    """

    prompt_tokens: int
    completion_tokens: int
    steps: int = 0
    body: bytes = b""
    stream: bool = False
    head: bytes = b""
    frames: Sequence[bytes] = field(default_factory=tuple)
    tail: bytes = b""


class Endpoint:
    """One POST endpoint: its path, schema, the models it serves and its answers."""

    api: ClassVar[ApiEndpoint]

    def __init__(self, models: Sequence[str], other_models: Sequence[str], seed: int) -> None:
        self.models = frozenset(models)
        self.other_models = frozenset(other_models)
        self.seed = seed

    @property
    def path(self) -> str:
        return self.api.path

    @property
    def operation(self) -> Operation:
        return self.api.operation

    @property
    def schema(self) -> type[BaseModel]:
        return self.api.schema

    @property
    def azure_operation(self) -> str:
        return self.api.azure_operation

    def check_model(self, model: str) -> None:
        if model in self.models:
            return
        if model in self.other_models:
            raise unsupported_model(model, self.path)
        raise model_not_found(model)

    def check(self, body: Any) -> None:
        """Refuse what this endpoint cannot answer, before admission (nothing is charged)."""

    def reply(self, data: dict[str, Any], body: Any, prompt_tokens: int) -> Reply:
        raise NotImplementedError
