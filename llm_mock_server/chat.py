"""``POST /v1/chat/completions``: generated text as a ``chat.completion`` or a chunk stream."""

from __future__ import annotations

from typing import Any

from llm_mock_server.completion import (
    ChunkWriter,
    completion_json,
    generate,
    new_completion_id,
    request_digest,
)
from llm_mock_server.reply import Endpoint, Reply
from openai_wire.endpoints import CHAT
from openai_wire.schemas import ChatCompletionRequest
from openai_wire.sse import DONE, event


class ChatEndpoint(Endpoint):
    api = CHAT

    def reply(self, data: dict[str, Any], body: ChatCompletionRequest, prompt_tokens: int) -> Reply:
        model = body.model
        digest = request_digest(self.seed, model, data["messages"], body.seed)
        choices = [generate(digest, i, body.token_limit, model) for i in range(body.n)]
        completion_id = new_completion_id()
        completion_tokens = sum(c.tokens for c in choices)
        steps = max(len(c.pieces) for c in choices)
        if not body.stream:
            content = completion_json(completion_id, model, choices, prompt_tokens)
            return Reply(prompt_tokens, completion_tokens, steps, body=content)
        writer = ChunkWriter(completion_id, model)
        frames = [
            b"".join(
                event(writer.content(i, c.pieces[step]))
                for i, c in enumerate(choices)
                if step < len(c.pieces)
            )
            for step in range(steps)
        ]
        tail = [event(writer.finish(i, c.finish_reason)) for i, c in enumerate(choices)]
        if body.include_usage:
            tail.append(event(writer.usage(prompt_tokens, completion_tokens)))
        tail.append(DONE)
        return Reply(
            prompt_tokens,
            completion_tokens,
            steps,
            stream=True,
            head=b"".join(event(writer.role(i)) for i in range(len(choices))),
            frames=frames,
            tail=b"".join(tail),
        )
