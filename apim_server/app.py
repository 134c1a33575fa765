"""The FastAPI application: routes, OpenAI-shaped errors, and a lifespan that starts and drains."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

from fastapi import FastAPI

from apim_server import routes
from apim_server.config import Settings
from apim_server.gateway import Gateway
from openai_wire import errors

log = logging.getLogger("apim")


def _hook_signals(on_signal: Callable[[], None]) -> None:
    """Answer the queued at the first SIGTERM/SIGINT, before uvicorn waits for open connections.

    uvicorn's own handler only sets a flag; queued requests would otherwise hold their
    connections open until the graceful-shutdown timeout. Our handler runs first, then
    chains to whatever was installed (uvicorn's).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
            loop.call_soon_threadsafe(on_signal)
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)

        signal.signal(sig, handler)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The gateway app; settings from the environment unless given."""
    settings = settings or Settings()
    gateway = Gateway(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        _hook_signals(gateway.begin_shutdown)
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(title="apim", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gateway = gateway
    errors.install(app)
    routes.install(app)
    return app
