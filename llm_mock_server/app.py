"""The mock's ASGI application: settings -> limiter, store, routes, wire headers."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from time import perf_counter

from fastapi import FastAPI, Request
from starlette.types import Message, Receive, Scope, Send

from llm_mock_server import azure
from llm_mock_server.completion import vocabulary
from llm_mock_server.config import MockSettings
from llm_mock_server.faults import DROP_SCOPE_KEY, DROP_SENTINEL
from llm_mock_server.logs import flush_request_log
from llm_mock_server.model_limits import load as load_model_limits
from llm_mock_server.model_limits import settings_limits
from llm_mock_server.openapi import install as install_openapi
from llm_mock_server.routes import REQUEST_ID_KEY, MockService
from openai_wire.errors import install
from ratelimit.limiter import Limiter, open_store
from ratelimit.store import Clock
from ratelimit.tokens import encoding, encoding_name_for_model
from serving.connections import Bounds
from serving.request_log import lighten_records
from serving.urls import redacted

log = logging.getLogger("llm_mock_server")

STATIC_HEADERS = [(b"openai-organization", b"org-mock"), (b"openai-version", b"2020-10-01")]


class MockApp:
    """The outermost ASGI layer, around the FastAPI app.

    Maps Azure OpenAI's paths onto the ``/v1`` ones (``azure.route``), serves the POST
    endpoints without FastAPI's routing, adds ``x-request-id`` and ``openai-processing-ms`` to
    every answer, and turns a deliberate drop into a closed socket: returning a value from an
    ASGI call makes uvicorn close the connection without writing anything (see ``faults``).
    """

    def __init__(self, api: FastAPI, service: MockService, bounds: Bounds) -> None:
        self.api = api
        self.service = service
        # Read by serving.connections.BoundedProtocol, uvicorn's protocol for this app.
        self.bounds = bounds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> str | None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return None
        request_id = "req_" + os.urandom(16).hex()
        scope[REQUEST_ID_KEY] = request_id
        started = perf_counter()

        async def send_with_ids(message: Message) -> None:
            if message["type"] == "http.response.start":
                ms = int((perf_counter() - started) * 1000)
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", request_id.encode()),
                    (b"openai-processing-ms", str(ms).encode()),
                    *STATIC_HEADERS,
                ]
            await send(message)

        azure.route(scope)
        endpoint = self.service.endpoints.get(scope["path"]) if scope["method"] == "POST" else None
        if endpoint is not None:
            # The hot path skips FastAPI's middleware stack, which costs more than the
            # route's own work; the handler renders every error itself.
            response = await self.service.serve(Request(scope, receive), endpoint)
            await response(scope, receive, send_with_ids)
        else:
            await self.api(scope, receive, send_with_ids)
        return DROP_SENTINEL if scope.get(DROP_SCOPE_KEY) else None

    async def close(self) -> None:
        await self.service.limiter.store.close()


def create_app(settings: MockSettings | None = None, clock: Clock | None = None) -> MockApp:
    """Build the mock; ``clock`` (ms since the epoch) replaces the store's time in tests."""
    settings = settings or MockSettings()
    lighten_records()  # in each worker process: its lines show no caller, thread or process
    limits = settings_limits(settings)
    per_model = load_model_limits(settings.config, settings) if settings.config else {}
    store = open_store(settings.redis_url, settings.redis_prefix, clock=clock)
    if settings.redis_url:
        log.info(
            "limiter store: redis at %s (prefix %s), shared by every mock using it",
            redacted(settings.redis_url),
            settings.redis_prefix,
        )
    else:
        log.info("limiter store: embedded (in-process; set MOCK_REDIS_URL to share limits between processes)")
    # Load the encodings now: the first request should not pay for it.
    for model in settings.models:
        name = encoding_name_for_model(model)
        encoding(name)
        vocabulary(name)
    for model in settings.embedding_models:
        encoding(encoding_name_for_model(model))

    service = MockService(
        settings,
        Limiter(limits, store, hash_keys=True),
        {m: Limiter(lim, store, hash_keys=True) for m, lim in per_model.items()},
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Everything loaded so far (encodings, modules) lives as long as the process: kept out
        # of the collector, a full collection takes microseconds instead of ~40 ms, which
        # would otherwise show as latency spikes under load.
        gc.collect()
        gc.freeze()
        yield
        flush_request_log()
        await store.close()

    api = FastAPI(title="llm-mock", version="0.1.0", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    install(api)
    service.install(api)
    install_openapi(api, settings)
    return MockApp(api, service, settings.bounds())
