"""Prompt token counting with memory: clients resend the same system prompts and messages."""

from __future__ import annotations

import math

from ratelimit.tokens import CHARS_PER_TOKEN, TokenCounter, encoding, encoding_name_for_model

CACHE_ENTRIES = 8192
CACHE_MAX_CHARS = 4096  # long texts are rare and would make the cache's memory unbounded


class CachedTokenCounter(TokenCounter):
    """``TokenCounter`` with the encoding resolved once per model and short texts memoised."""

    def __init__(self) -> None:
        self._encodings: dict[str, object] = {}
        self._counts: dict[tuple[str, str], int] = {}

    def count_text(self, text: str, model: str) -> int:
        key = (text, model)
        count = self._counts.get(key)
        if count is not None:
            return count
        enc = self._encodings.get(model)
        if enc is None:
            enc = self._encodings[model] = encoding(encoding_name_for_model(model)) or False
        if enc is False:
            count = math.ceil(len(text) / CHARS_PER_TOKEN)
        else:
            count = len(enc.encode(text, disallowed_special=()))  # type: ignore[attr-defined]
        if len(text) <= CACHE_MAX_CHARS:
            if len(self._counts) >= CACHE_ENTRIES:
                self._counts.clear()  # cheaper than LRU bookkeeping on every hit
            self._counts[key] = count
        return count
