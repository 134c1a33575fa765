"""Reading an SSE stream as it passes: the usage it ends with (a chat or completions usage
chunk, or a Responses API final event), and a usage-only chunk's removal."""

from __future__ import annotations

import json
import re
from typing import Any

from openai_wire.responses import FINAL_EVENTS, usage_of

_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_DONE = b"data: [DONE]"


class UsageTap:
    """Cuts the byte stream at frame boundaries, notes a non-null ``usage``, and drops the
    usage-only chunk when the caller did not ask for it (the gateway always asks upstream).

    Only frames that carry a usage object are parsed; the rest pass as bytes.
    """

    __slots__ = ("_buf", "_sep", "ended", "strip", "usage")

    def __init__(self, strip: bool) -> None:
        self.strip = strip
        self.usage: dict[str, Any] | None = None
        self.ended = False
        """Whether the stream's last event has passed (``data: [DONE]``, or a Responses API final
        event): ``usage`` is then final (a stream may carry a running usage on every chunk)."""
        self._buf = b""
        self._sep = b""

    def feed(self, chunk: bytes) -> bytes:
        """The complete frames now available (possibly empty); a partial frame waits."""
        buf = self._buf + chunk if self._buf else chunk
        if not self._sep:
            if b"\r\n\r\n" in buf:
                self._sep = b"\r\n\r\n"
            elif b"\n\n" in buf:
                self._sep = b"\n\n"
            else:
                self._buf = buf
                return b""
        end = buf.rfind(self._sep)
        if end < 0:
            self._buf = buf
            return b""
        end += len(self._sep)
        complete, self._buf = buf[:end], buf[end:]
        # At a frame's start only: a JSON string holds no raw blank line, so none can fake it.
        if complete.startswith(_DONE) or self._sep + _DONE in complete:
            self.ended = True
        if _USAGE.search(complete) is None:
            return complete
        return self._frames(complete)

    def flush(self) -> bytes:
        """Whatever is left when the upstream ends (a stream without a final separator)."""
        rest, self._buf = self._buf, b""
        if rest and _USAGE.search(rest):
            self._note(rest)
        return rest

    def _frames(self, complete: bytes) -> bytes:
        out = []
        sep = self._sep
        for frame in complete.split(sep):
            if not frame:
                continue
            if _USAGE.search(frame) is not None:
                payload = self._note(frame)
                if self.strip and payload is not None and not payload.get("choices"):
                    continue
            out.append(frame + sep)
        return b"".join(out)

    def _note(self, frame: bytes) -> dict[str, Any] | None:
        for line in frame.splitlines():
            if line.startswith(b"data:"):
                try:
                    payload = json.loads(line[5:])
                except ValueError:
                    return None
                if not isinstance(payload, dict):
                    return None
                if isinstance(payload.get("usage"), dict):
                    self.usage = payload["usage"]
                    return payload
                if payload.get("type") in FINAL_EVENTS:
                    # A Responses API stream ends with the whole response, its usage inside. That
                    # event is the stream's end, never a usage-only chunk to strip.
                    self.ended = True
                    counts = usage_of(payload)
                    if counts is not None:
                        prompt, output = counts
                        self.usage = {
                            "prompt_tokens": prompt,
                            "completion_tokens": output,
                            "total_tokens": prompt + output,
                        }
                return None
        return None
