"""What one request log line costs the gateway, text vs JSON (APIM_LOG_FORMAT).

Each round starts a fresh process per format (alternating), which sets logging up as the
gateway does (``apim_server.logs.configure``, stderr to /dev/null, the batched request handler
and its writer thread) and logs ``--lines`` request lines with the gateway's own template and
realistic values; it reports its CPU time (user and system, every thread) per line. A third
side logs at level ``warning``, where the line is not written: what a line costs when dropped.

    python bench/log_format_cost.py [--rounds 7] [--lines 50000]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import time

from apim_server import logs

TEMPLATE = (
    "request id=%s model=%s pool=%s priority=%s stream=%s tokens_est=%d tokens_actual=%s "
    "attempts=%d queue_ms=%d upstream_ms=%d status=%d"
)
SIDES = {"text": ("info", "text"), "json": ("info", "json"), "not written": ("warning", "text")}


def one(level: str, log_format: str, lines: int) -> float:
    """CPU µs per line in this process, logging set up as the gateway does."""
    devnull = open(os.devnull, "w")  # noqa: SIM115 - the process's stderr until it ends
    sys.stderr = devnull
    logs.configure(level, log_format)
    log = logging.getLogger(logs.REQUEST_LOGGER)
    ids = [f"req_{i:032x}" for i in range(1024)]
    started = time.process_time()
    for i in range(lines):
        log.info(
            TEMPLATE, ids[i & 1023], "gpt-4o-mini", "gpt-4o-mini", "normal", "false", 13, 13, 1, 0, 9, 200
        )
    logs.flush()
    return (time.process_time() - started) / lines * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--one", choices=list(SIDES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(f"{one(*SIDES[args.one], args.lines):.3f}")
        return 0
    found: dict[str, list[float]] = {side: [] for side in SIDES}
    for _ in range(args.rounds):
        for side in SIDES:
            out = subprocess.run(
                [sys.executable, __file__, "--one", side, "--lines", str(args.lines)],
                capture_output=True,
                text=True,
                check=True,
            )
            found[side].append(float(out.stdout))
    print(f"{args.lines} request lines per process, {args.rounds} rounds alternating; CPU µs per line")
    print()
    print("| format | CPU µs per line (median) | rounds |")
    print("|---|---:|---|")
    for side, values in found.items():
        print(f"| {side} | {statistics.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    ratios = [j / t for j, t in zip(found["json"], found["text"], strict=True)]
    print()
    print(f"json / text: {statistics.median(ratios):.2f} (median of the per-round ratios)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
