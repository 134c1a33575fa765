"""The admitted-rate history the monitor keeps itself, and its unicode sparkline."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Sequence

BLOCKS = "▁▂▃▄▅▆▇█"
GAP = " "


class RateHistory:
    """Per-interval rates (per minute) of a counter that only grows, sampled on every refresh.

    A sample of ``None`` (the service was down) leaves a gap. A counter that went down, or whose
    ``source`` changed (a restart, an instance joining the sum), starts over from its new value:
    that jump is not traffic.
    """

    def __init__(self, span_s: float = 300.0) -> None:
        self.span_s = span_s
        self._last: tuple[float, float, Hashable] | None = None
        # (time, rate per minute or None for a gap), oldest first.
        self._rates: deque[tuple[float, float | None]] = deque()

    def sample(self, at: float, counter: float | None, source: Hashable = None) -> None:
        if counter is None:
            if self._last is not None:
                self._rates.append((at, None))
            self._last = None
        else:
            last = self._last
            self._last = (at, counter, source)
            if last is not None and at > last[0]:
                delta = counter - last[1]
                same = delta >= 0 and source == last[2]
                self._rates.append((at, delta * 60 / (at - last[0]) if same else None))
        while self._rates and self._rates[0][0] < at - self.span_s:
            self._rates.popleft()

    def rates(self) -> list[float | None]:
        return [rate for _, rate in self._rates]

    def buckets(self, count: int, bucket_s: float, now: float) -> list[float | None]:
        """The mean rate in each of the last ``count`` buckets of ``bucket_s`` seconds up to ``now``.

        Buckets are aligned to multiples of ``bucket_s`` so the line shifts by whole steps; the
        list starts at the first bucket holding anything, and an empty bucket is a gap.
        """
        last = math.floor(now / bucket_s)
        first = last - count + 1
        sums: dict[int, list[float]] = {}
        for at, rate in self._rates:
            index = math.floor(at / bucket_s)
            if first <= index <= last:
                values = sums.setdefault(index, [])
                if rate is not None:
                    values.append(rate)
        if not sums:
            return []
        start = min(sums)
        return [sum(sums[i]) / len(sums[i]) if sums.get(i) else None for i in range(start, last + 1)]


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
