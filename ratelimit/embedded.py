"""The in-process store: the algorithm of lua/limiter.lua, step for step, in Python.

It takes the same argument vector and returns the same flat list as the Lua script, so the
conformance suite can hold the two to identical decisions.
"""

from __future__ import annotations

import time
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

from ratelimit.fair_share import HOLD_MS, RETRY_MS, SLACK_MS, TAGS, Ask
from ratelimit.limits import DAY_CAP, LIVE_CAP, NOTHING, REBASE_AT, Cost, Decision, Policy
from ratelimit.store import Clock, Store, args, decode

SWEEP_EVERY_MS = 60_000
"""How often idle budgets are dropped, so keys that never come back do not pile up."""
SPECS_KEPT = 16_384
"""Parsed policies kept: above the budgets a gateway holds (one per budget and day), so a
gateway with a thousand differently limited budgets never parses a policy per admission."""


def _wall_clock() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class _Budget:
    """One key's log and totals (the Redis store's three keys in one object)."""

    times: list[int] = field(default_factory=list)
    reqs: list[int] = field(default_factory=list)  # running request total after each entry
    toks: list[int] = field(default_factory=list)  # running token total after each entry
    head: int = 0  # entries before head have been trimmed
    n: int = 0
    c: int = 0
    bn: int = 0
    bc: int = 0
    last_t: int = 0
    expires_at: int = 0
    day: int = -1
    dr: int = 0
    dt: int = 0
    refunds: list[tuple[int, int, int]] = field(default_factory=list)  # (admitted_at, requests, tokens)
    rf: int = 0
    rq: int = 0

    def compact(self) -> None:
        if self.head > 1024 and self.head * 2 > len(self.times):
            del self.times[: self.head], self.reqs[: self.head], self.toks[: self.head]
            self.head = 0


@dataclass(slots=True)
class _Fair:
    """One budget's fair-share record (the Redis store's tags and waits hashes)."""

    tags: dict[str, int] = field(default_factory=dict)  # "~v", "~t", tenant -> finish tag
    # instance -> (ask_at, lapse_at, its waiting tenants as (class, tenant))
    waits: dict[str, tuple[int, int, tuple[tuple[int, str], ...]]] = field(default_factory=dict)
    expires_at: int = 0


class EmbeddedStore(Store):
    """A store for a single process: exact, O(log n) per call, no I/O."""

    kind = "embedded"

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock
        self._budgets: dict[str, _Budget] = {}
        self._fair: dict[str, _Fair] = {}
        self._next_sweep = 0
        self._specs: dict[str, tuple[int, int, int, int, int, int, int, list[tuple[int, int, int]]]] = {}

    async def acquire(self, key: str, policy: Policy, cost: Cost, fair: Ask | None = None) -> Decision:
        return self._run(key, policy, "acquire", cost, fair=fair)

    async def peek(self, key: str, policy: Policy, cost: Cost = NOTHING) -> Decision:
        return self._run(key, policy, "peek", cost)

    async def charge(self, key: str, policy: Policy, cost: Cost) -> Decision:
        return self._run(key, policy, "charge", cost)

    async def refund(
        self,
        key: str,
        policy: Policy,
        tokens: int,
        admitted_at_ms: int,
        requests: int = 0,
        fair: Ask | None = None,
    ) -> Decision:
        return self._run(key, policy, "refund", Cost(requests, tokens), admitted_at_ms, fair)

    async def reset(self, key: str) -> None:
        self._budgets.pop(key, None)
        self._fair.pop(key, None)

    async def ping(self) -> bool:
        return True

    def _run(
        self, key: str, policy: Policy, op: str, cost: Cost, admitted_at_ms: int = 0, fair: Ask | None = None
    ) -> Decision:
        now = (self._clock or _wall_clock)()
        if now >= self._next_sweep:
            self._sweep(now)
        argv = args(policy, op, cost, now, now, admitted_at_ms)
        return decode(policy, self._step(key, argv, fair), time.monotonic())

    def _sweep(self, now: int) -> None:
        """Drop budgets past their expiry, as Redis expires their keys."""
        self._budgets = {k: b for k, b in self._budgets.items() if b.expires_at > now}
        self._fair = {k: f for k, f in self._fair.items() if f.expires_at > now}
        self._next_sweep = now + SWEEP_EVERY_MS

    def _policy(self, spec: str) -> tuple[int, int, int, int, int, int, int, list[tuple[int, int, int]]]:
        """ARGV[6] of the script, parsed once per distinct policy and day."""
        found = self._specs.get(spec)
        if found is None:
            v = [int(x) for x in spec.split(",")]
            found = (*v[:7], [(v[8 + i * 3], v[9 + i * 3], v[10 + i * 3]) for i in range(v[7])])
            if len(self._specs) > SPECS_KEPT:  # old days and dropped policies
                self._specs.clear()
            self._specs[spec] = found
        return found  # type: ignore[return-value]

    @staticmethod
    def _rebase(b: _Budget, live_first: int, base_n: int, base_c: int) -> None:
        """Renumber the running totals from zero, as the script does: drop every expired
        entry, subtract the totals they leave behind from each live one."""
        b.times = b.times[live_first:]
        b.reqs = [r - base_n for r in b.reqs[live_first:]]
        b.toks = [t - base_c for t in b.toks[live_first:]]
        b.head = 0
        b.n, b.c, b.bn, b.bc = b.n - base_n, b.c - base_c, 0, 0

    def _step(self, key: str, argv: list[int | str], fair: Ask | None = None) -> list[int]:  # noqa: PLR0912, PLR0915
        op = argv[0]
        now, req, tok, admitted_at = (int(v) for v in argv[1:5])
        trim_max, b0, b1, b2, b3, day_req_limit, day_tok_limit, specs = self._policy(str(argv[5]))
        windows = len(specs)

        b = self._budgets.get(key)
        if b is None or b.expires_at <= now:
            b = _Budget()
        now = max(now, b.last_t)

        if now < b1:
            day_start, day_end = b0, b1
        elif now < b2:
            day_start, day_end = b1, b2
        else:
            day_start, day_end = b2, b3
        dr, dt = (b.dr, b.dt) if b.day == day_start else (0, 0)

        longest = max(length for length, _, _ in specs)
        refund_cutoff = now - longest
        rf, rq = b.rf, b.rq
        if b.refunds:  # none, mostly: skip the scans
            rf -= sum(t for at, _, t in b.refunds if at <= refund_cutoff)
            rq -= sum(r for at, r, _ in b.refunds if at <= refund_cutoff)
        changed = False
        if op == "refund" and (tok > 0 or req > 0):
            if admitted_at > refund_cutoff:
                b.refunds.append((admitted_at, req, tok))
                b.refunds.sort()
                rf += tok
                rq += req
            if admitted_at >= day_start:
                dt = max(0, dt - tok)
                dr = max(0, dr - req)
            changed = True

        if op == "refund" and fair is not None and fair.share:
            self._give_back(key, fair, now, longest)

        total = len(b.times)
        newest_t = b.times[-1] if total > b.head else None
        out: list[int] = []
        wait = 0
        check = op in ("acquire", "peek")
        longest_expired = 0

        for length, req_limit, tok_limit in specs:
            cutoff = now - length
            first_live = bisect_right(b.times, cutoff, b.head, total)
            expired = first_live - b.head
            if length == longest:
                longest_expired = expired
            en, ec = (b.reqs[first_live - 1], b.toks[first_live - 1]) if expired else (b.bn, b.bc)
            used_r, used_t = b.n - en, b.c - ec
            if length == longest and (rf or rq):
                used_t = max(0, used_t - rf)
                used_r = max(0, used_r - rq)
            reset = newest_t + length - now if newest_t is not None and newest_t > cutoff else 0

            wait_r = wait_t = 0
            if check and req_limit > 0 and used_r + req > req_limit:
                target = b.n + req - req_limit - (rq if length == longest else 0)
                j = bisect_left(b.reqs, target, first_live, total)
                wait_r = length if j == total else b.times[j] + length - now
            if check and tok_limit > 0 and used_t + tok > tok_limit:
                target = b.c + tok - tok_limit - (rf if length == longest else 0)
                j = bisect_left(b.toks, target, first_live, total)
                wait_t = length if j == total else b.times[j] + length - now
            out += [used_r, wait_r, reset, used_t, wait_t, reset]
            wait = max(wait, wait_r, wait_t)

        day_reset = day_end - now
        wait_dr = day_reset if check and day_req_limit > 0 and dr + req > day_req_limit else 0
        wait_dt = day_reset if check and day_tok_limit > 0 and dt + tok > day_tok_limit else 0
        out += [dr, wait_dr, day_reset, dt, wait_dt, day_reset]
        wait = max(wait, wait_dr, wait_dt)

        ask = fair if op == "acquire" else None
        yielded = 0
        if ask is not None:
            record, fresh, clock, tags, mine, wait, yielded = self._fair_check(key, ask, now, longest, wait)
            finish = tags.get(ask.tenant, 0)
            start = max(clock, finish)

        write = op == "charge" or (op == "acquire" and wait == 0 and not yielded)
        allowed = 1 if write or (op == "peek" and wait == 0) else 0
        if write:
            live_first = b.head + longest_expired
            live_n, live_c = (
                (b.reqs[live_first - 1], b.toks[live_first - 1]) if longest_expired else (b.bn, b.bc)
            )
            if b.c - live_c + tok > LIVE_CAP:
                tok = max(0, LIVE_CAP - (b.c - live_c))
            if b.n - live_n + req > LIVE_CAP:
                req = max(0, LIVE_CAP - (b.n - live_n))
        if write and (req > 0 or tok > 0):
            changed = True
            if b.n + req > REBASE_AT or b.c + tok > REBASE_AT:
                self._rebase(b, live_first, live_n, live_c)
                longest_expired = 0
            b.n, b.c = b.n + req, b.c + tok
            dr, dt = min(DAY_CAP, dr + req), min(DAY_CAP, dt + tok)
            b.times.append(now)
            b.reqs.append(b.n)
            b.toks.append(b.c)
            trim = min(longest_expired, trim_max)
            if trim:
                b.bn, b.bc = b.reqs[b.head + trim - 1], b.toks[b.head + trim - 1]
                b.head += trim
                b.compact()
            for i, (length, _, _) in enumerate(specs):
                out[i * 6] += req
                out[i * 6 + 3] += tok
                out[i * 6 + 2] = out[i * 6 + 5] = length
            out[windows * 6] = dr
            out[windows * 6 + 3] = dt

        if ask is not None:
            if allowed and ask.share:
                if fresh:
                    record.tags.clear()
                clock = max(clock, start)
                finish = start + ask.share
                record.tags.update({TAGS: clock, "~t": now, ask.tenant: finish})
                record.expires_at = max(record.expires_at, now + longest + 60_000)
            waiting = ask.waiting(bool(allowed))
            if waiting:
                at = now if allowed else now + min(wait, HOLD_MS)
                record.waits[ask.instance] = (at, at + SLACK_MS, tuple(waiting))
                record.expires_at = max(record.expires_at, now + HOLD_MS + SLACK_MS + 60_000)
            elif mine:
                del record.waits[ask.instance]
            self._fair[key] = record

        if changed:
            b.refunds = [(at, r, t) for at, r, t in b.refunds if at > refund_cutoff]
            b.rf = rf
            b.rq = rq
            b.last_t = now
            b.day, b.dr, b.dt = day_start, dr, dt
            b.expires_at = now + max(longest, day_end - now) + 60_000
            self._budgets[key] = b
        if ask is not None:
            others = [tags.get(t, 0) for _, t in ask.others]
            return [allowed, wait, now, *out, yielded, finish, clock, *others]
        return [allowed, wait, now, *out]

    def _give_back(self, key: str, fair: Ask, now: int, longest: int) -> None:
        """The script's give-back: the tenant's finish tag down by its share (not below 0)."""
        record = self._fair.get(key)
        if record is None or record.expires_at <= now or fair.tenant not in record.tags:
            return
        if now - record.tags.get("~t", 0) <= longest:
            record.tags[fair.tenant] = max(0, record.tags[fair.tenant] - fair.share)

    def _fair_check(
        self, key: str, ask: Ask, now: int, longest: int, wait: int
    ) -> tuple[_Fair, bool, int, dict[str, int], bool, int, int]:
        """The script's fair-share check: the budget's record, whether it starts afresh (nothing
        admitted for a window), the virtual clock, the tags read, whether the asking instance has
        an entry, and the wait and yield after it."""
        record = self._fair.get(key)
        if record is None or record.expires_at <= now:
            record = _Fair()
        mine = False
        entries: list[tuple[int, tuple[tuple[int, str], ...]]] = []
        for instance, (at, lapse, waiting) in list(record.waits.items()):
            if lapse <= now:
                del record.waits[instance]
            elif instance == ask.instance:
                mine = True
            elif wait == 0:
                entries.append((at, waiting))
        tagged = ask.share > 0
        fresh, clock, tags = False, 0, {}
        if tagged:
            fresh = now - record.tags.get("~t", 0) > longest
            if not fresh:
                clock = record.tags.get(TAGS, 0)
                names = {ask.tenant, *(t for _, t in ask.others)}
                names.update(t for _, waiting in entries for c, t in waiting if c == ask.priority)
                tags = {t: record.tags.get(t, 0) for t in names}
        start = max(clock, tags.get(ask.tenant, 0))

        def ahead(c: int, t: str) -> bool:
            if c != ask.priority:
                return c < ask.priority
            return tagged and t != ask.tenant and max(clock, tags.get(t, 0)) < start

        yielded = 0
        if wait == 0:
            soonest = None
            for at, waiting in entries:
                if any(ahead(c, t) for c, t in waiting):
                    w = max(at - now, 0) + RETRY_MS
                    soonest = w if soonest is None else min(soonest, w)
            if soonest is not None:
                yielded, wait = 1, min(soonest, HOLD_MS)
            elif ask.own and any(ahead(c, t) for c, t in ask.others):
                yielded = 1
        return record, fresh, clock, tags, mine, wait, yielded
