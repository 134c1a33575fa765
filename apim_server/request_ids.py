"""Request ids for requests that come without one: ``req_`` and 32 random hex digits.

Random rather than a per-process counter: a caller comparing two of its own ids must learn
nothing of how many requests others sent in between. ``os.urandom(16).hex()`` is a third of
``uuid4().hex``'s cost (no UUID object), about 1 µs.
"""

from __future__ import annotations

import os


def new_request_id() -> str:
    return f"req_{os.urandom(16).hex()}"
