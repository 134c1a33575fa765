"""``POST /v1/responses``: generated text as a ``response`` object or OpenAI's event stream.

The mock keeps no state: ``previous_response_id`` is refused with a 400 that says so, and
``store`` is accepted but nothing is stored.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from llm_mock_server.completion import Choice, generate, request_digest
from llm_mock_server.reply import Endpoint, Reply
from openai_wire import responses as events
from openai_wire.endpoints import RESPONSES
from openai_wire.errors import APIError
from openai_wire.responses import ResponsesRequest
from openai_wire.sse import named_event


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt_tokens + completion_tokens,
    }


class ResponseWriter:
    """The objects of one response: the response, its one message and text part, the events."""

    def __init__(self, body: ResponsesRequest, choice: Choice, prompt_tokens: int) -> None:
        self.body = body
        self.choice = choice
        self.prompt_tokens = prompt_tokens
        self.id = "resp_" + os.urandom(24).hex()
        self.message_id = "msg_" + os.urandom(24).hex()
        self.created = int(time.time())
        self.done = "incomplete" if choice.finish_reason == "length" else "completed"
        self.sequence = 0

    def part(self, text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def message(self, status: str, text: str | None) -> dict[str, Any]:
        content = [] if text is None else [self.part(text)]
        return {
            "id": self.message_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def response(self, status: str, output: list[dict[str, Any]], final: bool) -> dict[str, Any]:
        b = self.body
        cut = final and status == "incomplete"
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "background": False,
            "completed_at": int(time.time()) if final and status == "completed" else None,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
            "instructions": b.instructions,
            "max_output_tokens": b.max_output_tokens,
            "model": b.model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": False,
            "temperature": 1.0 if b.temperature is None else b.temperature,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0 if b.top_p is None else b.top_p,
            "truncation": "disabled",
            "usage": _usage(self.prompt_tokens, self.choice.tokens) if final else None,
            "user": b.user,
            "metadata": {},
        }

    def final(self) -> dict[str, Any]:
        return self.response(self.done, [self.message(self.done, self.choice.text)], final=True)

    def event(self, type: str, **fields: Any) -> bytes:
        payload = {"type": type, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return named_event(payload)

    def item(self, **fields: Any) -> dict[str, Any]:
        return {"item_id": self.message_id, "output_index": 0, "content_index": 0, **fields}


class ResponsesEndpoint(Endpoint):
    api = RESPONSES

    def check(self, body: ResponsesRequest) -> None:
        if body.previous_response_id is not None:
            raise APIError(
                400,
                f"Previous response with id '{body.previous_response_id}' not found: the mock keeps no "
                "state between requests, so previous_response_id cannot be used. Send the conversation "
                "in `input` instead.",
                param="previous_response_id",
                code="previous_response_not_found",
            )

    def reply(self, data: dict[str, Any], body: ResponsesRequest, prompt_tokens: int) -> Reply:
        digest = request_digest(self.seed, body.model, (body.instructions, data["input"]), None)
        choice = generate(digest, 0, body.max_output_tokens, body.model)
        w = ResponseWriter(body, choice, prompt_tokens)
        if not body.stream:
            return Reply(prompt_tokens, choice.tokens, len(choice.pieces), body=_json(w.final()))
        started = w.response("in_progress", [], final=False)
        head = b"".join(
            [
                w.event(events.CREATED, response=started),
                w.event(events.IN_PROGRESS, response=started),
                w.event(events.ITEM_ADDED, output_index=0, item=w.message("in_progress", None)),
                w.event(events.PART_ADDED, **w.item(part=w.part(""))),
            ]
        )
        frames = [w.event(events.TEXT_DELTA, **w.item(delta=piece, logprobs=[])) for piece in choice.pieces]
        final = w.final()
        tail = b"".join(
            [
                w.event(events.TEXT_DONE, **w.item(text=choice.text, logprobs=[])),
                w.event(events.PART_DONE, **w.item(part=w.part(choice.text))),
                w.event(events.ITEM_DONE, output_index=0, item=final["output"][0]),
                w.event(events.COMPLETED if w.done == "completed" else events.INCOMPLETE, response=final),
            ]
        )
        return Reply(
            prompt_tokens,
            choice.tokens,
            len(choice.pieces),
            stream=True,
            head=head,
            frames=frames,
            tail=tail,
        )


def _json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()
