"""The embedded store's hot path in process: one request admitted on its own coroutine.

What a gateway without a shared store does for every request that finds nothing waiting:
a ticket, ``Dispatcher.admit_now`` (the budget's limits in the embedded store, the grant),
the slot released. No HTTP, so a few microseconds show; the HTTP path around it is measured by
``gateway_overhead.py``. Limits far above the load, no tenants.

With ``--before REV`` the same loop also runs on the tree of git revision REV (``git archive``),
each round in a fresh process per side, the sides alternating: medians and the median of the
per-round now/before ratios, in process CPU time (steady on a shared machine).

    python bench/admission_path.py [--rounds 7] [--calls 20000] [--before REV]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from gateway_budget import revision_tree

LOOP = """
import asyncio, sys, time
from apim_server.budget import Budget, Deployment
from apim_server.config_file import ANY_MODEL, DeploymentPlan
from apim_server.dispatcher import Dispatcher
from apim_server.queue import Priority, Ticket, TicketQueue
from apim_server.upstream import Upstream
from ratelimit.cost import CostRule
from ratelimit.embedded import EmbeddedStore
from ratelimit.limits import Cost, Limits

async def main(calls):
    url = "http://127.0.0.1:9/v1"
    plan = DeploymentPlan("b", "deployment:b", url, "", "openai", CostRule.SUM, 10, {}, {})
    deployment = Deployment(plan, Upstream(plan.url, "", 10, 1.0), 1024)
    limits = Limits(rpm=10**9, tpm=10**13, rpd=10**10, tpd=10**15)
    member = Budget(deployment, ANY_MODEL, limits, EmbeddedStore())
    dispatcher = Dispatcher([member], TicketQueue(100), inline=True)
    cost = Cost(1, 100)
    for _ in range(2000):  # warm-up
        (await dispatcher.admit_now(Ticket(Priority.NORMAL, cost))).release()
    started = time.process_time()
    for _ in range(calls):
        (await dispatcher.admit_now(Ticket(Priority.NORMAL, cost))).release()
    print((time.process_time() - started) / calls * 1e6)

asyncio.run(main(int(sys.argv[1])))
"""


def one_round(calls: int, source: Path | None) -> float:
    """Microseconds of CPU per admission in a fresh process (``source``: that tree's packages)."""
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = str(source)
    out = subprocess.run(
        [sys.executable, "-c", LOOP, str(calls)], env=env, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20_000, help="admissions per round")
    parser.add_argument("--before", metavar="REV", help="also the tree of this git revision, alternating")
    args = parser.parse_args()
    sides: dict[str, Path | None] = {"now": None}
    if args.before:
        sides[f"at {args.before}"] = revision_tree(args.before)
    began = time.perf_counter()
    samples: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, source in sides.items():
            samples[name].append(one_round(args.calls, source))
    print(
        f"{args.rounds} rounds of {args.calls:,} admissions, a fresh process per side and round, alternating"
    )
    print("\n| inline admission, embedded store, no tenants | CPU µs per admission (median) | rounds |")
    print("|---|---:|---|")
    for name, values in samples.items():
        print(f"| {name} | {statistics.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    if args.before:
        ratios = [a / b for a, b in zip(samples["now"], samples[f"at {args.before}"], strict=True)]
        print(f"\nnow / {args.before}: {statistics.median(ratios):.3f} (median of the per-round ratios)")
    print(f"total run time {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
