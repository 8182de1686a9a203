"""The FastAPI app: POST /v1/chat/completions (plain and streamed), GET /v1/models, GET /health.

Requests are validated before anything reaches the model: malformed JSON, wrong types (a boolean is no integer),
lone surrogates (400 naming the field), an empty message list, a tool schema that is not an object, an out-of-range
seed, or a prompt (+ max_tokens) over the context length are answered 400 with OpenAI's error body, and the server
carries on. Every other error, 404/405/413/500 included, also has OpenAI's body; there is no /openapi.json or /docs.
Bodies over `max_request_bytes` are refused (413) as they arrive, and a body must arrive within `body_timeout`
seconds. Parsing, templating and tokenization run in a worker thread, so a huge prompt never stalls the event loop
(/health, other requests' streams). A sequence the scheduler fails ends with a 500 naming the request id; the
others carry on. A client that disconnects, mid-stream or while waiting for a whole answer, has its sequence
cancelled, which frees its cache slot at the scheduler's next step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from ..structured.serving import call_stream, request_matcher
from .output import Assembler, message
from .protocol import APIError, ChatRequest, NamedToolChoice, chunk_body, completion_body, new_id, usage
from .scheduler import Params, Sequence
from .templating import render
from .tool_parsers import get_parser

log = logging.getLogger("engine.serve")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class ServerState:
    scheduler: object  # Scheduler or FakeScheduler: submit / cancel / stats
    tokenizer: object
    model_name: str
    tool_format: str
    max_model_len: int
    api_key: str | None = None
    max_request_bytes: int = 8 << 20  # defaults live in engine.serve's flags; these serve tests that build the app
    body_timeout: float = 30.0
    structured: str = "auto"  # --structured: "off" refuses requests that need a grammar
    compiler: object = None  # engine.structured.GrammarCompiler (None: no structured output)


def _error(e: APIError, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


_HTTP_TYPES = {404: ("not_found_error", "not_found"), 405: ("invalid_request_error", "method_not_allowed")}


def _validation_message(e: ValidationError) -> tuple[str, str | None]:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err.get("loc", ()) if not str(x).startswith("function-after"))
    return (f"{loc}: {err.get('msg')}" if loc else err.get("msg", "invalid request")), (loc or None)


def create_app(state: ServerState) -> FastAPI:
    # no /openapi.json, /docs or /redoc: they would describe the API to anyone without the key
    app = FastAPI(title="coalm-engine", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state

    def auth(request: Request):  # a check per route, not a BaseHTTPMiddleware (which hides client disconnects)
        if state.api_key:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {state.api_key}".encode()):
                raise APIError("invalid or missing API key (send Authorization: Bearer <key>)", 401,
                               "authentication_error", code="invalid_api_key")

    @app.exception_handler(APIError)
    async def api_error(_, e: APIError):
        return _error(e)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        kind, code = _HTTP_TYPES.get(e.status_code, ("invalid_request_error", None))
        what = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return _error(APIError(what.get(e.status_code, str(e.detail)), e.status_code, kind, code=code),
                      headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception):  # a bug must still answer in OpenAI's shape
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(APIError(f"internal error: {type(e).__name__}", 500, "server_error"))

    @app.get("/health")
    async def health():
        return {"status": "ok", **state.scheduler.stats()}

    @app.get("/v1/models")
    async def models(request: Request):
        auth(request)
        return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": 0,
                                            "owned_by": "coalm-engine", "max_model_len": state.max_model_len}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        auth(request)
        body = await read_body(request, state.max_request_bytes, state.body_timeout)
        # JSON, templating and tokenization of a multi-megabyte prompt take seconds: not on the event loop
        req, text, prefix, ids, matcher = await asyncio.to_thread(_prepare, state, body)
        limit = req.limit()
        room = state.max_model_len - len(ids)
        if room < 1 or (limit is not None and limit > room):
            raise APIError(f"the prompt is {len(ids)} tokens and max_tokens is {limit}, which exceeds the context "
                           f"length of {state.max_model_len} tokens", param="messages", code="context_length_exceeded")
        params = Params(limit or room, req.temperature, req.top_p, list(req.stop or []), req.seed)
        tools_on = bool(req.tools) and req.tool_choice != "none"
        asm = Assembler(get_parser(state.tool_format), {t.function.name for t in req.tools}, prefix) if tools_on \
            else Assembler()
        events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        def on_event(delta, finish):  # called from the scheduler thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, (delta, finish))
            except RuntimeError:  # the event loop is gone (server shutting down): nobody is listening
                pass

        seq = Sequence(ids, params, on_event, text, matcher=matcher)
        calls = call_stream(req, state.tool_format) if matcher is not None else None
        rid = new_id("chatcmpl")
        try:
            state.scheduler.submit(seq)
        except (ValueError, TypeError, OverflowError) as e:  # parameters the scheduler cannot take: this request's
            raise APIError(f"request {rid}: {e}") from None
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(_stream(state, seq, events, asm, rid, req, include_usage, calls, prefix),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return await _complete(state, request, seq, events, asm, rid, req, calls, prefix)

    return app


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, refused (413) as soon as it is known to exceed `limit` bytes, and (408) when it has not arrived
    within `timeout` seconds (a client dribbling its body holds no connection forever)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks, size = [], 0

    async def receive():
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(size, limit)
            chunks.append(chunk)

    try:
        await asyncio.wait_for(receive(), timeout)
    except ClientDisconnect:  # nobody is left to answer; end the request quietly
        raise APIError("the client disconnected while sending the request", 400, code="client_disconnected") from None
    except asyncio.TimeoutError:
        raise APIError(f"the request body did not arrive within {timeout:g} s", 408, code="request_timeout") from None
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> APIError:
    return APIError(f"the request body is {'at least ' if size else ''}{size} bytes, over the limit of {limit} bytes "
                    "(--max-request-bytes)", 413, code="request_too_large")


def _prepare(state: ServerState, body: bytes):
    """(request, prompt text, assistant prefix, token ids, grammar matcher or None): runs in a worker thread (a
    grammar compiles here, off the event loop)."""
    req = _parse(body)
    if req.model and req.model != state.model_name:
        raise APIError(f"the model {req.model!r} does not exist; this server serves {state.model_name!r}", 404,
                       param="model", code="model_not_found")
    text, prefix = render(req, state.tokenizer, state.tool_format)
    # encode_batch, not encode: the tokenizers backend releases the GIL only there (a 10 MB prompt takes ~30 s of
    # BPE here, during which encode() would stall the event loop and the scheduler thread); the ids are the same
    matcher = request_matcher(req, state.tokenizer, state.compiler, state.tool_format, state.structured, prefix)
    return req, text, prefix, state.tokenizer.encode_batch([text])[0], matcher


def _surrogate_field(obj, path: str = "") -> str | None:
    """The path of the first string (or key) holding a lone surrogate: JSON escapes allow one, UTF-8 does not."""
    if isinstance(obj, str):
        return path or "body" if _SURROGATE.search(obj) else None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        here = f"{path}.{k}" if path else str(k)
        if isinstance(k, str) and _SURROGATE.search(k):
            return here
        found = _surrogate_field(v, here)
        if found:
            return found
    return None


def _parse(body: bytes) -> ChatRequest:
    try:
        obj = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise APIError(f"the request body is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise APIError("the request body must be a JSON object")
    bad = _surrogate_field(obj)
    if bad:
        raise APIError(f"{bad}: contains a lone UTF-16 surrogate, which is not valid Unicode text", param=bad,
                       code="invalid_unicode")
    try:
        return ChatRequest.model_validate(obj)
    except ValidationError as e:
        msg, param = _validation_message(e)
        raise APIError(msg, param=param) from None


async def _events(state, seq, events):
    """(delta, finish) pairs until the sequence finishes; cancels it if the consumer goes away."""
    try:
        while True:
            delta, finish = await events.get()
            yield delta, finish
            if finish:
                return
    finally:
        if seq.finish is None:
            state.scheduler.cancel(seq)
            log.info("request cancelled by the client; slot freed")


def _reason(asm, req: ChatRequest, finish: str) -> str:
    # OpenAI's convention: "tool_calls" when the model chose to call, "stop" when tool_choice named the function
    if asm.tool_calls:
        return "stop" if isinstance(req.tool_choice, NamedToolChoice) else "tool_calls"
    return finish


async def _complete(state, request: Request, seq, events, asm, rid, req, calls=None, prefix="") -> JSONResponse:
    async def collect():
        content, finish = "", None
        async for delta, finish in _events(state, seq, events):
            if finish == "error":
                raise APIError(f"request {rid}: generation failed: {delta}", 500, "server_error")
            content += asm.feed(delta)
        return content + asm.finish(), finish

    async def disconnected():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work, watch = asyncio.ensure_future(collect()), asyncio.ensure_future(disconnected())
    await asyncio.wait([work, watch], return_when=asyncio.FIRST_COMPLETED)
    if not work.done():  # the client left: cancelling `work` closes _events, which cancels the sequence
        work.cancel()
        return JSONResponse({}, status_code=499)
    watch.cancel()
    content, finish = work.result()
    if calls is not None:  # constrained calls: the arguments exactly as written (and streamed); at the token limit,
        calls.feed(prefix + seq.text)  # the calls that were complete
        asm.tool_calls = calls.calls or asm.tool_calls
    reason = "length" if finish == "length" and calls is not None else _reason(asm, req, finish)
    body = completion_body(rid, state.model_name, message(content, asm.tool_calls), reason,
                           len(seq.prompt_ids), len(seq.ids))
    return JSONResponse(body)


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _stream(state, seq, events, asm, rid, req: ChatRequest, include_usage: bool, calls=None, prefix=""):
    created, model = int(time.time()), state.model_name
    yield _sse(chunk_body(rid, model, created, {"role": "assistant", "content": ""}))
    finish, text, streamed = None, prefix, False
    async for delta, finish in _events(state, seq, events):
        if finish == "error":
            yield _sse(APIError(f"request {rid}: generation failed: {delta}", 500, "server_error").body())
            yield "data: [DONE]\n\n"
            return
        out = asm.feed(delta)
        if out:
            yield _sse(chunk_body(rid, model, created, {"content": out}))
        if calls is not None:  # a constrained call list: its arguments go out as they are written
            text += delta
            pieces = calls.feed(text)
            if pieces:
                streamed = True
                yield _sse(chunk_body(rid, model, created, {"tool_calls": pieces}))
    rest = asm.finish()
    if rest and not streamed:  # (a constrained call list cut by the token limit: its complete calls went out)
        yield _sse(chunk_body(rid, model, created, {"content": rest}))
    if streamed:
        asm.tool_calls = calls.calls or asm.tool_calls
    if asm.tool_calls and not streamed:
        calls = [dict(c, index=i) for i, c in enumerate(asm.tool_calls)]
        yield _sse(chunk_body(rid, model, created, {"tool_calls": calls}))
    reason = "length" if finish == "length" and streamed else _reason(asm, req, finish)
    yield _sse(chunk_body(rid, model, created, {}, reason))
    if include_usage:
        yield _sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
                    "usage": usage(len(seq.prompt_ids), len(seq.ids))})
    yield "data: [DONE]\n\n"
