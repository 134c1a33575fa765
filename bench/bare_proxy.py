"""The floor under the gateway: uvicorn with the services' connection protocol, passing each POST
to one upstream on the gateway's keep-alive transport and answering with what comes back.

No validation, token count, limiter, accounting, log line or metrics: what a Python gateway on
this stack (uvicorn, httptools, uvloop, the lean transport) pays before any work of its own.
``gateway_overhead.py --floor`` measures it beside the gateway.

    BARE_UPSTREAM_URL=http://127.0.0.1:8000/v1 python -m bare_proxy --host 127.0.0.1 --port 8002
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import httpx
import uvicorn

from apim_server.transport import LeanTransport, body_chunks, body_ended, read_body
from serving.connections import BoundedProtocol

JSON = (b"content-type", b"application/json")


class BareProxy:
    """An ASGI app: ``/healthz``, and every POST under ``/v1`` passed to the upstream."""

    def __init__(self, upstream_v1: str) -> None:
        self.upstream_v1 = upstream_v1.rstrip("/")
        self.transport = LeanTransport(max_connections=256)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/healthz":
            head = [JSON, (b"content-length", b"2")]
            await send({"type": "http.response.start", "status": 200, "headers": head})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        parts = []
        more = True
        while more:
            message = await receive()
            parts.append(message.get("body", b""))
            more = message.get("more_body", False)
        url = httpx.URL(self.upstream_v1 + scope["path"].removeprefix("/v1"))
        headers = [JSON, (b"authorization", b"Bearer bare-proxy")]
        upstream = await self.transport.post(url, headers, b"".join(parts), {"read": 60.0})
        kind = (b"content-type", upstream.headers.get("content-type", "application/json").encode())
        if upstream.headers.get("transfer-encoding") == "chunked":
            await send({"type": "http.response.start", "status": upstream.status_code, "headers": [kind]})
            last = b""  # as the gateway relays: the last piece goes with the end
            async for chunk in body_chunks(upstream):
                if body_ended(upstream):
                    last += chunk
                else:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": last, "more_body": False})
            return
        body = await read_body(upstream)
        length = (b"content-length", b"%d" % len(body))
        await send({"type": "http.response.start", "status": upstream.status_code, "headers": [kind, length]})
        await send({"type": "http.response.body", "body": body})


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args()
    app = BareProxy(os.environ["BARE_UPSTREAM_URL"])
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        http=BoundedProtocol,
        log_level="warning",
        access_log=False,
        server_header=False,
        proxy_headers=False,  # as both services
    )


if __name__ == "__main__":
    main()
