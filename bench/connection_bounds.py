"""Cost of the connection bounds: uvicorn's httptools protocol vs serving.connections.BoundedProtocol.

Both protocols parse the same keep-alive request stream (a chat request with the headers the
openai SDK sends) into a minimal ASGI app on one uvloop event loop, with an in-memory
transport, so only the protocols' own work differs. Rounds alternate between the two; prints
a markdown table of the fastest round of each (the least disturbed by other load) and the ratio.

    python bench/connection_bounds.py [--rounds 5] [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import uvloop
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from serving.connections import BoundedProtocol

REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:8001\r\ncontent-type: application/json\r\n"
    b"user-agent: OpenAI/Python 1.54.0\r\naccept: application/json\r\naccept-encoding: gzip, deflate\r\n"
    b"authorization: Bearer sk-0123456789abcdef0123456789abcdef\r\nx-stainless-lang: python\r\n"
    b"content-length: 2\r\n\r\n{}"
)


async def app(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


class MemoryTransport(asyncio.Transport):
    """Takes what a protocol writes and forgets it."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name in ("peername", "sockname") else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass


async def per_request_us(protocol: type[HttpToolsProtocol], requests: int) -> float:
    config = Config(app=app, log_level="warning", proxy_headers=False)
    config.load()
    state = ServerState()
    conn = protocol(config, state, {}, asyncio.get_running_loop())
    conn.connection_made(MemoryTransport())
    started = time.perf_counter()
    for _ in range(requests):
        conn.data_received(REQUEST)
        # The request's task answers within a few loop turns: yielding them is what is measured.
        while state.tasks:  # noqa: ASYNC110
            await asyncio.sleep(0)
    elapsed = time.perf_counter() - started
    conn.connection_lost(None)
    return elapsed / requests * 1e6


async def measure(rounds: int, requests: int) -> dict[str, list[float]]:
    kinds: dict[str, type[HttpToolsProtocol]] = {
        "uvicorn httptools": HttpToolsProtocol,
        "BoundedProtocol": BoundedProtocol,
    }
    results: dict[str, list[float]] = {name: [] for name in kinds}
    for r in range(rounds):
        order = list(kinds.items()) if r % 2 == 0 else list(kinds.items())[::-1]
        for name, protocol in order:
            results[name].append(await per_request_us(protocol, requests))
    return results


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    results = uvloop.run(measure(args.rounds, args.requests))
    print(f"{args.rounds} rounds of {args.requests} keep-alive requests each; fastest round per protocol\n")
    print("| protocol | us per request | rounds (us) |")
    print("|---|---:|---|")
    for name, values in results.items():
        print(f"| {name} | {min(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} |")
    stock, bounded = (min(v) for v in results.values())
    print(f"\nBoundedProtocol / httptools: {bounded / stock:.2f}x ({bounded - stock:+.1f} us per request)")


if __name__ == "__main__":
    main()
