"""The history the monitor keeps itself (admissions per minute, sampled on every refresh), and
its unicode sparkline."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

BLOCKS = "▁▂▃▄▅▆▇█"
GAP = " "


class History:
    """Samples of one figure over the last ``span_s`` seconds; ``None`` (the service was down,
    or did not report it) leaves a gap."""

    def __init__(self, span_s: float = 300.0) -> None:
        self.span_s = span_s
        self._samples: deque[tuple[float, float | None]] = deque()  # (time, value), oldest first

    def sample(self, at: float, value: float | None) -> None:
        if value is not None or (self._samples and self._samples[-1][1] is not None):
            self._samples.append((at, value))  # one gap is enough for a whole outage
        while self._samples and self._samples[0][0] < at - self.span_s:
            self._samples.popleft()

    def values(self) -> list[float | None]:
        return [value for _, value in self._samples]

    def latest(self) -> float | None:
        return self._samples[-1][1] if self._samples else None

    def peak(self) -> float | None:
        return max((v for _, v in self._samples if v is not None), default=None)

    def buckets(self, count: int, bucket_s: float, now: float) -> list[float | None]:
        """The highest sample in each of the last ``count`` buckets of ``bucket_s`` seconds up to
        ``now`` (so the line's top is the peak figure beside it).

        Buckets are aligned to multiples of ``bucket_s`` so the line shifts by whole steps; the
        list starts at the first bucket holding anything, and an empty bucket is a gap.
        """
        last = math.floor(now / bucket_s)
        first = last - count + 1
        found: dict[int, list[float]] = {}
        for at, value in self._samples:
            index = math.floor(at / bucket_s)
            if first <= index <= last:
                values = found.setdefault(index, [])
                if value is not None:
                    values.append(value)
        if not found:
            return []
        start = min(found)
        return [max(found[i]) if found.get(i) else None for i in range(start, last + 1)]


def sparkline(values: Sequence[float | None], width: int, top: float | None = None) -> str:
    """The last ``width`` values as blocks scaled to ``top`` (default: their maximum); gaps stay blank.

    Zero is the lowest block, not blank, so "idle" and "no data" look different.
    """
    shown = list(values)[-width:] if width > 0 else []
    known = [v for v in shown if v is not None]
    scale = top if top else max(known, default=0.0)
    out = []
    for value in shown:
        if value is None:
            out.append(GAP)
        elif scale <= 0:
            out.append(BLOCKS[0])
        else:
            level = math.ceil(min(value, scale) / scale * (len(BLOCKS) - 1))
            out.append(BLOCKS[max(0, level)])
    return "".join(out)
