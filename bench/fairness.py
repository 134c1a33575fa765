"""Fair shares: three tenants weighted 1:1:2 on one budget, one of them flooding.

One mock with RPM ``--rpm`` paced over 1 s sub-windows (as Azure enforces it) and the gateway(s)
in front of it with the same limits and a file of three tenants, ``a`` (weight 1), ``b`` (1) and
``c`` (2). Open-loop arrivals, every request with ``x-apim-timeout-ms: --timeout-ms``:

- flood (``--flood`` s): ``a`` offers 10x its weighted share, ``b`` and ``c`` 1.5x theirs, so all
  three have demand throughout; the goal is each within 5% of its weighted share (25/25/50%);
- flood stopped (``--after`` s): ``a`` stops, ``b`` and ``c`` go on: ``a``'s share is lent
  (budget use >= 99%, ``b``:``c`` 1:2).

Set-ups: one gateway (embedded store); if a Redis answers (REDIS_URL or 127.0.0.1:6379), two
gateways on it with every tenant's requests spread evenly, and two gateways reached unevenly
(``a`` only at the first, ``c`` only at the second, ``b`` three to one at the second). Printed
per set-up and phase, medians over ``--runs`` runs (the set-ups alternating): each tenant's share
of the phase's tenants' admissions (counted by answer time, after a few seconds for the queues to
form, over whole 3 s periods of the paced admissions), its p99 queue wait, the farthest any run's
share was from its goal (relative to the goal), Jain's fairness index over the weight-normalised
shares, budget use (every admission, whoever's) against the gateway's paced ceiling (each
sub-window's share over the sub-window plus the 500 ms margin), upstream 429s (the most in a
run). The flood-stopped figures start once ``a``'s queue has drained (its deadline after the
flood's end).

    python bench/fairness.py [--rpm 1200] [--flood 40] [--after 25] [--timeout-ms 8000]
                             [--only 1,even,uneven] [--runs 1]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

import httpx
from gateway_budget import MESSAGES, MODEL, Service, gateway, mock, percentile, redis_url, workdir

WEIGHTS = {"a": 1.0, "b": 1.0, "c": 2.0}
WARM_S = 12.0  # queues form and the flood's excess is refused before shares are counted
PERIOD_S = 3.0
"""Admissions repeat every 1.5 s (a 1 s sub-window and its 500 ms margin; 20, 18 and 2 in
whole seconds): counted over whole multiples of 3 s."""


def config(upstream: Service, rpm: int) -> Path:
    path = Path(workdir()) / f"fairness-{uuid.uuid4().hex[:6]}.yaml"
    lines = [
        "deployments:",
        f"  - {{name: mock, url: {upstream.v1}, short_window_s: 1, models: {{{MODEL}: {{rpm: {rpm}}}}}}}",
        "tenants:",
        *(f"  - {{name: {t}, key: sk-{t}, weight: {w:g}}}" for t, w in WEIGHTS.items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


class Run:
    """Every answer: (tenant, status, answered at (s since start), queue ms)."""

    def __init__(self, timeout_ms: int) -> None:
        self.timeout_ms = timeout_ms
        self.answers: list[tuple[str, int, float, int]] = []
        self.start = time.monotonic()

    async def tenant(
        self, client: httpx.AsyncClient, tenant: str, urls: list[str], rate: float, until: float
    ) -> None:
        """Open-loop arrivals of ``tenant`` at ``rate`` per second, spread over ``urls`` in turn."""
        body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4}
        headers = {"authorization": f"Bearer sk-{tenant}", "x-apim-timeout-ms": str(self.timeout_ms)}
        tasks = []
        began = time.monotonic()
        n = 0
        while time.monotonic() - self.start < until:
            url = urls[n % len(urls)]
            tasks.append(asyncio.create_task(self._one(client, tenant, url, body, headers)))
            n += 1
            await asyncio.sleep(max(0.0, began + n / rate - time.monotonic()))
        await asyncio.gather(*tasks)

    async def _one(
        self, client: httpx.AsyncClient, tenant: str, url: str, body: dict, headers: dict[str, str]
    ) -> None:
        try:
            answer = await client.post(url, json=body, headers=headers)
            status, queue_ms = answer.status_code, int(answer.headers.get("x-apim-queue-ms", "0"))
        except httpx.HTTPError:
            status, queue_ms = -1, 0
        self.answers.append((tenant, status, time.monotonic() - self.start, queue_ms))


async def phase_load(
    urls_of: dict[str, list[str]],
    rates: dict[str, float],
    after_rates: dict[str, float],
    flood: float,
    after: float,
    timeout_ms: int,
) -> Run:
    run = Run(timeout_ms)
    limits = httpx.Limits(max_connections=4000, max_keepalive_connections=4000)
    async with httpx.AsyncClient(timeout=timeout_ms / 1000 + 30, limits=limits) as client:
        jobs = [run.tenant(client, t, urls_of[t], rates[t], flood) for t in rates]
        jobs += [_later(run, client, t, urls_of[t], r, flood, flood + after) for t, r in after_rates.items()]
        await asyncio.gather(*jobs)
    return run


async def _later(
    run: Run, client: httpx.AsyncClient, t: str, urls: list[str], rate: float, at: float, until: float
) -> None:
    await asyncio.sleep(max(0.0, run.start + at - time.monotonic()))
    await run.tenant(client, t, urls, rate, until)


def figures(run: Run, start: float, end: float, capacity_per_s: float, tenants: list[str]) -> dict:
    """Shares among ``tenants``, p99 waits, Jain's index and budget use (everyone's admissions)
    for answers in [start, end), cut to whole periods of the paced admissions (any other span
    counts a burst more or less, by where it starts)."""
    end = start + (end - start) // PERIOD_S * PERIOD_S
    admitted: dict[str, int] = defaultdict(int)
    waits: dict[str, list[float]] = defaultdict(list)
    for tenant, status, at, queue_ms in run.answers:
        if status == 200 and start <= at < end:
            admitted[tenant] += 1
            waits[tenant].append(queue_ms / 1000)
    everyone = sum(admitted.values())
    total = sum(admitted[t] for t in tenants) or 1
    weight = sum(WEIGHTS[t] for t in tenants)
    shares = {t: admitted[t] / total for t in tenants}
    normalised = [shares[t] / (WEIGHTS[t] / weight) for t in tenants]
    jain = sum(normalised) ** 2 / (len(normalised) * sum(x * x for x in normalised))
    return {
        "shares": shares,
        "goals": {t: WEIGHTS[t] / weight for t in tenants},
        "p99": {t: percentile(waits[t], 0.99) for t in tenants},
        "jain": jain,
        "use": everyone / ((end - start) * capacity_per_s),
    }


def answers_by_status(run: Run) -> dict[str, dict[int, int]]:
    """Every answer per tenant and status (429: refused at arrival or its tenant's limit; 504:
    timed out in the queue)."""
    counts: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for tenant, status, _, _ in run.answers:
        counts[tenant][status] += 1
    return {t: dict(sorted(c.items())) for t, c in sorted(counts.items())}


def median_of(runs: list[dict]) -> dict:
    """Each figure's median over the runs (shares, waits, Jain's index, use)."""
    out: dict = {"goals": runs[0]["goals"]}
    for field in ("shares", "p99"):
        out[field] = {t: statistics.median(r[field][t] or 0 for r in runs) for t in runs[0][field]}
    for field in ("jain", "use"):
        out[field] = statistics.median(r[field] for r in runs)
    # The farthest any run's share was from its goal, relative to the goal.
    out["worst"] = max(abs(r["shares"][t] / r["goals"][t] - 1) for r in runs for t in r["shares"])
    return out


def report(name: str, phase: str, f: dict, upstream_429: int | None) -> None:
    cells = " | ".join(
        f"{f['shares'][t] * 100:.1f}% ({f['goals'][t] * 100:.0f}%), p99 {f['p99'][t] or 0:.2f}s"
        if t in f["shares"]
        else "-"
        for t in WEIGHTS
    )
    last = "" if upstream_429 is None else str(upstream_429)
    print(
        f"| {name} | {phase} | {cells} | {f['worst'] * 100:.1f}% | {f['jain']:.4f} "
        f"| {f['use'] * 100:.1f}% | {last} |"
    )


def run_setup(name: str, args: argparse.Namespace, redis: str | None, ceiling: float) -> dict:
    """One set-up, start to end: its figures per phase, upstream 429s and answers by status."""
    per_s = args.rpm / 60
    weight = sum(WEIGHTS.values())
    share = {t: per_s * w / weight for t, w in WEIGHTS.items()}
    rates = {"a": 10 * share["a"], "b": 1.5 * share["b"], "c": 1.5 * share["c"]}
    after_rates = {"b": rates["b"], "c": rates["c"]}
    with ExitStack() as stack:
        upstream = stack.enter_context(
            mock(RPM_LIMIT=str(args.rpm), SHORT_WINDOW_S="1", LOG_REQUESTS="false")
        )
        path = config(upstream, args.rpm)
        settings = {"CONFIG": str(path), "LOG_REQUESTS": "false", "MAX_QUEUE": "100000"}
        if name == "1 gateway":
            gws = [stack.enter_context(gateway(upstream, **settings))]
        else:
            shared = {"REDIS_URL": redis or "", "REDIS_PREFIX": f"bench-fair-{uuid.uuid4().hex[:8]}"}
            gws = [stack.enter_context(gateway(upstream, **settings, **shared)) for _ in range(2)]
        urls = [f"{g.v1}/chat/completions" for g in gws]
        if name == "2 gateways, uneven":
            urls_of = {"a": [urls[0]], "b": [urls[0], urls[1], urls[1], urls[1]], "c": [urls[1]]}
        else:
            urls_of = {t: urls for t in WEIGHTS}
        run = asyncio.run(phase_load(urls_of, rates, after_rates, args.flood, args.after, args.timeout_ms))
        totals = httpx.get(f"{upstream.url}/status", timeout=5).json()["totals"]
    return {
        "flood": figures(run, WARM_S, args.flood, ceiling, ["a", "b", "c"]),
        # After a's queue has drained (its last requests reach their deadline).
        "flood stopped": figures(
            run, args.flood + args.timeout_ms / 1000 + 1, args.flood + args.after, ceiling, ["b", "c"]
        ),
        "429": totals["rate_limited"],
        "answers": answers_by_status(run),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rpm", type=int, default=1200, help="the budget (paced over 1 s sub-windows)")
    parser.add_argument("--flood", type=float, default=40, help="seconds of the flood phase")
    parser.add_argument("--after", type=float, default=25, help="seconds after the flood stopped")
    parser.add_argument("--timeout-ms", type=int, default=8_000, help="every request's x-apim-timeout-ms")
    parser.add_argument(
        "--only", default="", help="comma-separated set-ups to run: 1, even, uneven (default: all)"
    )
    parser.add_argument("--runs", type=int, default=1, help="runs of every set-up (alternating); medians")
    args = parser.parse_args()
    per_s = args.rpm / 60
    # What the gateway admits at most: each 1 s sub-window's share, over the sub-window plus its
    # margin (APIM_WINDOW_MARGIN_MS, 500 ms by default: small bursts keep dispatch lag below it).
    ceiling = per_s / 1.5

    redis = redis_url()
    setups = ["1 gateway"] + (["2 gateways, even", "2 gateways, uneven"] if redis else [])
    if args.only:
        wanted = {"1": "1 gateway", "even": "2 gateways, even", "uneven": "2 gateways, uneven"}
        chosen = {wanted[name.strip()] for name in args.only.split(",")}
        setups = [name for name in setups if name in chosen]
    results: dict[str, list[dict]] = defaultdict(list)
    for i in range(args.runs):
        for name in setups:
            results[name].append(run_setup(name, args, redis, ceiling))
            print(f"run {i + 1}/{args.runs}, {name}: done", flush=True)
    weight = sum(WEIGHTS.values())
    offered = ", ".join(
        f"{t} {(10 if t == 'a' else 1.5) * per_s * w / weight:g}/s" for t, w in WEIGHTS.items()
    )
    print(
        f"\nbudget {args.rpm} RPM over 1 s sub-windows ({per_s:g}/s); offered: {offered}; "
        f"medians of {args.runs} run(s)"
    )
    print(
        "| set-up | phase | a: share (goal), p99 wait | b | c | worst off goal | Jain | budget use "
        "| upstream 429 |"
    )
    print("|---|---|---|---|---|---:|---:|---:|---:|")
    for name, runs in results.items():
        report(name, "flood", median_of([r["flood"] for r in runs]), None)
        report(
            name, "flood stopped", median_of([r["flood stopped"] for r in runs]), max(r["429"] for r in runs)
        )
    for name, runs in results.items():
        for i, r in enumerate(runs):
            print(f"{name}, run {i + 1}: answers by tenant and status: {r['answers']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
