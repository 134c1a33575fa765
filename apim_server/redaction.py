"""Our upstream key kept out of everything passed back to a caller.

An upstream that echoes what it received (some proxies and error pages do) would otherwise
hand APIM_UPSTREAM_API_KEY to whoever called: bodies, passed-back headers and streams are
scrubbed, for every status.
"""

from __future__ import annotations

from collections.abc import Iterable

MASK = b"[redacted]"
MIN_SECRET = 8
"""Shorter values are not treated as secrets: masking them would garble ordinary text."""


class Redactor:
    """Replaces each secret by ``[redacted]`` in bytes and header values."""

    __slots__ = ("_texts", "secrets")

    def __init__(self, secrets: Iterable[str]) -> None:
        found = {s for s in secrets if len(s) >= MIN_SECRET}
        # Longest first, so a secret that contains another is masked whole.
        ordered = sorted(found, key=len, reverse=True)
        self.secrets = [s.encode() for s in ordered]
        self._texts = ordered

    def __bool__(self) -> bool:
        return bool(self.secrets)

    def body(self, data: bytes) -> bytes:
        for secret in self.secrets:
            if secret in data:
                data = data.replace(secret, MASK)
        return data

    def text(self, value: str) -> str:
        for secret in self._texts:
            if secret in value:
                value = value.replace(secret, MASK.decode())
        return value

    def headers(self, headers: dict[str, str]) -> dict[str, str]:
        if not self.secrets:
            return headers
        return {name: self.text(value) for name, value in headers.items()}

    def lines(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """``headers`` for header lines (bytes)."""
        if not self.secrets:
            return headers
        return [(name, self.body(value)) for name, value in headers]

    def stream(self) -> StreamRedactor:
        return StreamRedactor(self)


class StreamRedactor:
    """Redacts a byte stream chunk by chunk, where a secret may straddle two chunks.

    Only a chunk's tail that could begin a secret is held back until the next chunk, so SSE
    frames (which end in a blank line) pass through without delay.
    """

    __slots__ = ("_held", "_redactor")

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        if not self._redactor.secrets:
            return chunk
        data = self._redactor.body(self._held + chunk if self._held else chunk)
        keep = _partial_tail(data, self._redactor.secrets)
        if keep:
            self._held = data[-keep:]
            return data[:-keep]
        self._held = b""
        return data

    def flush(self) -> bytes:
        rest, self._held = self._held, b""
        return self._redactor.body(rest)


def _partial_tail(data: bytes, secrets: list[bytes]) -> int:
    """The length of the longest suffix of ``data`` that is a proper prefix of a secret."""
    longest = 0
    for secret in secrets:
        start = max(0, len(data) - len(secret) + 1)
        first = secret[:1]
        at = data.find(first, start)
        while at != -1:
            if secret.startswith(data[at:]):
                longest = max(longest, len(data) - at)
                break
            at = data.find(first, at + 1)
    return longest
