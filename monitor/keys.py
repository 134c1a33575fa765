"""The dashboard's views and the keys that switch between them, read from the terminal one
press at a time while the dashboard runs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Callable
from enum import StrEnum
from types import TracebackType
from typing import Any


class View(StrEnum):
    OVERVIEW = "overview"
    BUDGETS = "budgets"
    TENANTS = "tenants"


KEYS: dict[str, View] = {
    "o": View.OVERVIEW,
    "1": View.OVERVIEW,
    "b": View.BUDGETS,
    "2": View.BUDGETS,
    "t": View.TENANTS,
    "3": View.TENANTS,
}
QUIT = frozenset("qQ")
HELP = ((View.OVERVIEW, "o"), (View.BUDGETS, "b"), (View.TENANTS, "t"))
"""The help line's order: each view and its key."""


class KeyReader:
    """Single key presses from a terminal on stdin, without echo or Enter (cbreak mode), handed
    to ``on_key`` on the event loop; the terminal's settings are restored on exit.

    Inactive (``active`` False) when stdin is not a terminal or the platform has no termios:
    the dashboard then runs as before, Ctrl-C quits.
    """

    def __init__(self, on_key: Callable[[str], None], fd: int | None = None) -> None:
        self.on_key = on_key
        self.fd = sys.stdin.fileno() if fd is None else fd
        self.active = False
        self._saved: list[Any] | None = None

    def __enter__(self) -> KeyReader:
        try:
            import termios  # noqa: PLC0415 - POSIX only
            import tty  # noqa: PLC0415
        except ImportError:
            return self
        if not os.isatty(self.fd):
            return self
        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd, termios.TCSANOW)
        asyncio.get_running_loop().add_reader(self.fd, self._read)
        self.active = True
        return self

    def _read(self) -> None:
        try:
            data = os.read(self.fd, 64)
        except OSError:
            data = b""
        if not data:  # the terminal went away: stop listening, keep refreshing
            asyncio.get_running_loop().remove_reader(self.fd)
            return
        for char in data.decode(errors="ignore"):
            self.on_key(char)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.active:
            return
        import termios  # noqa: PLC0415

        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.fd)
        with contextlib.suppress(termios.error):
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
        self.active = False
