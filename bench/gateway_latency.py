"""Latency-bound throughput: a slow upstream (1 s per answer) and a budget of 600 RPM.

A one-at-a-time forwarder can never exceed 60 requests per minute against a 1 s upstream,
whatever the budget. The gateway admits by budget and forwards concurrently, so it should
reach the budget. Two set-ups run side by side on 127.0.0.1, each a gateway in front of its
own mock (MOCK_TTFT_MS=1000, RPM 600 on both sides), offered twice the budget, open loop:

- the gateway as configured by default (APIM_MAX_CONCURRENCY=256);
- the same gateway with APIM_MAX_CONCURRENCY=1: the seed design's one-at-a-time worker.

Achieved RPM is counted over whole periods of the gateway's window after the first (see
``gateway_budget``), with upstream 429s and the mock's own window counts.

    python bench/gateway_latency.py [--duration 190]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from contextlib import ExitStack

from gateway_budget import DEFAULT_MARGIN_MS, Load, gateway, mock, report, request_cost, run_loads

RPM = 600


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=190, help="seconds of offered load (default 190)")
    args = parser.parse_args()
    if args.duration < 130:
        parser.error("--duration must be at least 130 s (one window fills, one whole window is measured)")
    cost = request_cost()
    limits = {"RPM_LIMIT": str(RPM), "TPM_LIMIT": str(RPM * cost)}
    quiet = {"LOG_REQUESTS": "false"}
    with ExitStack() as stack:
        loads = []
        for name, concurrency in (("concurrent (default)", "256"), ("one at a time (concurrency 1)", "1")):
            upstream = stack.enter_context(mock(**limits, **quiet, TTFT_MS="1000"))
            gw = stack.enter_context(gateway(upstream, **limits, **quiet, MAX_CONCURRENCY=concurrency))
            loads.append(Load(name, [gw], upstream, RPM, RPM * cost))
        print(f"offering {2 * RPM} req/min to each set-up for {args.duration:.0f} s ...", flush=True)
        asyncio.run(run_loads(loads, args.duration, 2.0))
        for load in loads:
            load.collect_lags()

    period = 60 + DEFAULT_MARGIN_MS / 1000
    print()
    print(
        f"Upstream: MOCK_TTFT_MS=1000 (every answer takes 1 s); limits RPM {RPM}, TPM {RPM * cost} on "
        f"both sides; offered {2 * RPM} req/min for {args.duration:.0f} s; rates over whole {period:g} s "
        "periods from 65 s."
    )
    print()
    print(
        "| forwarding | achieved RPM / limit | achieved TPM / limit | mock RPM window median / max "
        "| mock TPM window median / max | upstream 429s | queue wait p50 / p99 "
        "| dispatch lag p99 / max | answered 200 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for load in loads:
        print("\n".join(report(load, 65.0, period, args.duration)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
