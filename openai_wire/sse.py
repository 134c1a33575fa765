"""Server-sent events as OpenAI frames them: ``data: {json}\\n\\n`` and a final ``[DONE]`` (chat,
completions), or named events (Responses API)."""

from __future__ import annotations

import json
from typing import Any

DONE = b"data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def parse_event(frame: bytes) -> dict[str, Any] | None:
    """The JSON of one ``data:`` frame, or None for ``[DONE]``, comments and blank frames."""
    for line in frame.splitlines():
        if line.startswith(b"data:"):
            data = line[5:].strip()
            if data == b"[DONE]":
                return None
            return json.loads(data)
    return None


def named_event(payload: dict[str, Any]) -> bytes:
    """A Responses API event: its ``type`` as the SSE event name, then its JSON (no ``[DONE]``)."""
    return b"event: " + str(payload["type"]).encode() + b"\n" + event(payload)
