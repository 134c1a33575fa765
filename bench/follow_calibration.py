"""Calibration: the upstream lowers its limit mid-run, then restores it; the gateway follows.

Each set-up is a mock (``--flavor``: OpenAI's six headers, or Azure's two ``x-ratelimit-remaining-*``
without any limit) and gateways with the same limits:
RPM R and TPM R x cost (every request costs the same, so both bind), offered ``--factor`` times
the budget, open loop, paced evenly. After ``--before`` seconds (the window is full by then) the
mock's TPM is lowered to ``--lower`` of it (``POST /admin/limits``); ``--lowered`` seconds later
it is restored; the run ends ``--after`` seconds later. Set-ups run side by side: one gateway on
the embedded store, and two gateways sharing one Redis (if one answers), the load round-robin.

Printed per set-up: a timeline (every ``--step`` seconds: the mock's TPM, what each gateway
enforces, the mock's own TPM window, tokens answered per minute, upstream 429s so far), then how
long after each change every gateway enforced the new limit, the upstream answers the mock gave
in between, and the upstream 429s from then on (the target: 0).

    python bench/follow_calibration.py [--rpm 600] [--before 40] [--lowered 50] [--after 60]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field

import httpx
from _load import open_loop
from gateway_budget import MAX_TOKENS, MESSAGES, MODEL, Service, gateway, mock, redis_url, request_cost

SAMPLE_S = 0.25


@dataclass
class SetUp:
    name: str
    gateways: list[Service]
    upstream: Service
    tpm: int
    answered_at: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    # (t, enforced TPM per gateway, mock TPM used, mock TPM limit, mock 429s, mock requests)
    samples: list[tuple[float, list[int], int, int, int, int]] = field(default_factory=list)
    changes: list[tuple[str, float]] = field(default_factory=list)


async def offer(setup: SetUp, rate: float, duration: float, started: float) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=200)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(600)) as client:

        async def one(gw: Service) -> None:
            try:
                response = await client.post(f"{gw.v1}/chat/completions", json=body)
            except httpx.HTTPError:
                setup.statuses[-1] = setup.statuses.get(-1, 0) + 1
                return
            setup.statuses[response.status_code] = setup.statuses.get(response.status_code, 0) + 1
            if response.status_code == 200:
                setup.answered_at.append(time.monotonic() - started)

        await open_loop(lambda n: one(setup.gateways[n % len(setup.gateways)]), rate, duration, started)


async def sample(setup: SetUp, duration: float, started: float) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        while (t := time.monotonic() - started) < duration:
            views = await asyncio.gather(*(client.get(f"{gw.url}/status") for gw in setup.gateways))
            upstream = (await client.get(f"{setup.upstream.url}/status")).json()
            enforced = [v.json()["limits"]["tpm"]["limit"] for v in views]
            tpm = upstream["limits"]["tpm"]
            totals = upstream["totals"]
            setup.samples.append(
                (t, enforced, tpm["used"], tpm["limit"], totals["rate_limited"], totals["requests"])
            )
            await asyncio.sleep(SAMPLE_S)


async def steer(setup: SetUp, lowered_tpm: int, at: list[float], started: float) -> None:
    """Lower the mock's TPM at ``at[0]``, restore it at ``at[1]`` (seconds into the run)."""
    async with httpx.AsyncClient(timeout=10) as client:
        for what, when in zip(("lowered", "restored"), at, strict=True):
            await asyncio.sleep(max(0.0, started + when - time.monotonic()))
            body = {"tpm": lowered_tpm} if what == "lowered" else {"restore": True}
            (await client.post(f"{setup.upstream.url}/admin/limits", json=body)).raise_for_status()
            setup.changes.append((what, time.monotonic() - started))


def followed(setup: SetUp, since: float, limit: int) -> tuple[float, int] | None:
    """Seconds from ``since`` until every gateway enforced ``limit``, and the answers the mock gave
    in between (None if it never happened)."""
    first = next((s for s in setup.samples if s[0] >= since), None)
    for t, enforced, *_, requests in setup.samples:
        if t >= since and all(e == limit for e in enforced):
            return t - since, requests - (first[5] if first else requests)
    return None


def at(setup: SetUp, t: float) -> tuple[float, list[int], int, int, int, int]:
    """The last sample taken at or before ``t``."""
    return [s for s in setup.samples if s[0] <= t][-1]


def timeline(setup: SetUp, step: float, cost: int) -> list[str]:
    """Every ``step`` seconds: the mock's limit, what the gateways enforce, the mock's TPM window
    (tokens in its last 60 s, and their share of its limit), tokens answered per minute over the
    step, upstream 429s so far."""
    rows = [
        f"| t (s) | mock TPM | enforced by the gateway{'s' if len(setup.gateways) > 1 else ''} "
        "| mock TPM window (share) | tokens answered per minute | upstream 429s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    t = step
    while t <= setup.samples[-1][0]:
        _, enforced, used, limit, refused, _ = at(setup, t)
        answered = sum(1 for a in setup.answered_at if t - step <= a < t)
        rows.append(
            f"| {t:.0f} | {limit} | {' / '.join(map(str, enforced))} | {used} ({used / limit:.0%}) "
            f"| {answered * cost / step * 60:,.0f} | {refused} |"
        )
        t += step
    return rows


def summary(setup: SetUp, lowered_tpm: int, tpm: int) -> list[str]:
    low_at, back_at = (t for _, t in setup.changes)
    lines = []
    for what, since, limit in (("lowered", low_at, lowered_tpm), ("restored", back_at, tpm)):
        found = followed(setup, since, limit)
        if found is None:
            lines.append(f"- {what} at {since:.1f} s: never enforced by every gateway")
            continue
        refused_after = setup.samples[-1][4] - at(setup, since + found[0])[4]
        lines.append(
            f"- {what} at {since:.1f} s: every gateway enforced TPM {limit} {found[0]:.2f} s later (sampled "
            f"every {SAMPLE_S:g} s; {found[1]} upstream answers in between); upstream 429s from then to the "
            f"end: {refused_after}"
        )
    answers = dict(sorted(setup.statuses.items()))
    lines.append(f"- upstream 429s in the whole run: {setup.samples[-1][4]}; answers {answers}")
    return lines


def path(upstream: Service, flavor: str) -> Service:
    """The mock as the gateway calls it: ``/v1``, or Azure's v1 API path ``/openai/v1``."""
    return upstream if flavor == "openai" else Service(f"{upstream.url}/openai", upstream.process)


async def run(setups: list[SetUp], args: argparse.Namespace, cost: int) -> None:
    duration = args.before + args.lowered + args.after
    started = time.monotonic()
    at = [args.before, args.before + args.lowered]
    await asyncio.gather(
        *(offer(s, args.factor * args.rpm / 60, duration, started) for s in setups),
        *(sample(s, duration, started) for s in setups),
        *(steer(s, int(s.tpm * args.lower), at, started) for s in setups),
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rpm", type=int, default=600, help="RPM of mock and gateways (default 600)")
    parser.add_argument("--factor", type=float, default=2, help="offered load over the budget (default 2)")
    parser.add_argument(
        "--lower", type=float, default=0.5, help="the lowered TPM's share of it (default 0.5)"
    )
    parser.add_argument("--before", type=float, default=40, help="seconds before lowering (default 40)")
    parser.add_argument("--lowered", type=float, default=50, help="seconds lowered (default 50)")
    parser.add_argument("--after", type=float, default=60, help="seconds after restoring (default 60)")
    parser.add_argument("--ttft-ms", default="100", help="mock time to first token (default 100)")
    parser.add_argument("--step", type=float, default=5, help="seconds between timeline rows (default 5)")
    parser.add_argument(
        "--flavor",
        choices=("openai", "azure"),
        default="openai",
        help="the mock's header set: openai (all six) or azure (only x-ratelimit-remaining-*)",
    )
    args = parser.parse_args()
    cost = request_cost()
    tpm = args.rpm * cost
    limits = {"RPM_LIMIT": str(args.rpm), "TPM_LIMIT": str(tpm), "LOG_REQUESTS": "false"}
    quiet = {"QUEUE_TIMEOUT_S": "600", "MAX_QUEUE": "100000"}
    redis = redis_url()
    with ExitStack() as stack:
        setups = []
        flavor = {"FLAVOR": args.flavor, "SHORT_WINDOW_S": "0", "ADMIN": "true", "TTFT_MS": args.ttft_ms}
        up1 = stack.enter_context(mock(**limits, **flavor))
        gw1 = stack.enter_context(gateway(path(up1, args.flavor), **limits, **quiet))
        setups.append(SetUp("1 gateway, embedded store", [gw1], up1, tpm))
        if redis:
            up2 = stack.enter_context(mock(**limits, **flavor))
            shared = {"REDIS_URL": redis, "REDIS_PREFIX": f"bench-{uuid.uuid4().hex[:8]}"}
            gws = [
                stack.enter_context(gateway(path(up2, args.flavor), **limits, **quiet, **shared))
                for _ in range(2)
            ]
            setups.append(SetUp("2 gateways, one Redis", gws, up2, tpm))
        else:
            print("no Redis reachable: the two-instance set-up is skipped", flush=True)
        print(
            f"{args.flavor} headers; RPM {args.rpm}, TPM {tpm} ({cost} tokens a request), offered "
            f"{args.factor:g}x; TPM lowered to "
            f"{int(tpm * args.lower)} at {args.before:g} s, restored at {args.before + args.lowered:g} s, "
            f"end at {args.before + args.lowered + args.after:g} s ...",
            flush=True,
        )
        asyncio.run(run(setups, args, cost))

    lowered_tpm = int(tpm * args.lower)
    for setup in setups:
        print()
        print(f"{setup.name}:")
        print()
        print("\n".join(timeline(setup, args.step, cost)))
        print()
        print("\n".join(summary(setup, lowered_tpm, tpm)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
