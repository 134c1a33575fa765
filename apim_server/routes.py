"""The gateway's HTTP surface besides the POST endpoints: models, status, metrics, health."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from apim_server.budget import Budget
from apim_server.chat import model_not_found
from apim_server.config_file import ANY_MODEL
from apim_server.exchange import upstream_auth_failed
from apim_server.gateway import Gateway
from apim_server.request_ids import new_request_id
from openai_wire.endpoints import BY_PATH
from openai_wire.errors import APIError
from openai_wire.headers import retry_after_headers
from ratelimit.limiter import status_limits
from serving.urls import redacted


def gateway(request: Request) -> Gateway:
    return request.app.state.gateway  # type: ignore[no-any-return]


async def models(request: Request) -> Response:
    """The configured models, or (one deployment serving every model) the upstream's list passed
    through. Not rate limited: it costs no budget."""
    gw = gateway(request)
    gw.caller_keys.check(request.headers)
    request_id = request.headers.get("x-request-id") or new_request_id()
    if gw.router.route(ANY_MODEL) is None:
        created = int(gw.started_at)
        data = [
            {"id": model, "object": "model", "created": created, "owned_by": "apim"}
            for model in gw.router.pools
        ]
        return JSONResponse({"object": "list", "data": data}, headers={"x-request-id": request_id})
    upstream_client = gw.first_upstream
    headers = upstream_client.headers(request.scope["headers"], request_id)
    return await _passed_through(gw, upstream_client.models(headers), request_id)


async def model(request: Request, model_id: str) -> Response:
    """One model: a configured one (404 ``model_not_found`` for one no deployment serves), or
    (one deployment serving every model) the upstream's answer passed through."""
    gw = gateway(request)
    gw.caller_keys.check(request.headers)
    request_id = request.headers.get("x-request-id") or new_request_id()
    if gw.router.route(ANY_MODEL) is None:
        if gw.router.route(model_id) is None:
            raise model_not_found(model_id)
        shown = gw.router.model_id(model_id)
        body = {"id": shown, "object": "model", "created": int(gw.started_at), "owned_by": "apim"}
        return JSONResponse(body, headers={"x-request-id": request_id})
    upstream_client = gw.first_upstream
    headers = upstream_client.headers(request.scope["headers"], request_id)
    return await _passed_through(gw, upstream_client.model(model_id, headers), request_id)


async def _passed_through(gw: Gateway, call: Awaitable[httpx.Response], request_id: str) -> Response:
    """An upstream GET's answer as the caller sees it: redacted, our request id, 502 if unreachable."""
    upstream_client = gw.first_upstream
    try:
        upstream = await call
    except Exception as exc:  # noqa: BLE001 - every transport failure is a 502
        raise APIError(
            502, f"Could not reach the upstream API ({type(exc).__name__}).", code="upstream_unreachable"
        ) from None
    if upstream.status_code in (401, 403) and upstream_client.own_key:
        raise upstream_auth_failed()
    return Response(
        gw.redactor.body(upstream.content),
        upstream.status_code,
        headers={
            "content-type": gw.redactor.text(upstream.headers.get("content-type", "application/json")),
            "x-request-id": request_id,
        },
    )


async def _limits(budget: Budget) -> dict[str, Any]:
    try:
        return status_limits(await budget.peek())
    except Exception as exc:  # noqa: BLE001 - the store may be down; say so, keep answering
        return {"error": f"limiter store unavailable: {type(exc).__name__}"}


async def status(request: Request) -> JSONResponse:
    """Today's single-budget shape at the top level (the first budget's limits), plus every
    budget, pool and deployment when the file configures several."""
    gw = gateway(request)
    gw.operator.check(request.headers)
    m = gw.metrics
    figures = gw.figures()
    p50, p99 = m.wait_percentiles()
    lag50, lag99 = m.lag_percentiles()
    router = gw.router
    views = [await _limits(b) for b in router.budgets]
    try:
        cluster = await gw.cluster.view()
    except Exception as exc:  # noqa: BLE001
        cluster = {"error": f"cluster view unavailable: {type(exc).__name__}"}
    paused = gw.paused_for()
    now = time.monotonic()
    first = router.budgets[0]
    health = gw.health
    held = health.wait_s()
    body: dict[str, Any] = {
        "service": "apim",
        "store": gw.store.kind,
        "instance": gw.instance_id,
        "upstream": redacted(first.deployment.plan.url),
        "budget_key": first.key,
        "config": gw.plan.source,
        "uptime_s": round(time.time() - gw.started_at, 1),
        "closing": gw.closing,
        "limits": views[0],
        "totals": {
            "received": m.total_received,
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
            "by_priority": router.depth_by_class(),
            "max_queue": gw.settings.max_queue,
            "max_concurrency": gw.settings.max_concurrency,
            "wait_p50_s": None if p50 is None else round(p50, 4),
            "wait_p99_s": None if p99 is None else round(p99, 4),
            "waits": m.waits(router.arrivals()),
        },
        "admitted_per_min": m.admitted_minute.total(),
        "per_min": {"window_s": 60, **m.per_min()},
        "dispatch_lag_ms": {
            "p50": None if lag50 is None else round(lag50 * 1000, 2),
            "p99": None if lag99 is None else round(lag99 * 1000, 2),
            "max": round(m.max_lag * 1000, 2),
            "margin": gw.settings.window_margin_ms,
        },
        "paused_until": round(time.time() + paused, 3) if paused > 0 else None,
        "paused_s": round(paused, 3),
        # Set only while the limiter store really fails (one owner: the store's health).
        "store_unreachable_s": None if health.down_since is None else round(now - health.down_since, 3),
        "store_hold_s": round(held, 3) if held is not None and held != float("inf") else 0.0,
        "store_hold_reason": health.hold_reason if held is not None and held != float("inf") else None,
        "cluster": cluster,
        "budgets": [
            {
                "deployment": b.deployment.name,
                "model": b.model,
                "key": b.key,
                "limits": view,
                "paused_s": round(b.ready_in(), 3),
                "following": gw.following.status(b),
            }
            for b, view in zip(router.budgets, views, strict=True)
        ],
        "pools": {
            model: {
                "depth": pool.queue.depth,
                "oldest_wait_s": 0.0
                if (oldest := pool.queue.oldest_arrival()) is None
                else round(now - oldest, 3),
                "members": [b.deployment.name for b in pool.members],
            }
            for model, pool in router.pools.items()
        },
        "deployments": {
            name: {"url": redacted(d.plan.url), "kind": d.plan.kind, **d.status()}
            for name, d in router.deployments.items()
        },
    }
    if gw.tenants.enabled:
        body["tenants"] = await gw.tenant_figures.status()
    return JSONResponse(body)


async def metrics(request: Request) -> Response:
    gw = gateway(request)
    gw.operator.check(request.headers)
    await gw.metrics.before_scrape()
    return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)


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


async def post_elsewhere(request: Request) -> Response:
    """Never reached by a POST (``app.GatewayApp`` serves them); present so that other methods on
    the POST endpoints' paths are 405s, not 404s."""
    raise APIError(405, "Method Not Allowed")


def install(app: FastAPI) -> None:
    """Put the gateway's routes on ``app`` (the POST endpoints bypass it: see ``app``)."""
    for path in BY_PATH:
        app.router.add_route(path, post_elsewhere, methods=["POST"])
    app.add_api_route("/v1/models", models, methods=["GET"])
    app.add_api_route("/v1/models/{model_id:path}", model, methods=["GET"])
    app.add_api_route("/status", status, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    app.add_api_route("/healthz", healthz, methods=["GET"])
    app.add_api_route("/readyz", readyz, methods=["GET"])
