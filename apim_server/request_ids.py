"""Request ids for requests that come without one: unique, and cheap to make.

``uuid4`` reads the kernel's random source on every call (a system call, dear on virtual
machines): a random prefix per process and a counter make ids of the same shape (``req_`` and
32 hex digits) without one. A forked child draws a prefix of its own.
"""

from __future__ import annotations

import itertools
import os
import secrets

_prefix = ""
_counter = itertools.count()


def _start() -> None:
    global _prefix, _counter  # noqa: PLW0603 - one sequence per process
    _prefix = f"req_{secrets.token_hex(8)}"
    _counter = itertools.count()


def new_request_id() -> str:
    """``req_`` and 32 hex digits: 16 drawn at random per process, then a counter."""
    return f"{_prefix}{next(_counter):016x}"


_start()
os.register_at_fork(after_in_child=_start)
