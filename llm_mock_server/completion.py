"""Deterministic completion text and the chat completion bodies that carry it.

The text is drawn from a fixed word list with a generator seeded by the request, so the
same request always gets the same answer. Every piece (a word with its leading space, or a
full stop) is one token in the model's encoding and pieces never merge, so the number of
pieces is exactly what tiktoken counts: ``max_tokens`` can be honoured to the token.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ratelimit.tokens import TokenCounter, encoding, encoding_name_for_model

MIN_TOKENS = 16
MAX_TOKENS = 128
SENTENCE = (5, 14)  # words per sentence, inclusive
SYSTEM_FINGERPRINT = "fp_mock"

_WORD_LIST = """the of and to in is it that for on with as was at by be this have from or one had not but what
    all were when we there can an your which their if do will each about how up out them then she many
    some so these would other into has more her two like see time could no make than first been its who
    now people my made over did down only way find use may water long little very after words called just
    where most know get through back much go good new write our used me man too any day same right look
    think also around another come work three word must because does part even place well such here take
    why things help put years different away again off old number great tell men say small every found
    still between name should home big give air line set own under read last never us left end along
    while next sound below something thought both few those always show large often together asked house
    world going want school important until form food keep children land side without once life enough
    sometimes four head above kind almost live page got earth need far hand high year mother light parts
    country father let night following picture being study second soon times story since white days ever
    paper hard near sentence better best across during today others however sure means try young sun
    thing whole example several change answer room sea against top learn point city play five using
    usually"""
WORDS = tuple(_WORD_LIST.split())


@dataclass(frozen=True, slots=True)
class Choice:
    """One generated answer: its pieces (one token each when ``exact``) and why it stopped."""

    pieces: tuple[str, ...]
    tokens: int
    finish_reason: str
    text: str
    text_json: str  # the text as a JSON string, encoded once

    @classmethod
    def of(cls, pieces: Sequence[str], tokens: int, finish_reason: str) -> Choice:
        text = "".join(pieces)
        return cls(tuple(pieces), tokens, finish_reason, text, json.dumps(text))


class Vocabulary:
    """The words of ``WORDS`` that are single tokens in one encoding, in every position we use."""

    def __init__(self, encoding_name: str) -> None:
        enc = encoding(encoding_name)
        self.exact = enc is not None
        if enc is None:
            self.words = WORDS
            return

        def one(text: str) -> bool:
            return len(enc.encode(text, disallowed_special=())) == 1

        self.words = tuple(
            w for w in WORDS if one(" " + w) and one(" " + w.capitalize()) and one(w.capitalize())
        )
        if not one("."):
            raise RuntimeError(f"'.' is not one token in {encoding_name}")


@lru_cache(maxsize=16)
def vocabulary(encoding_name: str) -> Vocabulary:
    return Vocabulary(encoding_name)


def request_digest(seed: int, model: str, messages: Sequence[Any], request_seed: int | None) -> bytes:
    """What the answer depends on: the conversation, the model and both seeds.

    ``repr`` of parsed JSON is deterministic (no hash randomisation, dicts keep the order
    they were sent in) and several times cheaper than canonical JSON.
    """
    return hashlib.blake2b(repr((seed, request_seed, model, messages)).encode(), digest_size=16).digest()


@lru_cache(maxsize=4096)
def generate(digest: bytes, index: int, limit: int | None, model: str) -> Choice:
    """Choice ``index`` of the request with ``digest``: 16 to 128 tokens, cut at ``limit``."""
    enc_name = encoding_name_for_model(model)
    vocab = vocabulary(enc_name)
    rng = random.Random(digest + index.to_bytes(4, "big"))
    length = rng.randint(MIN_TOKENS, MAX_TOKENS)
    budget = length if limit is None else min(length, limit)
    pieces: list[str] = []
    words = vocab.words
    while len(pieces) < budget:
        sentence = rng.randint(*SENTENCE)
        for i in range(sentence):
            word = rng.choice(words)
            if i == 0:
                word = word.capitalize()
            pieces.append(word if not pieces else " " + word)
        pieces.append(".")
    del pieces[budget:]
    finish = "length" if limit is not None and limit < length else "stop"
    if vocab.exact:
        return Choice.of(pieces, len(pieces), finish)
    return _fit_estimate(pieces, limit, model, finish)


def _fit_estimate(pieces: list[str], limit: int | None, model: str, finish: str) -> Choice:
    """Without the encoding, tokens are estimated from characters: trim until the estimate fits."""
    counter = TokenCounter()
    tokens = counter.count_text("".join(pieces), model)
    while limit is not None and tokens > limit and pieces:
        pieces.pop()
        tokens = counter.count_text("".join(pieces), model)
        finish = "length"
    return Choice.of(pieces, tokens, finish)


def new_completion_id() -> str:
    return "chatcmpl-" + random.randbytes(15).hex()


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def usage_json(prompt_tokens: int, completion_tokens: int) -> str:
    """``usage`` as JSON, the same object as ``usage()`` without a trip through the encoder."""
    return (
        f'{{"prompt_tokens":{prompt_tokens},"completion_tokens":{completion_tokens},'
        f'"total_tokens":{prompt_tokens + completion_tokens},'
        '"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},'
        '"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,'
        '"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}'
    )


def completion_json(completion_id: str, model: str, choices: Sequence[Choice], prompt_tokens: int) -> bytes:
    """A ``chat.completion`` object, serialised.

    Built from a template because it is on every answer: the text's JSON is encoded once
    per generated choice (``generate`` is cached), not once per request.
    """
    parts = ",".join(
        f'{{"index":{i},"message":{{"role":"assistant","content":{c.text_json},"refusal":null,'
        f'"annotations":[]}},"logprobs":null,"finish_reason":"{c.finish_reason}"}}'
        for i, c in enumerate(choices)
    )
    completion_tokens = sum(c.tokens for c in choices)
    return (
        f'{{"id":"{completion_id}","object":"chat.completion","created":{int(time.time())},'
        f'"model":{json.dumps(model)},"choices":[{parts}],'
        f'"usage":{usage_json(prompt_tokens, completion_tokens)},'
        f'"service_tier":"default","system_fingerprint":"{SYSTEM_FINGERPRINT}"}}'
    ).encode()


class ChunkWriter:
    """The ``chat.completion.chunk`` objects of one stream: one id, one ``created``."""

    def __init__(self, completion_id: str, model: str) -> None:
        self.base = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

    def delta(self, index: int, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**self.base, "choices": [choice], "usage": None}

    def role(self, index: int) -> dict[str, Any]:
        return self.delta(index, {"role": "assistant", "content": "", "refusal": None})

    def content(self, index: int, text: str) -> dict[str, Any]:
        return self.delta(index, {"content": text})

    def finish(self, index: int, reason: str) -> dict[str, Any]:
        return self.delta(index, {}, reason)

    def usage(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        return {**self.base, "choices": [], "usage": usage(prompt_tokens, completion_tokens)}
