"""The HTTP surface: chat completions, models, status, metrics, health and test control."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from time import perf_counter

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError
from starlette.responses import JSONResponse, Response, StreamingResponse

from llm_mock_server.auth import KeyCheck, key_label
from llm_mock_server.body import parse, read_body
from llm_mock_server.completion import (
    Choice,
    ChunkWriter,
    completion_json,
    generate,
    new_completion_id,
    request_digest,
)
from llm_mock_server.config import MockSettings
from llm_mock_server.counting import CachedTokenCounter
from llm_mock_server.faults import FAULT_HEADER, DropConnection, Fault, FaultPicker
from llm_mock_server.logs import REQUEST_LOGGER
from llm_mock_server.metrics import CLIENT_CLOSED, Metrics
from llm_mock_server.rejections import (
    model_not_found,
    rate_limited,
    server_error,
    short_name,
    too_large,
)
from openai_wire.content_type import check_content_type
from openai_wire.errors import APIError
from openai_wire.headers import ratelimit_headers
from openai_wire.sse import DONE, event
from ratelimit.cost import CostEstimator
from ratelimit.limiter import Limiter, status_limits
from ratelimit.limits import Cost, Decision, LimitState

log = logging.getLogger("llm_mock_server")
request_log = logging.getLogger(REQUEST_LOGGER)

REQUEST_ID_KEY = "llm_mock.request_id"
MODEL_CREATED = 1_686_935_002  # a fixed date keeps /v1/models byte-identical between runs
STORE_ERRORS = (RedisError, OSError)


def _dumps(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _requested(state: LimitState, cost: Cost) -> int:
    return cost.requests if state.name.startswith("requests") else cost.tokens


@dataclass(slots=True)
class Outcome:
    """What the log line and the metrics say about one chat request."""

    started: float = 0.0
    key: str = ""
    model: str | None = None
    stream: bool = False
    status: int = 500
    prompt_tokens: int = 0
    completion_tokens: int = 0
    headers: dict[str, str] | None = field(default=None)
    limiter: Limiter | None = None  # the budget's, once the model is known


@dataclass(slots=True)
class Answer:
    """An admitted request and everything its answer is made of."""

    limiter: Limiter
    key: str
    model: str
    cost: Cost
    admitted_at_ms: int
    completion_id: str
    choices: Sequence[Choice]
    prompt_tokens: int
    include_usage: bool
    delay_s: float

    @property
    def completion_tokens(self) -> int:
        return sum(c.tokens for c in self.choices)

    @property
    def longest(self) -> int:
        return max(len(c.pieces) for c in self.choices)


class MockService:
    """The mock's state and handlers; ``install`` puts the routes on an app."""

    def __init__(
        self, settings: MockSettings, limiter: Limiter, per_model: dict[str, Limiter] | None = None
    ) -> None:
        self.settings = settings
        self.limiter = limiter
        self.per_model = per_model or {}
        self.auth = KeyCheck(settings.api_keys)
        served = list(settings.models) + [m for m in self.per_model if m not in settings.models]
        self.models = frozenset(served)
        self.estimator = CostEstimator(settings.cost_rule, settings.default_max_tokens, CachedTokenCounter())
        self.faults = FaultPicker(settings)
        self.metrics = Metrics(settings.models)
        self.ttft_s = settings.ttft_ms / 1000
        self.token_s = 1 / settings.tokens_per_s if settings.tokens_per_s else 0.0
        self.paced = bool(self.ttft_s or self.token_s)
        self.models_body = _dumps({"object": "list", "data": [self._card(m) for m in served]})

    def budget(self, key: str, model: str | None) -> tuple[Limiter, str]:
        """The limiter and store key a request for ``model`` under API key ``key`` is charged to:
        a listed model has a budget of its own per key, every other model shares the key's."""
        limiter = self.per_model.get(model) if model else None
        if limiter is None:
            return self.limiter, key
        return limiter, f"{key}|model:{model}"

    @staticmethod
    def _card(model: str) -> dict[str, object]:
        return {"id": model, "object": "model", "created": MODEL_CREATED, "owned_by": "openai"}

    def install(self, app: FastAPI) -> None:
        """Add the routes; call after ``openai_wire.errors.install`` (its handlers are reused)."""
        self.render_invalid = app.exception_handlers[RequestValidationError]
        # MockApp serves POST chat completions directly (the hot path); the route here answers
        # any other method with a 405 and keeps the API complete for an app used on its own.
        app.router.add_route("/v1/chat/completions", self.chat, methods=["POST"])
        app.add_api_route("/v1/models", self.list_models, methods=["GET"])
        app.add_api_route("/v1/models/{model}", self.get_model, methods=["GET"])
        app.add_api_route("/status", self.status, methods=["GET"])
        app.add_api_route("/metrics", self.prometheus, methods=["GET"])
        app.add_api_route("/healthz", self.healthz, methods=["GET"])
        app.add_api_route("/readyz", self.readyz, methods=["GET"])
        if self.settings.admin:
            app.add_api_route("/admin/reset", self.admin_reset, methods=["POST"])

    # --- chat completions -------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        self.metrics.totals.requests += 1
        out = Outcome(started=perf_counter())
        try:
            return await self._chat(request, out)
        except APIError as exc:
            out.status = exc.status
            return await self._error(exc, out)
        except RequestValidationError as exc:
            out.status = 400
            return await self._with_limit_headers(await self.render_invalid(request, exc), out)
        except STORE_ERRORS:
            log.exception("limiter store unavailable")
            out.status = 503
            return server_error(503).response()
        except Exception:
            log.exception("unhandled error")
            return APIError(500, "The server had an error while processing your request.").response()
        finally:
            # A stream records itself when it ends.
            if not (out.stream and out.status == 200):
                self._record(request, out)

    async def _chat(self, request: Request, out: Outcome) -> Response:
        out.key = key = self.auth.budget_key(request.headers)
        check_content_type(request)
        data, body = parse(await read_body(request, self.settings.max_body_bytes))
        out.model = model = body.model
        if model not in self.models:
            raise model_not_found(model)
        limiter, key = self.budget(key, model)
        out.limiter, out.key = limiter, key
        rpm = limiter.limits.rpm

        prompt_tokens = self.estimator.prompt_tokens(data)
        cost = self.estimator.estimate(data, prompt_tokens)
        whole = limiter.too_large(cost)
        if whole is not None:
            out.headers = ratelimit_headers(await limiter.peek(key))
            self.metrics.limited(short_name(whole), "too_large")
            raise too_large(model, whole, _requested(whole, cost), rpm, out.headers)

        fault = self.faults.pick(request.headers.get(FAULT_HEADER))
        if fault is Fault.RATE_LIMIT:
            self.metrics.fault(fault)
            raise await self._forced_429(limiter, key, model, cost, out)

        decision = await limiter.acquire(key, cost)
        out.headers = headers = ratelimit_headers(decision)
        if not decision.allowed:
            binding = decision.binding
            assert binding is not None  # a denial always names the limit that waits longest
            self.metrics.limited(short_name(binding), "limit")
            raise rate_limited(model, binding, _requested(binding, cost), decision.wait_ms, rpm, headers)

        # Past admission: whatever happens now has consumed budget, as at OpenAI.
        delay_s = 0.0
        if fault is not None:
            self.metrics.fault(fault)
            if fault is Fault.DROP:
                out.status = 0
                return DropConnection()
            if fault is Fault.SLOW:
                delay_s = self.settings.fault_slow_ms / 1000
            else:
                error = server_error(int(fault))
                error.headers.update(headers)
                raise error

        digest = request_digest(self.settings.seed, model, data["messages"], body.seed)
        limit = body.token_limit
        answer = Answer(
            limiter=limiter,
            key=key,
            model=model,
            cost=cost,
            admitted_at_ms=decision.now_ms,
            completion_id=new_completion_id(),
            choices=[generate(digest, i, limit, model) for i in range(body.n)],
            prompt_tokens=prompt_tokens,
            include_usage=body.include_usage,
            delay_s=delay_s,
        )
        out.prompt_tokens, out.completion_tokens = prompt_tokens, answer.completion_tokens
        out.stream = body.stream
        if body.stream:
            out.status = 200
            return StreamingResponse(
                self._stream(request, out, answer),
                media_type="text/event-stream",
                headers=headers,
            )
        if delay_s or self.paced:
            await asyncio.sleep(delay_s + self.ttft_s + max(0, answer.longest - 1) * self.token_s)
        await self._settle(answer)
        out.status = 200
        content = completion_json(answer.completion_id, model, answer.choices, prompt_tokens)
        return Response(content, media_type="application/json", headers=headers)

    async def _stream(self, request: Request, out: Outcome, answer: Answer) -> AsyncIterator[bytes]:
        writer = ChunkWriter(answer.completion_id, answer.model)
        choices = answer.choices
        try:
            if answer.delay_s or self.paced:
                loop = asyncio.get_running_loop()
                first = loop.time() + answer.delay_s + self.ttft_s
                await asyncio.sleep(max(0.0, first - loop.time()))
                yield b"".join(event(writer.role(i)) for i in range(len(choices)))
                for step in range(answer.longest):
                    due = first + step * self.token_s
                    if due > loop.time():
                        await asyncio.sleep(due - loop.time())
                    yield b"".join(
                        event(writer.content(i, c.pieces[step]))
                        for i, c in enumerate(choices)
                        if step < len(c.pieces)
                    )
                yield self._stream_end(writer, answer)
            else:
                # Nothing to wait for: one write instead of one per token.
                frames = [event(writer.role(i)) for i in range(len(choices))]
                for step in range(answer.longest):
                    frames += [
                        event(writer.content(i, c.pieces[step]))
                        for i, c in enumerate(choices)
                        if step < len(c.pieces)
                    ]
                frames.append(self._stream_end(writer, answer))
                yield b"".join(frames)
            await self._settle(answer)
        except BaseException:
            out.status = CLIENT_CLOSED
            raise
        finally:
            self._record(request, out)

    @staticmethod
    def _stream_end(writer: ChunkWriter, answer: Answer) -> bytes:
        frames = [event(writer.finish(i, c.finish_reason)) for i, c in enumerate(answer.choices)]
        if answer.include_usage:
            frames.append(event(writer.usage(answer.prompt_tokens, answer.completion_tokens)))
        frames.append(DONE)
        return b"".join(frames)

    async def _settle(self, answer: Answer) -> None:
        """Charge usage above the estimate; refund the unused estimate only if configured."""
        actual = answer.prompt_tokens + answer.completion_tokens
        if actual > answer.cost.tokens:
            await answer.limiter.charge(answer.key, actual - answer.cost.tokens)
        elif self.settings.refund_unused and actual < answer.cost.tokens:
            await answer.limiter.refund(answer.key, answer.cost.tokens - actual, answer.admitted_at_ms)

    async def _forced_429(self, limiter: Limiter, key: str, model: str, cost: Cost, out: Outcome) -> APIError:
        """A rate-limit 429 on request (``x-mock-fault: 429``), naming the fullest limit."""
        decision = await limiter.peek(key, cost)
        out.headers = ratelimit_headers(decision)
        state = decision.binding or _first_limited(decision)
        wait_ms = state.wait_ms or 1000
        self.metrics.limited(short_name(state), "forced")
        return rate_limited(model, state, _requested(state, cost), wait_ms, limiter.limits.rpm, out.headers)

    async def _error(self, exc: APIError, out: Outcome) -> Response:
        response = exc.response()
        return await self._with_limit_headers(response, out)

    async def _with_limit_headers(self, response: Response, out: Outcome) -> Response:
        """Errors before admission carry the key's rate-limit headers too, from a peek."""
        headers = out.headers
        if headers is None and out.key and response.status_code != 401:
            try:
                headers = ratelimit_headers(await (out.limiter or self.limiter).peek(out.key))
            except STORE_ERRORS:
                headers = {}
        for name, value in (headers or {}).items():
            if name not in response.headers:
                response.headers[name] = value
        return response

    def _record(self, request: Request, out: Outcome) -> None:
        seconds = perf_counter() - out.started
        self.metrics.answered(
            out.model, out.status, seconds, out.stream, out.prompt_tokens, out.completion_tokens
        )
        if self.settings.log_requests:
            request_log.info(
                "chat id=%s key=%s model=%s stream=%s status=%s prompt_tokens=%d completion_tokens=%d "
                "ms=%.1f",
                request.scope.get(REQUEST_ID_KEY, "-"),
                key_label(out.key) if out.key else "-",
                out.model or "-",
                str(out.stream).lower(),
                out.status or "dropped",
                out.prompt_tokens,
                out.completion_tokens,
                seconds * 1000,
            )

    # --- everything else ----------------------------------------------------------------

    async def list_models(self, request: Request) -> Response:
        self.auth.budget_key(request.headers)
        return Response(self.models_body, media_type="application/json")

    async def get_model(self, request: Request, model: str) -> Response:
        self.auth.budget_key(request.headers)
        if model not in self.models:
            raise model_not_found(model)
        return Response(_dumps(self._card(model)), media_type="application/json")

    async def status(self, request: Request) -> Response:
        """Limits of the default key (or ``?api_key=``) for unlisted models (or ``?model=``)."""
        model = request.query_params.get("model") or None
        limiter, key = self.budget(request.query_params.get("api_key") or self.auth.default_key, model)
        try:
            decision = await limiter.peek(key)
        except STORE_ERRORS:
            log.exception("limiter store unavailable")
            return server_error(503).response()
        totals = self.metrics.totals
        payload = {
            "service": "llm-mock",
            "store": self.limiter.store.kind,
            "api_key": key_label(key.split("|model:")[0]),
            "model": model,
            "limits": status_limits(decision),
            "model_limits": sorted(self.per_model),
            "totals": {
                "requests": totals.requests,
                "ok": totals.ok,
                "rate_limited": totals.rate_limited,
                "errors": totals.errors,
            },
            "models": self.settings.models,
            "latency": {"ttft_ms": self.settings.ttft_ms, "tokens_per_s": self.settings.tokens_per_s},
            "cost_rule": self.settings.cost_rule.value,
            "auth": self.auth.enabled,
            "admin": self.settings.admin,
        }
        return Response(_dumps(payload), media_type="application/json")

    async def prometheus(self) -> Response:
        for key in self.auth.known_keys():
            try:
                decision = await self.limiter.peek(key)
            except STORE_ERRORS:
                break
            names = {s.name: short_name(s) for s in decision.states}
            self.metrics.budget(key_label(key), decision, names)
        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def healthz(self) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self) -> Response:
        if await self.limiter.store.ping():
            return JSONResponse({"status": "ready", "store": self.limiter.store.kind})
        return APIError(
            503, f"The {self.limiter.store.kind} limiter store is unreachable.", code="store_unavailable"
        ).response()

    async def admin_reset(self, request: Request) -> Response:
        """Forget the limiter state of one key (``?api_key=``) or of every key."""
        if self.auth.enabled:
            self.auth.budget_key(request.headers)
        named = request.query_params.get("api_key")
        keys = [named] if named else self.auth.known_keys()
        for key in keys:
            await self.limiter.reset(key)
            for model, limiter in self.per_model.items():
                await limiter.reset(self.budget(key, model)[1])
        labels = [key_label(k) for k in keys]
        log.info("admin reset of %s", ", ".join(labels))
        return JSONResponse({"reset": labels})


def _first_limited(decision: Decision) -> LimitState:
    return next((s for s in decision.states if s.limit), decision.states[0])
