"""Budget use with many budgets: 2 models x 2 deployments, 3 gateways on one Redis (SPEC §8).

Two mocks on 127.0.0.1 play two deployments; each keeps per-model limits (``MOCK_CONFIG``): model
``gpt-4o-mini`` RPM R and model ``gpt-4o`` RPM R/2, TPM matching (every request costs the same).
Three gateway processes share one Redis and one configuration file naming both deployments and
both models: four budgets, two pools. Each model is offered twice its pool's budget (both
deployments together), open loop, round-robin over the gateways, for ``--duration`` seconds.
Printed per budget (deployment, model): the mock's own sliding-window use (median / max of the
RPM window, sampled every second in the steady state), and per model the achieved rate over
whole windows as a share of its pool's budget; upstream 429s per mock (target 0).

    python bench/budgets_use.py [--duration 190] [--rpm 600]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import httpx
from _load import open_loop
from gateway_budget import (
    MAX_TOKENS,
    MESSAGES,
    PERIOD,
    STEADY_FROM,
    Service,
    achieved_per_min,
    gateway,
    mock,
    options,
    parse,
    redis_url,
    request_cost,
    workdir,
)

MODELS = ("gpt-4o-mini", "gpt-4o")


async def offer(
    model: str, gateways: list[Service], rate: float, duration: float, answered: list[float]
) -> dict:
    statuses: dict[int, int] = {}
    started = time.monotonic()
    body = {"model": model, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=200)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(600)) as client:

        async def one(gw: Service) -> None:
            try:
                response = await client.post(f"{gw.v1}/chat/completions", json=body)
            except httpx.HTTPError:
                statuses[-1] = statuses.get(-1, 0) + 1
                return
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code == 200:
                answered.append(time.monotonic() - started)

        await open_loop(lambda n: one(gateways[n % len(gateways)]), rate, duration, started)
    return statuses


async def sample(mocks: dict[str, Service], duration: float, into: dict[tuple[str, str], list[int]]) -> None:
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=10) as client:
        while time.monotonic() < started + duration:
            if time.monotonic() - started >= STEADY_FROM:
                for name, svc in mocks.items():
                    for model in MODELS:
                        status = (await client.get(f"{svc.url}/status", params={"model": model})).json()
                        into.setdefault((name, model), []).append(status["limits"]["rpm"]["used"])
            await asyncio.sleep(1)


def main() -> int:
    parser = options(__doc__)
    parser.add_argument(
        "--rpm", type=int, default=600, help="RPM of gpt-4o-mini per deployment (default 600)"
    )
    args = parse(parser)
    redis = redis_url()
    if redis is None:
        print("no Redis reachable: this benchmark needs one", file=sys.stderr)
        return 1
    cost = request_cost()
    rpm = {MODELS[0]: args.rpm, MODELS[1]: args.rpm // 2}
    mock_file = Path(workdir()) / "mock-models.yaml"
    mock_file.write_text(
        "models:\n" + "".join(f"  {m}: {{rpm: {r}, tpm: {r * cost}}}\n" for m, r in rpm.items())
    )
    with ExitStack() as stack:
        mocks = {
            name: stack.enter_context(mock(CONFIG=str(mock_file), TTFT_MS="100", LOG_REQUESTS="false"))
            for name in ("east", "west")
        }
        lines = ["deployments:"]
        for name, svc in mocks.items():
            lines += [f"  - name: {name}", f"    url: {svc.v1}", "    models:"]
            lines += [f"      {m}: {{rpm: {r}, tpm: {r * cost}}}" for m, r in rpm.items()]
        config = Path(workdir()) / f"apim-{uuid.uuid4().hex[:6]}.yaml"
        config.write_text("\n".join(lines) + "\n")
        shared = {"CONFIG": str(config), "REDIS_URL": redis, "REDIS_PREFIX": f"bench-{uuid.uuid4().hex[:8]}"}
        gws = [stack.enter_context(gateway(mocks["east"], LOG_REQUESTS="false", **shared)) for _ in range(3)]
        print(f"offering 2x each pool's budget for {args.duration:.0f} s (RPM {rpm}, {cost} tokens each) ...")
        answered: dict[str, list[float]] = {m: [] for m in MODELS}
        windows: dict[tuple[str, str], list[int]] = {}

        async def run() -> list[dict]:
            loads = [offer(m, gws, 2 * 2 * r / 60, args.duration, answered[m]) for m, r in rpm.items()]
            return list(await asyncio.gather(*loads, sample(mocks, args.duration, windows)))[:-1]

        statuses = asyncio.run(run())
        limited = {name: svc.status()["totals"]["rate_limited"] for name, svc in mocks.items()}

    print()
    print("| budget | limit RPM | mock RPM window median / max |")
    print("|---|---:|---:|")
    for (name, model), used in sorted(windows.items()):
        limit = rpm[model]
        median, peak = statistics.median(used) / limit, max(used) / limit
        print(f"| {name} / {model} | {limit} | {median:.1%} / {peak:.1%} |")
    print()
    print("| pool (model) | pool budget RPM | achieved / budget | answered 200 | other answers |")
    print("|---|---:|---:|---:|---|")
    for (model, r), status in zip(rpm.items(), statuses, strict=True):
        per_min = achieved_per_min(answered[model], STEADY_FROM, PERIOD, args.duration)
        other = {k: v for k, v in status.items() if k != 200}
        print(f"| {model} | {2 * r} | {per_min / (2 * r):.1%} | {status.get(200, 0)} | {other or '-'} |")
    print()
    print(f"upstream 429s: {limited}; ceiling with the default margin: 60/{PERIOD:g} = {60 / PERIOD:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
