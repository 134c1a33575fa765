"""The ASGI application: the POST endpoints (chat completions first) on a direct path, Azure
OpenAI's paths read as the ``/v1`` ones, everything else through FastAPI (routes,
OpenAI-shaped errors, and a lifespan that starts and drains the gateway)."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from apim_server import logs, routes
from apim_server.chat import forward
from apim_server.config import Settings
from apim_server.config_file import load
from apim_server.cors import GatewayCORS
from apim_server.gateway import Gateway
from apim_server.openapi import install as install_openapi
from openai_wire import azure, errors
from openai_wire.endpoints import BY_PATH, CHAT, ApiEndpoint
from openai_wire.errors import APIError
from serving.connections import Bounds

log = logging.getLogger("apim")


CHAT_PATH = CHAT.path


class GatewayApp:
    """The outermost ASGI layer: the POST endpoints (``openai_wire.endpoints``) go straight to
    their handler, everything else (other routes, lifespan) to the FastAPI app.

    Routing and middleware cost more than a tenth of a forwarded request's CPU, and the
    handler needs none of them: it answers every error itself in OpenAI's shape. Chat is
    checked first: it is the hot path.
    """

    def __init__(
        self, api: FastAPI, gateway: Gateway, bounds: Bounds, cors_origins: list[str] | None = None
    ) -> None:
        self.api = api
        self.gateway = gateway
        # Read by serving.connections.BoundedProtocol, uvicorn's protocol for this app.
        self.bounds = bounds
        # CORS wraps everything (preflights never reach the routes); off, it costs nothing.
        self.entry: Callable[[Scope, Receive, Send], Awaitable[None]] = (
            GatewayCORS(self.route, cors_origins) if cors_origins else self.route
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.entry(scope, receive, send)

    def begin_shutdown(self) -> None:
        """Called by serving.connections.BoundedProtocol once uvicorn's listeners are closed:
        the queued are answered 503 now rather than held until the graceful-shutdown timeout."""
        self.gateway.begin_shutdown()

    async def route(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        path = scope["path"]
        if path == CHAT_PATH and scope["method"] == "POST":
            await self.serve(CHAT, None, scope, receive, send)
            return
        deployment = None
        if path.startswith("/openai/"):
            # Azure OpenAI's paths, as the SDK's AzureOpenAI client calls them; one Azure would
            # not serve (no api-version, an unknown operation) stays as it is: a 404.
            found = azure.route(path, scope.get("query_string", b""))
            if found is not None:
                path, deployment = found.path, found.deployment
                scope = {**scope, "path": path, "raw_path": path.encode()}
        endpoint = BY_PATH.get(path)
        if endpoint is not None and scope["method"] == "POST":
            await self.serve(endpoint, deployment, scope, receive, send)
            return
        await self.api(scope, receive, send)

    async def serve(
        self, endpoint: ApiEndpoint, deployment: str | None, scope: Scope, receive: Receive, send: Send
    ) -> None:
        request = Request(scope, receive, send)
        try:
            response = await forward(self.gateway, request, endpoint, deployment)
        except Exception:
            log.exception("unhandled error in a %s request", endpoint.path)
            response = APIError(500, "The server had an error while processing your request.").response()
        await response(scope, receive, send)


def create_app(settings: Settings | None = None) -> GatewayApp:
    """The gateway app; settings from the environment unless given."""
    settings = settings or Settings()
    # Here rather than in main(): with --workers each worker process builds its own app.
    logs.configure(settings.log_level, settings.log_format)
    plan = load(settings.config, settings) if settings.config else None
    gateway = Gateway(settings, plan=plan)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        # What start-up built lives until exit: keep it out of the collector's full passes.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await gateway.stop()
            logs.flush()

    api = FastAPI(title="apim", lifespan=lifespan, docs_url=None, redoc_url=None)
    api.state.gateway = gateway
    errors.install(api)
    routes.install(api)
    install_openapi(api, keys=bool(settings.api_keys))
    # The forwarding pool and the store need files of their own besides callers' sockets.
    bounds = settings.bounds(reserved_files=64 + settings.max_concurrency)
    return GatewayApp(api, gateway, bounds, settings.cors_origins)
