"""The HTTP face of ``serve``: an OpenAI-compatible FastAPI app over a :class:`~.engine.BatchEngine`.

Routes: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (SFT model; ``stream`` answers with server-sent
events ending ``data: [DONE]``), ``POST /v1/attributes`` (attribute model), ``GET /v1/models``, ``GET /health``.
Every refusal is an OpenAI error body naming the field (400), an unknown model (404), or a full queue (503).
A response carries the steering label it was answered under as ``steer_label``.

Library code: plain arguments in, no Hydra config.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from nemo_steerlm.attributes import AttributeSchema
from nemo_steerlm.serving.engine import BatchEngine, Event, Job, Overloaded
from nemo_steerlm.serving.protocol import (
    GenerationRequest,
    RequestError,
    chat_conversation,
    completion_conversations,
    read_sampling,
    resolve_label,
    scored_conversations,
    scored_texts,
)
from nemo_steerlm.serving.runners import GenerationResult, batch_key

#: how often a waiting handler checks whether its client went away (seconds)
DISCONNECT_POLL_S = 0.25


@dataclass(frozen=True)
class ServerInfo:
    """What the app says about its model and the request defaults.

    Args:
        model_name: the ``model`` id clients send and ``/v1/models`` lists.
        kind: ``"sft"`` (generation routes) or ``"apm"`` (``/v1/attributes``).
        schema: the attributes the model was trained with labels for.
        steer_defaults: the steering values of attributes a request leaves unset.
        default_max_tokens: ``max_tokens`` of a request that gives none.
        max_tokens_limit: the largest ``max_tokens`` accepted (the model's sequence length).
        created: the Unix time the server started.
        card: more fields of the model's ``/v1/models`` entry (the checkpoint's digest, all the model's outputs).
    """

    model_name: str
    kind: str
    schema: AttributeSchema
    steer_defaults: dict[str, int] = field(default_factory=dict)
    default_max_tokens: int = 128
    max_tokens_limit: int = 512
    created: int = field(default_factory=lambda: int(time.time()))
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def default_label(self) -> str | None:
        """The label of a request without ``steer`` or ``label`` (SFT models)."""
        return self.schema.steer_label(None, self.steer_defaults) if self.kind == "sft" else None


def _error(err: RequestError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


async def _body(request: Request, info: ServerInfo) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RequestError("the request body is not valid JSON", None, code="invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", None, code="invalid_json")
    model = body.get("model")
    if model is not None and model != info.model_name:
        raise RequestError(
            f"model {model!r} is not served here; this server serves {info.model_name!r}",
            "model",
            status=404,
            code="model_not_found",
        )
    return body


class _Waiter:
    """A job's link from the worker thread to the handler's event loop."""

    def __init__(self, engine: BatchEngine) -> None:
        self.engine, self.loop, self.events = engine, asyncio.get_running_loop(), asyncio.Queue()

    def emit(self, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop closed (shutdown): nobody is waiting any more
            pass

    def submit(self, key: Any, payload: Any, rows: int) -> Job:
        job = Job(key, payload, rows, self.emit)
        try:
            self.engine.submit(job)
        except Overloaded as err:
            raise RequestError(str(err), None, status=503, code="server_overloaded", kind="overloaded_error") from None
        return job

    async def outcome(self, job: Job, request: Request, until: str = "done") -> Any:
        """Waits for the job's ``until`` event, dropping the events before it; cancels it if the client goes away.

        ``done`` gives the job's result; ``accepted`` comes once its prompts fit and generation starts.
        """
        try:
            while True:
                try:
                    event = await asyncio.wait_for(self.events.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        self.engine.cancel(job)
                        raise RequestError("the client went away", None, status=499, code="cancelled") from None
                    continue
                if event[0] == until:
                    return event[1]
                if event[0] == "error":
                    raise _as_request_error(event[1])
        except asyncio.CancelledError:
            self.engine.cancel(job)
            raise


def _as_request_error(err: BaseException) -> RequestError:
    if isinstance(err, RequestError):
        return err
    if isinstance(err, Overloaded):
        return RequestError(str(err), None, status=503, code="server_overloaded", kind="overloaded_error")
    return RequestError(f"generation failed: {err}", None, status=500, code="internal_error", kind="server_error")


def _generation_request(body: dict[str, Any], info: ServerInfo, chat: bool) -> GenerationRequest:
    sampling = read_sampling(body, info.default_max_tokens, info.max_tokens_limit)
    label = resolve_label(body, info.schema, info.steer_defaults)
    conversations = [chat_conversation(body, info.schema)] if chat else completion_conversations(body)
    return GenerationRequest(conversations, label, sampling)


def _usage(result: GenerationResult) -> dict[str, int]:
    total = result.prompt_tokens + result.completion_tokens
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens, "total_tokens": total}


class _Shapes:
    """The response objects of one endpoint (chat or text completion)."""

    def __init__(self, info: ServerInfo, chat: bool, label: str) -> None:
        self.chat, self.label, self.model = chat, label, info.model_name
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def head(self, choices: list[dict[str, Any]], chunk: bool) -> dict[str, Any]:
        kind = "chat.completion" if self.chat else "text_completion"
        obj = kind + ".chunk" if chunk and self.chat else kind
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices,
                "steer_label": self.label}  # fmt: skip

    def choice(self, index: int, text: str | None, finish: str | None, chunk: bool, role: bool = False) -> dict:
        out: dict[str, Any] = {"index": index}
        if self.chat and chunk:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            out["delta"] = delta
        elif self.chat:
            out["message"] = {"role": "assistant", "content": text}
        else:
            out["text"] = text or ""
        out.update({"logprobs": None, "finish_reason": finish})
        return out

    def response(self, result: GenerationResult) -> dict[str, Any]:
        choices = [self.choice(c.index, c.text, c.finish_reason, False) for c in result.choices]
        return {**self.head(choices, False), "usage": _usage(result), "prompt_truncated": result.prompt_truncated}


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _stream(waiter: _Waiter, job: Job, shapes: _Shapes, req: GenerationRequest) -> AsyncIterator[str]:
    """The server-sent events of a streamed request; a client that goes away cancels the job (its rows stop)."""
    finished = False
    try:
        if shapes.chat:
            n = len(req.conversations) * req.sampling.n
            yield _sse(shapes.head([shapes.choice(i, "", None, True, role=True) for i in range(n)], True))
        while True:
            event = await waiter.events.get()
            if event[0] == "delta":
                yield _sse(shapes.head([shapes.choice(event[1], event[2], None, True)], True))
                continue
            if event[0] == "error":
                finished = True
                yield _sse(_as_request_error(event[1]).body())
                break
            result: GenerationResult = event[1]
            finished = True
            for c in result.choices:
                if c.remainder:
                    yield _sse(shapes.head([shapes.choice(c.index, c.remainder, None, True)], True))
                last = shapes.choice(c.index, None if shapes.chat else "", c.finish_reason, True)
                yield _sse(shapes.head([last], True))
            if req.sampling.include_usage:
                yield _sse({**shapes.head([], True), "usage": _usage(result)})
            break
        yield "data: [DONE]\n\n"
    finally:
        if not finished:
            waiter.engine.cancel(job)


def _generation_route(engine: BatchEngine, info: ServerInfo, chat: bool) -> Callable[[Request], Any]:
    async def route(request: Request) -> Any:
        try:
            if info.kind != "sft":
                raise RequestError("this server serves an attribute model: use POST /v1/attributes", None, 404,
                                   "unsupported_endpoint")  # fmt: skip
            req = _generation_request(await _body(request, info), info, chat)
            waiter = _Waiter(engine)
            rows = len(req.conversations) * req.sampling.n
            job = waiter.submit(batch_key(req.sampling), req, rows)
            shapes = _Shapes(info, chat, req.label)
            if req.sampling.stream:  # refusals of the runner (a budget with no room for a prompt) come before the 200
                await waiter.outcome(job, request, until="accepted")
                headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
                return StreamingResponse(_stream(waiter, job, shapes, req), media_type="text/event-stream",
                                         headers=headers)  # fmt: skip
            return JSONResponse(shapes.response(await waiter.outcome(job, request)))
        except RequestError as err:
            return _error(err, {"Retry-After": "1"} if err.status == 503 else None)

    return route


def _attributes_route(engine: BatchEngine, info: ServerInfo) -> Callable[[Request], Any]:
    async def route(request: Request) -> Any:
        try:
            if info.kind != "apm":
                raise RequestError("this server serves an SFT model: /v1/attributes needs an attribute model", None,
                                   404, "unsupported_endpoint")  # fmt: skip
            body = await _body(request, info)
            waiter = _Waiter(engine)
            if "texts" in body:  # raw outputs of regression texts: what annotate's scorer_url asks for
                texts, size = scored_texts(body, engine.max_batch)
                raw = await waiter.outcome(waiter.submit("texts", ("texts", texts, size), len(texts)), request)
                return JSONResponse({"object": "list", "model": info.model_name, **raw})
            convs = scored_conversations(body, info.schema)
            turns = await waiter.outcome(waiter.submit("score", ("conversations", convs), len(convs)), request)
        except RequestError as err:
            return _error(err, {"Retry-After": "1"} if err.status == 503 else None)
        data = [{"index": i, "object": "attributes", "turns": t} for i, t in enumerate(turns)]
        return JSONResponse({"object": "list", "model": info.model_name, "data": data,
                             "usage": {"conversations": len(data), "turns": sum(len(t) for t in turns)}})  # fmt: skip

    return route


def create_app(engine: BatchEngine, info: ServerInfo, on_ready: Callable[[], None] | None = None) -> FastAPI:
    """The FastAPI app; the engine's worker runs from startup to shutdown (``on_ready`` is called once it runs)."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="nemo-steerlm", lifespan=lifespan)
    app.add_api_route("/v1/chat/completions", _generation_route(engine, info, chat=True), methods=["POST"])
    app.add_api_route("/v1/completions", _generation_route(engine, info, chat=False), methods=["POST"])
    app.add_api_route("/v1/attributes", _attributes_route(engine, info), methods=["POST"])

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": info.model_name, "object": "model", "created": info.created, "owned_by": "nemo-steerlm"}
        card.update({"kind": info.kind, "attributes": list(info.schema.names), "default_label": info.default_label})
        card.update(info.card)
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "kind": info.kind, "model": info.model_name, "pending": engine.pending,
                "max_pending": engine.max_pending, **engine.snapshot()}  # fmt: skip

    return app
