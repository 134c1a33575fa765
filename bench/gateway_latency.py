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

import sys
from contextlib import ExitStack

from gateway_budget import (
    PERIOD,
    STEADY_FROM,
    Load,
    gateway,
    measure,
    mock,
    options,
    parse,
    request_cost,
    table,
)

RPM = 600


def main() -> int:
    args = parse(options(__doc__))
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
        measure(loads, args.duration)

    print()
    print(
        f"Upstream: MOCK_TTFT_MS=1000 (every answer takes 1 s); limits RPM {RPM}, TPM {RPM * cost} on "
        f"both sides; offered {2 * RPM} req/min for {args.duration:.0f} s; rates over whole {PERIOD:g} s "
        f"periods from {STEADY_FROM:g} s."
    )
    print()
    print(table("forwarding", loads, args.duration))
    return 0


if __name__ == "__main__":
    sys.exit(main())
