"""The OpenAI chat-completions wire format as pydantic models: requests (validated strictly, so a wrong type is a 400
instead of a crash deep in the server), responses, streaming chunks and the error body.

Unknown request fields are accepted and ignored, as OpenAI-compatible servers do, but a known field of the wrong type
or value is refused: no coercion of booleans to numbers (`max_tokens: true`) or of strings to booleans, and `seed`
must fit a signed 64-bit integer. Field names and shapes follow https://platform.openai.com/docs/api-reference/chat.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, field_validator, model_validator


class APIError(Exception):
    """An error answered as OpenAI's JSON body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, message: str, status: int = 400, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.message, self.status, self.type, self.param, self.code = message, status, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _no_bool(v):
    # pydantic's lax mode reads true as 1; a boolean where a number belongs is a client bug, so say so
    if isinstance(v, bool):
        raise ValueError("a boolean is not a number")  # noqa: TRY004 (pydantic turns ValueError into a 400)
    return v


Int = Annotated[int, BeforeValidator(_no_bool)]
Float = Annotated[float, BeforeValidator(_no_bool)]
INT64 = 2**63  # seeds: OpenAI documents an integer; the samplers' generators take 64 bits


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class FunctionDef(_Lenient):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: StrictBool | None = None  # true: the arguments always follow `parameters` (engine.structured)

    @field_validator("parameters")
    @classmethod
    def _object_schema(cls, v):
        # a JSON schema for the arguments: the arguments are always an object, so the schema must describe one
        if v.get("type", "object") != "object" or not isinstance(v.get("properties", {}), dict):
            raise ValueError("function parameters must be a JSON schema of type 'object' with 'properties' an object")
        return v


class Tool(_Lenient):
    type: Literal["function"] = "function"
    function: FunctionDef


class FunctionCall(_Lenient):
    name: str
    arguments: str  # a JSON object, as a string (OpenAI's convention)


class ToolCall(_Lenient):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_rules(self):
        if self.role != "assistant" and self.content is None:
            raise ValueError(f"a {self.role} message needs 'content'")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs 'tool_call_id'")
        return self

    def text(self) -> str:
        """Content as plain text: parts of type text are joined; other part types are refused."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        out = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(f"only text content parts are supported, got {part.get('type')!r}", param="messages")
            out.append(part["text"])
        return "".join(out)


class NamedToolChoice(_Lenient):
    type: Literal["function"] = "function"
    function: dict[str, str]

    @field_validator("function")
    @classmethod
    def _has_name(cls, v):
        if not v.get("name"):
            raise ValueError("tool_choice.function needs a 'name'")
        return v


class StreamOptions(_Lenient):
    include_usage: StrictBool = False


class JSONSchemaFormat(_Lenient):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs 'json_schema': {'name', 'schema'}")
        return self


class ChatRequest(_Lenient):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    response_format: ResponseFormat | None = None
    temperature: Float = Field(1.0, ge=0.0, le=2.0)
    top_p: Float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: Int | None = Field(None, ge=1)
    max_completion_tokens: Int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: Int | None = Field(None, ge=-INT64, lt=INT64)
    n: Int = Field(1, ge=1, le=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop must be up to 4 non-empty strings")
        return stops

    @model_validator(mode="after")
    def _choice_needs_tools(self):
        if self.tool_choice == "required" and not self.tools:
            raise ValueError("tool_choice 'required' needs tools")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {t.function.name for t in self.tools or []}
            if self.tool_choice.function["name"] not in names:
                raise ValueError(f"tool_choice names {self.tool_choice.function['name']!r}, which is not in tools")
        return self

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion_body(rid: str, model: str, message: dict, finish: str, n_prompt: int, n_completion: int) -> dict:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": usage(n_prompt, n_completion)}


def chunk_body(rid: str, model: str, created: int, delta: dict, finish: str | None = None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
