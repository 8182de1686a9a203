"""The server's side of structured output: which chat requests are constrained, and their matchers.

A request is constrained when it asks for it: `tool_choice: "required"` or a named function, a tool with
`"strict": true` (then every tool of the request, in "auto" too: a call, once begun, follows its schema), or a
`response_format` of json_object / json_schema. Anything else decodes freely, as before. With `--structured off`
such requests are refused with a 400 that says why; a schema the grammar compiler cannot take is a 400 with its reason.
"""

from __future__ import annotations

from ..serving.protocol import APIError, ChatRequest, NamedToolChoice
from .grammars import GrammarError
from .matcher import Matcher
from .stream import ToolCallStream

MODES = ("auto", "off")


def request_tools(req: ChatRequest) -> list[dict]:
    return [t.function.model_dump(exclude_none=True) for t in req.tools or []] if req.tool_choice != "none" else []


def constrains_tools(req: ChatRequest) -> bool:
    """Whether this request's tool calls come out of a grammar (so they can be streamed as they are written)."""
    tools = request_tools(req)
    return bool(tools) and (req.tool_choice == "required" or isinstance(req.tool_choice, NamedToolChoice)
                            or any(t.get("strict") for t in tools))


def request_matcher(req: ChatRequest, tokenizer, compiler, fmt: str, mode: str = "auto",
                    prefix: str = "") -> Matcher | None:
    """The matcher for `req` (None when it asks for no constraint), advanced past the forced `prefix` of a named
    tool_choice. Raises APIError (400) for `--structured off` and for schemas the compiler refuses."""
    tools = request_tools(req)
    rf = req.response_format.model_dump(exclude_none=True, by_alias=True) if req.response_format else None
    wants_json = bool(rf) and rf.get("type") != "text"
    if not constrains_tools(req) and not wants_json:
        return None
    what = "tools" if constrains_tools(req) else "response_format"
    if mode == "off" or compiler is None:
        raise APIError("structured output is off on this server (--structured off): tool_choice 'required', a named "
                       "function, strict tools and response_format need it", param=what, code="structured_output_off")
    choice = req.tool_choice.model_dump() if isinstance(req.tool_choice, NamedToolChoice) else (req.tool_choice or "auto")
    try:
        m = compiler.for_request(tools=tools, tool_choice=choice, fmt=fmt, response_format=rf,
                                 constrain_auto=any(t.get("strict") for t in tools),
                                 max_calls=1 if req.parallel_tool_calls is False else None)
    except GrammarError as e:
        raise APIError(f"{what}: {e}", param=what, code="unsupported_schema") from None
    if m is not None and prefix and not m.accept_text(tokenizer.encode(prefix)):
        raise APIError(f"the named tool_choice's opening is not a call of the tool format ({m.error})", 500,
                       "server_error")
    return m


def call_stream(req: ChatRequest, fmt: str) -> ToolCallStream | None:
    """A ToolCallStream for a request whose tool calls are constrained (streamed as deltas), else None."""
    return ToolCallStream(fmt) if constrains_tools(req) else None
