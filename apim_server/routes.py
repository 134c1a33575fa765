"""The gateway's HTTP surface: chat completions, models, status, metrics, health."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.responses import Response

from apim_server.exchange import Exchange, record_refusal, shutdown_error
from apim_server.gateway import Gateway
from apim_server.queue import Priority, Ticket
from openai_wire.errors import APIError, _validation_message
from openai_wire.headers import retry_after_headers
from openai_wire.schemas import ChatCompletionRequest
from ratelimit.limiter import status_limits

LIMIT_WORDS = {
    "tokens/minute": "tokens per min (TPM)",
    "requests/minute": "requests per min (RPM)",
    "tokens/day": "tokens per day (TPD)",
    "requests/day": "requests per day (RPD)",
}


def gateway(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_big(limit)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_big(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_big(limit: int) -> APIError:
    return APIError(
        413, f"Request body too large: the gateway accepts at most {limit} bytes.", code="body_too_large"
    )


def too_large_error(model: str, name: str, limit: int, requested: int) -> APIError:
    """OpenAI's answer to a request that can never fit a limit (it is never queued)."""
    words = LIMIT_WORDS.get(name, name)
    return APIError(
        429,
        f"Request too large for {model} on {words}: Limit {limit}, Requested {requested}. "
        "The input or output tokens must be reduced in order to run successfully. "
        "Visit https://platform.openai.com/account/rate-limits to learn more.",
        type="tokens" if name.startswith("tokens") else "requests",
        code="rate_limit_exceeded",
        # The official SDKs honour this: retrying can never help.
        headers={"x-should-retry": "false"},
    )


async def chat_completions(request: Request) -> Response:
    gw = gateway(request)
    request_id = request.headers.get("x-request-id") or f"req_{uuid.uuid4().hex}"
    model = ""
    try:
        if gw.closing:
            raise shutdown_error()
        raw = await read_body(request, gw.settings.max_body_bytes)
        data = _parse(raw)
        model = str(data.get("model", ""))
        try:
            parsed = ChatCompletionRequest.model_validate(data)
        except ValidationError as exc:
            message, param = _validation_message(RequestValidationError(exc.errors(include_url=False)))
            raise APIError(400, message, param=param, code="invalid_request") from None
        try:
            priority = Priority.parse(request.headers.get("x-apim-priority"))
        except ValueError:
            raise APIError(
                400,
                "Invalid x-apim-priority header: expected high, normal or low.",
                param="x-apim-priority",
                code="invalid_priority",
            ) from None
        cost = gw.estimator.estimate(data)
        over = gw.limiter.too_large(cost)
        if over is not None:
            requested = cost.tokens if over.name.startswith("tokens") else cost.requests
            raise too_large_error(parsed.model, over.name, over.limit, requested)
    except APIError as error:
        response = error.response()
        response.headers["x-request-id"] = request_id
        response.headers["x-apim-queue-ms"] = "0"
        record_refusal(gw, request_id, model, error.status)
        return response

    stream = parsed.stream
    include_usage = parsed.include_usage
    if stream and not include_usage:
        # Always learn the usage of a stream; the tap strips that chunk again for the caller.
        options = data.get("stream_options")
        data["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        raw = json.dumps(data, separators=(",", ":")).encode()
    exchange = Exchange(
        gw, request, Ticket(priority, cost), raw, stream, include_usage, parsed.model, request_id
    )
    return await exchange.run()


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        raise APIError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
            "your HTTP library correctly. The OpenAI API expects a JSON payload.)",
            code="invalid_json",
        ) from None
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_request")
    return data


async def models(request: Request) -> Response:
    """The upstream's model list, passed through (not rate limited: it costs no budget)."""
    gw = gateway(request)
    request_id = request.headers.get("x-request-id") or f"req_{uuid.uuid4().hex}"
    headers = gw.upstream.headers(request.scope["headers"], request_id)
    try:
        upstream = await gw.upstream.models(headers)
    except Exception as exc:  # noqa: BLE001 - every transport failure is a 502
        raise APIError(
            502, f"Could not reach the upstream API ({type(exc).__name__}).", code="upstream_unreachable"
        ) from None
    return Response(
        upstream.content,
        upstream.status_code,
        headers={
            "content-type": upstream.headers.get("content-type", "application/json"),
            "x-request-id": request_id,
        },
    )


async def status(request: Request) -> JSONResponse:
    gw = gateway(request)
    m = gw.metrics
    figures = gw.figures()
    p50, p99 = m.wait_percentiles()
    try:
        limits: dict[str, Any] = status_limits(await gw.limiter.peek(gw.key))
    except Exception as exc:  # noqa: BLE001 - the store may be down; say so, keep answering
        limits = {"error": f"limiter store unavailable: {type(exc).__name__}"}
    try:
        cluster = await gw.cluster.view()
    except Exception as exc:  # noqa: BLE001
        cluster = {"error": f"cluster view unavailable: {type(exc).__name__}"}
    paused = gw.dispatcher.paused_for
    return JSONResponse(
        {
            "service": "apim",
            "store": gw.store.kind,
            "instance": gw.instance_id,
            "upstream": gw.settings.upstream_url,
            "budget_key": gw.key,
            "uptime_s": round(time.time() - gw.started_at, 1),
            "closing": gw.closing,
            "limits": limits,
            "totals": {
                "requests": m.total_requests,
                "rate_limited": m.total_rate_limited,
                "errors": m.total_errors,
                "admitted": m.total_admitted,
                "upstream_429": m.total_upstream_429,
            },
            "queue": {
                "depth": figures["depth"],
                "in_flight": figures["in_flight"],
                "oldest_wait_s": figures["oldest_wait_s"],
                "by_priority": gw.queue.depth_by_class(),
                "max_queue": gw.settings.max_queue,
                "max_concurrency": gw.settings.max_concurrency,
                "wait_p50_s": None if p50 is None else round(p50, 4),
                "wait_p99_s": None if p99 is None else round(p99, 4),
            },
            "admitted_per_min": m.admitted_minute.total(),
            "paused_until": round(time.time() + paused, 3) if paused > 0 else None,
            "paused_s": round(paused, 3),
            "cluster": cluster,
        }
    )


async def metrics(request: Request) -> Response:
    return Response(generate_latest(gateway(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def readyz(request: Request) -> JSONResponse:
    gw = gateway(request)
    checks = await gw.readiness()
    ready = all(checks.values()) and not gw.closing
    return JSONResponse(
        {"ready": ready, **checks, "closing": gw.closing},
        status_code=200 if ready else 503,
        headers={} if ready else retry_after_headers(1000),
    )


def install(app: FastAPI) -> None:
    """Put the gateway's routes on ``app``."""
    # The chat route is a plain Starlette route: it parses and validates the body itself, and
    # FastAPI's dependency machinery would only add work to the hot path.
    app.router.add_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.add_api_route("/v1/models", models, methods=["GET"])
    app.add_api_route("/status", status, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    app.add_api_route("/healthz", healthz, methods=["GET"])
    app.add_api_route("/readyz", readyz, methods=["GET"])
