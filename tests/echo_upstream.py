"""An upstream that echoes what it received, as some proxies and error pages do: the request's
headers come back in the body, in passed-back headers, and (streamed) split across two chunks.

``python -m tests.echo_upstream --host H --port P``; the request's ``user`` field
``echo-status-N`` picks the status (a body field: the gateway forwards no unknown header), and
``echo-headers:NAME=VALUE&...`` (URL-encoded) adds those headers to the answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def _echoed(request: Request) -> dict[str, str]:
    return {name: value for name, value in request.headers.items()}


def _headers(request: Request) -> dict[str, str]:
    auth = request.headers.get("authorization", "")
    return {"openai-echo-authorization": auth, "x-ratelimit-echo": auth, "x-request-id": auth[-20:]}


async def chat(request: Request) -> Response:
    body = json.loads(await request.body())
    user = str(body.get("user") or "")
    status = int(user.removeprefix("echo-status-")) if user.startswith("echo-status-") else 200
    extra = dict(parse_qsl(user.removeprefix("echo-headers:"))) if user.startswith("echo-headers:") else {}
    if body.get("stream") and status == 200:
        return StreamingResponse(_stream(request), media_type="text/event-stream", headers=_headers(request))
    payload = {
        "id": "chatcmpl-echo",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "echo"}, "finish_reason": "stop"}
        ],
        "usage": USAGE,
        "echo": _echoed(request),
    }
    if status >= 400:
        payload = {
            "error": {"message": f"echo: {_echoed(request)}", "type": "x", "param": None, "code": None}
        }
    return JSONResponse(payload, status_code=status, headers=_headers(request) | extra)


async def _stream(request: Request) -> AsyncIterator[bytes]:
    frame = json.dumps(
        {"id": "c", "object": "chat.completion.chunk", "choices": [], "echo": _echoed(request)}
    )
    data = f"data: {frame}\n\n".encode()
    auth = request.headers.get("authorization", "").encode()
    cut = data.find(auth) + len(auth) // 2 if auth and auth in data else len(data) // 2
    # Two writes, a pause between, so the gateway reads them as two chunks.
    yield data[:cut]
    await asyncio.sleep(0.05)
    yield data[cut:]
    usage = json.dumps({"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": USAGE})
    yield f"data: {usage}\n\ndata: [DONE]\n\n".encode()


async def models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [], "echo": _echoed(request)}, headers=_headers(request))


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", models),
        Route("/healthz", healthz),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
