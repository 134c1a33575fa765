"""The POST endpoints (chat completions, and the rest of ``openai_wire.endpoints``): read,
validate, price, then hand over to an Exchange. One path for all: the endpoint is data (its
schema, its cost operation, its upstream path), not a branch.

They are served outside FastAPI's routing and middleware (see ``app``): the hot path reads the
body, parses it once with ``json``, validates it once with pydantic, and forwards the
caller's bytes.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from apim_server.exchange import (
    CLIENT_CLOSED,
    Answer,
    Exchange,
    RelayResponse,
    record_refusal,
    shutdown_error,
)
from apim_server.gateway import Gateway
from apim_server.queue import Priority, Ticket
from apim_server.request_ids import new_request_id
from openai_wire.content_type import check_content_type
from openai_wire.endpoints import CHAT, ApiEndpoint
from openai_wire.errors import LIMIT_WORDS, APIError, _validation_message, clip


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise APIError(400, "Invalid Content-Length header.", code="invalid_request")
        if int(declared) > limit:
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
        f"Request too large for {clip(model)} on {words}: Limit {limit}, Requested {requested}. "
        "The input or output tokens must be reduced in order to run successfully. "
        "Visit https://platform.openai.com/account/rate-limits to learn more.",
        type="tokens" if name.startswith("tokens") else "requests",
        code="rate_limit_exceeded",
        # The official SDKs honour this: retrying can never help.
        headers={"x-should-retry": "false"},
    )


async def chat_completions(gw: Gateway, request: Request) -> Response | Answer | RelayResponse:
    """A chat completion's answer (see ``forward``)."""
    return await forward(gw, request, CHAT)


async def forward(
    gw: Gateway, request: Request, endpoint: ApiEndpoint, deployment: str | None = None
) -> Response | Answer | RelayResponse:
    """The caller's answer: the upstream's, or a gateway error in OpenAI's shape.

    ``deployment`` is the Azure deployment an inbound Azure path names: it stands for the
    model, whatever the body says (as at Azure).
    """
    # Two steps, so that a request waiting in the queue holds this small frame rather than the
    # one that read and checked it.
    exchange = await _exchange(gw, request, endpoint, deployment)
    return exchange if isinstance(exchange, Response) else await exchange.run()


async def _exchange(
    gw: Gateway, request: Request, endpoint: ApiEndpoint, deployment: str | None
) -> Exchange | Response:
    """The request read, checked and ready to queue; or, refused, the caller's answer."""
    request_id = request.headers.get("x-request-id") or new_request_id()
    model = ""
    gw.metrics.received()
    try:
        if gw.closing:
            raise shutdown_error()
        # Before the body is read: a stranger costs us no more than the headers.
        gw.caller_keys.check(request.headers)
        check_content_type(request)
        try:
            raw = await read_body(request, gw.settings.max_body_bytes)
        except ClientDisconnect:
            # The caller hung up mid-body: nothing to answer, recorded as nginx's 499.
            record_refusal(gw, request_id, model, CLIENT_CLOSED)
            return Response(status_code=CLIENT_CLOSED)
        data = _parse(raw)
        model, rewrite = _name_model(gw, data, deployment)
        try:
            parsed = endpoint.schema.model_validate(data)
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
        tenant = gw.tenants.identify(request.headers)
        priority = gw.tenants.clamp(priority, tenant)
        pool = gw.router.route(parsed.model)
        if pool is None:
            raise model_not_found(parsed.model)
        cost = pool.estimate(data, endpoint.operation)
        over = pool.too_large(cost)
        if over is not None:
            requested = cost.tokens if over.name.startswith("tokens") else cost.requests
            raise too_large_error(parsed.model, over.name, over.limit, requested)
    except APIError as error:
        error.headers |= {"x-request-id": request_id, "x-apim-queue-ms": "0"}
        record_refusal(gw, request_id, model, error.status)
        return error.response()

    stream: bool = getattr(parsed, "stream", False)
    # A Responses stream always ends with its usage (``response.completed``); others say.
    include_usage: bool = getattr(parsed, "include_usage", True)
    if stream and not include_usage:
        # Always learn the usage of a stream; the tap strips that chunk again for the caller.
        options = data.get("stream_options")
        data["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        rewrite = True
    if rewrite:
        raw = json.dumps(data, separators=(",", ":")).encode()
    # Returned, not run from here: the parsed body and its validated model (several times the
    # raw bytes) go with this frame before the wait, and only the bytes to forward stay.
    return Exchange(
        gw,
        pool,
        request,
        Ticket(priority, cost, tenant, pool.share(cost, tenant) if gw.tenants.enabled else 0),
        raw,
        stream,
        include_usage,
        parsed.model,
        request_id,
        endpoint.path,
    )


def _name_model(gw: Gateway, data: dict[str, Any], deployment: str | None) -> tuple[str, bool]:
    """The model the body is for, set in ``data``, and whether the body had to change for it: an
    Azure path's deployment replaces the body's model, and an Azure deployment name goes
    upstream as the model it stands for."""
    rewrite = False
    if deployment is not None and data.get("model") != deployment:
        data["model"] = deployment
        rewrite = True
    model = str(data.get("model", ""))
    if model not in gw.router.pools:
        named = gw.router.model_id(model)
        if named != model:
            data["model"] = model = named
            rewrite = True
    return model, rewrite


def model_not_found(model: str) -> APIError:
    """No deployment serves ``model``: OpenAI's 404, at once, costing no budget."""
    shown = model if len(model) <= 256 else model[:256] + "..."
    return APIError(
        404,
        f"The model `{shown}` does not exist or you do not have access to it.",
        type="invalid_request_error",
        param="model",
        code="model_not_found",
    )


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except RecursionError:
        raise APIError(
            400, "The JSON body of your request is nested too deeply.", code="invalid_json"
        ) from None
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
