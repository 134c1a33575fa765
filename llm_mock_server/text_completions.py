"""``POST /v1/completions`` (legacy): ``n`` generated completions per prompt, plain or streamed."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from llm_mock_server.completion import SYSTEM_FINGERPRINT, Choice, generate, request_digest
from llm_mock_server.reply import Endpoint, Reply
from openai_wire.completions import DEFAULT_MAX_TOKENS, CompletionRequest
from openai_wire.endpoints import COMPLETIONS
from openai_wire.sse import DONE, event


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class TextCompletionsEndpoint(Endpoint):
    api = COMPLETIONS

    def reply(self, data: dict[str, Any], body: CompletionRequest, prompt_tokens: int) -> Reply:
        model = body.model
        limit = DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
        generated = max(body.n, body.best_of or 1)
        choices: list[tuple[str, Choice]] = []
        completion_tokens = 0
        for prompt in body.prompts():
            digest = request_digest(self.seed, model, prompt, body.seed)
            # best_of candidates are generated and billed; the first n are returned.
            drawn = [generate(digest, i, limit, model) for i in range(generated)]
            completion_tokens += sum(c.tokens for c in drawn)
            echo = prompt if body.echo and isinstance(prompt, str) else ""
            choices += [(echo, c) for c in drawn[: body.n]]
        base = {
            "id": "cmpl-" + os.urandom(15).hex(),
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        steps = max(len(c.pieces) for _, c in choices)
        if not body.stream:
            payload = {
                **base,
                "choices": [
                    {"text": echo + c.text, "index": i, "logprobs": None, "finish_reason": c.finish_reason}
                    for i, (echo, c) in enumerate(choices)
                ],
                "usage": _usage(prompt_tokens, completion_tokens),
            }
            return Reply(prompt_tokens, completion_tokens, steps, body=_json(payload))

        def chunk(index: int, text: str, finish: str | None = None) -> bytes:
            choice = {"text": text, "index": index, "logprobs": None, "finish_reason": finish}
            return event({**base, "choices": [choice]})

        head = b"".join(chunk(i, echo) for i, (echo, _) in enumerate(choices) if echo)
        frames = [
            b"".join(chunk(i, c.pieces[step]) for i, (_, c) in enumerate(choices) if step < len(c.pieces))
            for step in range(steps)
        ]
        tail = [chunk(i, "", c.finish_reason) for i, (_, c) in enumerate(choices)]
        if body.include_usage:
            tail.append(event({**base, "choices": [], "usage": _usage(prompt_tokens, completion_tokens)}))
        tail.append(DONE)
        return Reply(
            prompt_tokens,
            completion_tokens,
            steps,
            stream=True,
            head=head,
            frames=frames,
            tail=b"".join(tail),
        )


def _json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()
