"""The HTTP surface: chat completions, embeddings, responses, legacy completions, models,
status, metrics, health and test control. Every POST endpoint goes through one pipeline: the
same auth, limits, faults, headers and accounting; an ``Endpoint`` only builds the answer."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from time import perf_counter

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response, StreamingResponse

from llm_mock_server import azure, limit_overrides
from llm_mock_server.auth import KeyCheck, key_label
from llm_mock_server.body import parse, read_body
from llm_mock_server.chat import ChatEndpoint
from llm_mock_server.config import MockSettings
from llm_mock_server.counting import CachedTokenCounter
from llm_mock_server.embeddings import EmbeddingsEndpoint
from llm_mock_server.faults import FAULT_HEADER, DropConnection, Fault, FaultPicker
from llm_mock_server.limit_overrides import LimitsChange
from llm_mock_server.logs import REQUEST_LOGGER
from llm_mock_server.metrics import CLIENT_CLOSED, Metrics
from llm_mock_server.rejections import (
    invalid_key,
    model_not_found,
    overloaded,
    rate_limited,
    server_error,
    short_name,
    too_large,
)
from llm_mock_server.reply import Endpoint, Reply
from llm_mock_server.responses import ResponsesEndpoint
from llm_mock_server.text_completions import TextCompletionsEndpoint
from openai_wire.content_type import check_content_type
from openai_wire.endpoints import CHAT
from openai_wire.errors import APIError, clip
from openai_wire.headers import ratelimit_headers
from ratelimit.cost import CostEstimator
from ratelimit.limiter import Limiter, status_limits
from ratelimit.limits import Cost, Decision, LimitState
from serving.operator import OperatorKey

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
    """What the log line and the metrics say about one request to a POST endpoint."""

    operation: str = "chat"
    started: float = 0.0
    key: str = ""
    limiter: Limiter | None = None  # the budget's, once the model is known
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
    cost: Cost
    admitted_at_ms: int
    reply: Reply
    delay_s: float


class MockService:
    """The mock's state and handlers; ``install`` puts the routes on an app."""

    def __init__(
        self, settings: MockSettings, limiter: Limiter, per_model: dict[str, Limiter] | None = None
    ) -> None:
        self.settings = settings
        self.limiter = limiter
        self.per_model = per_model or {}
        self.azure = settings.flavor == "azure"
        self.auth = KeyCheck(settings.api_keys, azure.access_denied if self.azure else invalid_key)
        self.operator = OperatorKey(settings.operator_key.get_secret_value())
        text = list(settings.models) + [m for m in self.per_model if m not in settings.models]
        embedding = settings.embedding_models
        self.models = frozenset(text)
        self.estimator = CostEstimator(settings.cost_rule, settings.default_max_tokens, CachedTokenCounter())
        self.endpoints: dict[str, Endpoint] = {
            e.path: e
            for e in (
                ChatEndpoint(text, embedding, settings.seed),
                EmbeddingsEndpoint(embedding, text, settings.seed, self.estimator.counter),
                ResponsesEndpoint(text, embedding, settings.seed),
                TextCompletionsEndpoint(text, embedding, settings.seed),
            )
        }
        self.all_models = [*text, *(m for m in embedding if m not in self.models)]
        self.faults = FaultPicker(settings)
        # Budget key -> the limiter of the limits set at run time (this process only).
        self.overrides: dict[str, Limiter] = {}
        self.metrics = Metrics(self.all_models)
        self.ttft_s = settings.ttft_ms / 1000
        self.token_s = 1 / settings.tokens_per_s if settings.tokens_per_s else 0.0
        self.paced = bool(self.ttft_s or self.token_s)
        self.models_body = _dumps({"object": "list", "data": [self._card(m) for m in self.all_models]})

    def budget(self, key: str, model: str | None) -> tuple[Limiter, str]:
        """The limiter and store key a request for ``model`` under API key ``key`` is charged to:
        a listed model has a budget of its own per key, every other model shares the key's; limits
        set at run time (``POST /admin/limits``) replace the configured ones."""
        limiter, budget_key = self.configured_budget(key, model)
        if self.overrides:
            limiter = self.overrides.get(budget_key, limiter)
        return limiter, budget_key

    def configured_budget(self, key: str, model: str | None) -> tuple[Limiter, str]:
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
        # MockApp serves the POST endpoints directly (the hot path); the routes here answer any
        # other method with a 405 and keep the API complete for an app used on its own.
        for path, endpoint in self.endpoints.items():
            app.router.add_route(path, self.handler(endpoint), methods=["POST"])
        app.add_api_route("/v1/models", self.list_models, methods=["GET"])
        app.add_api_route("/v1/models/{model}", self.get_model, methods=["GET"])
        app.add_api_route("/status", self.status, methods=["GET"])
        app.add_api_route("/metrics", self.prometheus, methods=["GET"])
        app.add_api_route("/healthz", self.healthz, methods=["GET"])
        app.add_api_route("/readyz", self.readyz, methods=["GET"])
        if self.settings.admin:
            app.add_api_route("/admin/reset", self.admin_reset, methods=["POST"])
            app.add_api_route("/admin/limits", self.admin_limits, methods=["POST"])

    # --- the POST endpoints -------------------------------------------------------------

    def handler(self, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            return await self.serve(request, endpoint)

        return handle

    async def chat(self, request: Request) -> Response:
        return await self.serve(request, self.endpoints[CHAT.path])

    async def serve(self, request: Request, endpoint: Endpoint) -> Response:
        self.metrics.totals.requests += 1
        out = Outcome(operation=endpoint.operation.value, started=perf_counter())
        try:
            return await self._serve(request, out, endpoint)
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
        except ClientDisconnect:
            # The caller hung up mid-body: recorded (nginx's 499), no traceback, nothing sent.
            out.status = CLIENT_CLOSED
            return Response(status_code=CLIENT_CLOSED)
        except Exception:
            log.exception("unhandled error")
            return APIError(500, "The server had an error while processing your request.").response()
        finally:
            # A stream records itself when it ends.
            if not (out.stream and out.status == 200):
                self._record(request, out)

    def _limit_headers(self, decision: Decision) -> dict[str, str]:
        return azure.headers(decision) if self.azure else ratelimit_headers(decision)

    def _rate_limited(
        self,
        request: Request,
        endpoint: Endpoint,
        model: str,
        state: LimitState,
        cost: Cost,
        wait_ms: int,
        headers: dict[str, str],
        rpm: int,
    ) -> APIError:
        if self.azure:
            version = request.scope.get(azure.API_VERSION_KEY, azure.DEFAULT_API_VERSION)
            return azure.rate_limited(endpoint.azure_operation, version, state, wait_ms, headers)
        return rate_limited(model, state, _requested(state, cost), wait_ms, rpm, headers)

    async def _serve(self, request: Request, out: Outcome, endpoint: Endpoint) -> Response:
        out.key = key = self.auth.budget_key(request.headers)
        check_content_type(request)
        deployment = request.scope.get(azure.DEPLOYMENT_KEY)
        raw = await read_body(request, self.settings.max_body_bytes)
        data, body = parse(raw, endpoint.schema, deployment)
        out.model = model = body.model
        if deployment is not None and model not in endpoint.models:
            raise azure.deployment_not_found()
        endpoint.check_model(model)
        endpoint.check(body)
        limiter, key = self.budget(key, model)
        out.limiter, out.key = limiter, key

        operation = endpoint.operation
        prompt_tokens = self.estimator.prompt_tokens(data, operation)
        cost = self.estimator.estimate(data, prompt_tokens, operation)
        await self._refuse_too_large(limiter, key, model, cost, out)

        fault = self.faults.pick(request.headers.get(FAULT_HEADER))
        if fault is Fault.RATE_LIMIT:
            self.metrics.fault(fault)
            raise await self._forced_429(request, endpoint, limiter, key, model, cost, out)
        if fault is Fault.CAPACITY:
            raise await self._capacity_429(request, limiter, key, out)

        decision = await limiter.acquire(key, cost)
        out.headers = headers = self._limit_headers(decision)
        if not decision.allowed:
            binding = decision.binding
            assert binding is not None  # a denial always names the limit that waits longest
            self.metrics.limited(short_name(binding), "limit")
            raise self._rate_limited(
                request, endpoint, model, binding, cost, decision.wait_ms, headers, limiter.limits.rpm
            )

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

        reply = endpoint.reply(data, body, prompt_tokens)
        answer = Answer(
            limiter=limiter, key=key, cost=cost, admitted_at_ms=decision.now_ms, reply=reply, delay_s=delay_s
        )
        out.prompt_tokens, out.completion_tokens = reply.prompt_tokens, reply.completion_tokens
        out.stream = reply.stream
        if reply.stream:
            out.status = 200
            return StreamingResponse(
                self._stream(request, out, answer),
                media_type="text/event-stream",
                headers=headers,
            )
        if delay_s or self.paced:
            await asyncio.sleep(delay_s + self.ttft_s + max(0, reply.steps - 1) * self.token_s)
        await self._settle(answer)
        out.status = 200
        return Response(reply.body, media_type="application/json", headers=headers)

    async def _refuse_too_large(
        self, limiter: Limiter, key: str, model: str, cost: Cost, out: Outcome
    ) -> None:
        """A request that could never fit its budget is refused at once, never admitted."""
        whole = limiter.too_large(cost)
        if whole is not None:
            out.headers = self._limit_headers(await limiter.peek(key))
            self.metrics.limited(short_name(whole), "too_large")
            raise too_large(model, whole, _requested(whole, cost), limiter.limits.rpm, out.headers)

    async def _stream(self, request: Request, out: Outcome, answer: Answer) -> AsyncIterator[bytes]:
        reply = answer.reply
        try:
            if answer.delay_s or self.paced:
                loop = asyncio.get_running_loop()
                first = loop.time() + answer.delay_s + self.ttft_s
                await asyncio.sleep(max(0.0, first - loop.time()))
                if reply.head:
                    yield reply.head
                for step, frame in enumerate(reply.frames):
                    due = first + step * self.token_s
                    if due > loop.time():
                        await asyncio.sleep(due - loop.time())
                    yield frame
                yield reply.tail
            else:
                # Nothing to wait for: one write instead of one per token.
                yield b"".join((reply.head, *reply.frames, reply.tail))
            await self._settle(answer)
        except BaseException:
            out.status = CLIENT_CLOSED
            raise
        finally:
            self._record(request, out)

    async def _settle(self, answer: Answer) -> None:
        """Charge usage above the estimate; refund the unused estimate only if configured."""
        actual = answer.reply.prompt_tokens + answer.reply.completion_tokens
        if actual > answer.cost.tokens:
            await answer.limiter.charge(answer.key, actual - answer.cost.tokens)
        elif self.settings.refund_unused and actual < answer.cost.tokens:
            await answer.limiter.refund(answer.key, answer.cost.tokens - actual, answer.admitted_at_ms)

    async def _forced_429(
        self,
        request: Request,
        endpoint: Endpoint,
        limiter: Limiter,
        key: str,
        model: str,
        cost: Cost,
        out: Outcome,
    ) -> APIError:
        """A rate-limit 429 on request (``x-mock-fault: 429``), naming the fullest limit."""
        decision = await limiter.peek(key, cost)
        out.headers = self._limit_headers(decision)
        state = decision.binding or _first_limited(decision)
        wait_ms = state.wait_ms or 1000
        self.metrics.limited(short_name(state), "forced")
        return self._rate_limited(
            request, endpoint, model, state, cost, wait_ms, out.headers, limiter.limits.rpm
        )

    async def _capacity_429(self, request: Request, limiter: Limiter, key: str, out: Outcome) -> APIError:
        """A capacity 429 (the service's load, not the key's limits): refused before admission,
        so nothing is counted against the key, whose figures it carries as every answer does."""
        self.metrics.fault(Fault.CAPACITY)
        self.metrics.totals.capacity += 1
        out.headers = self._limit_headers(await limiter.peek(key))
        wait_ms = self.settings.fault_capacity_retry_ms
        if self.azure:
            return azure.capacity_exceeded(wait_ms, out.headers)
        return overloaded(request.scope.get(REQUEST_ID_KEY, "-"), wait_ms, out.headers)

    async def _error(self, exc: APIError, out: Outcome) -> Response:
        response = exc.response()
        return await self._with_limit_headers(response, out)

    async def _with_limit_headers(self, response: Response, out: Outcome) -> Response:
        """Errors before admission carry the key's rate-limit headers too, from a peek."""
        headers = out.headers
        if headers is None and out.key and response.status_code != 401:
            try:
                headers = self._limit_headers(await (out.limiter or self.limiter).peek(out.key))
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
                "%s id=%s key=%s model=%s stream=%s status=%s prompt_tokens=%d completion_tokens=%d ms=%.1f",
                out.operation,
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
        if model not in self.all_models:
            raise model_not_found(model)
        return Response(_dumps(self._card(model)), media_type="application/json")

    async def status(self, request: Request) -> Response:
        """Limits of the default key (or ``?api_key=``) for unlisted models (or ``?model=``)."""
        self.operator.check(request.headers)
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
                "capacity_rejected": totals.capacity,
                "errors": totals.errors,
            },
            "models": self.settings.models,
            "embedding_models": self.settings.embedding_models,
            "flavor": self.settings.flavor,
            "latency": {"ttft_ms": self.settings.ttft_ms, "tokens_per_s": self.settings.tokens_per_s},
            "cost_rule": self.settings.cost_rule.value,
            "auth": self.auth.enabled,
            "admin": self.settings.admin,
        }
        return Response(_dumps(payload), media_type="application/json")

    async def prometheus(self, request: Request) -> Response:
        self.operator.check(request.headers)
        for key in self.auth.known_keys():
            limiter, budget_key = self.budget(key, None)
            try:
                decision = await limiter.peek(budget_key)
            except STORE_ERRORS:
                break
            names = {s.name: short_name(s) for s in decision.states}
            self.metrics.budget(key_label(key), decision, names)
        return Response(self.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def healthz(self) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self) -> Response:
        if await self.limiter.store.ready():
            return JSONResponse({"status": "ready", "store": self.limiter.store.kind})
        return APIError(
            503,
            f"The {self.limiter.store.kind} limiter store cannot admit requests now (unreachable, "
            "a read-only replica, or its Cluster slot has no master).",
            code="store_unavailable",
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

    async def admin_limits(self, request: Request, change: LimitsChange) -> Response:
        """Set a key's (and model's) limits at run time, or ``restore`` the configured ones.

        Kept in this process: a mock run with several workers or processes needs it sent to each.
        """
        if self.auth.enabled:
            self.auth.budget_key(request.headers)
        key = change.api_key if change.api_key is not None else self.auth.default_key
        if key not in self.auth.known_keys():
            raise APIError(
                400, "Unknown api_key: name one of MOCK_API_KEYS.", param="api_key", code="invalid_request"
            )
        if change.model is not None and change.model not in self.all_models:
            raise model_not_found(change.model)
        if change.model is not None and change.model not in self.per_model:
            raise APIError(
                400,
                f"The model `{clip(change.model)}` has no limits of its own (MOCK_CONFIG): omit `model` to "
                "change the key's budget for every such model.",
                param="model",
                code="invalid_request",
            )
        given = change.given()
        if change.restore == bool(given):
            raise APIError(
                400,
                "Give new limits (rpm, tpm, rpd, tpd) or restore: true, not both.",
                param="restore",
                code="invalid_request",
            )
        configured, budget_key = self.configured_budget(key, change.model)
        if change.restore:
            self.overrides.pop(budget_key, None)
            limits = configured.limits
        else:
            limits = limit_overrides.changed(configured.limits, change, self.azure)
            self.overrides[budget_key] = Limiter(limits, configured.store, hash_keys=True)
        log.info(
            "admin: limits of %s (model %s) %s: rpm=%d tpm=%d rpd=%d tpd=%d",
            key_label(key),
            change.model or "-",
            "restored" if change.restore else "set",
            limits.rpm,
            limits.tpm,
            limits.rpd,
            limits.tpd,
        )
        return JSONResponse(
            {
                "api_key": key_label(key),
                "model": change.model,
                "limits": limit_overrides.view(limits),
                "configured": limit_overrides.view(configured.limits),
                "overridden": budget_key in self.overrides,
            }
        )


def _first_limited(decision: Decision) -> LimitState:
    return next((s for s in decision.states if s.limit), decision.states[0])
