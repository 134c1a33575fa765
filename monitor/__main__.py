"""``apim-monitor``: a live terminal dashboard of the mock LLM and the gateway."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys

from rich.console import Console

from monitor.client import StatusClient
from monitor.dashboard import render
from monitor.keys import View
from monitor.live import Monitor, run_live


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="apim-monitor",
        description="Live dashboard of the mock LLM's and the gateway's /status.",
    )
    add = parser.add_argument
    add("--mock-url", default="http://127.0.0.1:8000", help="mock LLM base URL (default: %(default)s)")
    add("--apim-url", default="http://127.0.0.1:8001", help="gateway base URL (default: %(default)s)")
    add("--mock-api-key", default=None, help="whose limits the mock shows (default: its first key)")
    add(
        "--mock-operator-key",
        default=os.environ.get("MOCK_OPERATOR_KEY") or None,
        help="the mock's MOCK_OPERATOR_KEY, if it has one (default: that environment variable)",
    )
    add(
        "--apim-operator-key",
        default=os.environ.get("APIM_OPERATOR_KEY") or None,
        help="the gateway's APIM_OPERATOR_KEY, if it has one (default: that environment variable)",
    )
    add("--interval", type=float, default=1.0, help="seconds between refreshes (default: %(default)g)")
    add("--timeout", type=float, default=2.0, help="seconds to wait for each /status (default: %(default)g)")
    add("--once", action="store_true", help="print one frame and exit")
    add("--json", action="store_true", help="print both /status bodies as one JSON and exit")
    add("--width", type=int, default=None, help="console width (default: the terminal's)")
    add(
        "--view",
        choices=[v.value for v in View],
        default=View.OVERVIEW.value,
        help="the view to start with (keys o, b, t switch while it runs; default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.interval <= 0:
        parser.error("--interval must be > 0")
    if args.timeout <= 0:
        parser.error("--timeout must be > 0")
    return args


def stop_on_sigterm() -> None:
    """Let SIGTERM (``docker stop``) unwind like Ctrl-C, so the terminal is restored either way."""
    task = asyncio.current_task()
    if task is not None:
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)


async def run(args: argparse.Namespace) -> None:
    stop_on_sigterm()
    console = Console(width=args.width)
    client = StatusClient(
        args.mock_url,
        args.apim_url,
        timeout=args.timeout,
        mock_api_key=args.mock_api_key,
        mock_operator_key=args.mock_operator_key,
        apim_operator_key=args.apim_operator_key,
    )
    async with client:
        if args.json:
            snapshot = await client.snapshot()
            sys.stdout.write(json.dumps(snapshot.as_json(), indent=2) + "\n")
        elif args.once:
            console.print(render(await client.snapshot(), view=View(args.view)))
        else:
            await run_live(Monitor(client, args.interval, View(args.view)), console, args.interval)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Live has already restored the cursor on its way out; Ctrl-C is the normal way to quit.
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
