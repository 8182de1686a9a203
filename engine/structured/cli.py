"""`engine.generate --json-schema FILE` / `--tools FILE`: constrained offline generation through the server's path.

Each prompt becomes the chat request a client would send (tools, tool_choice, response_format), rendered by the
server's templating and constrained by the same `request_matcher`, so the CLI and `engine.serve` agree. Tools given
on the command line are constrained in every tool_choice (as if "strict"): "auto" lets the model answer in text or
a call, and a begun call follows its schema.
"""

from __future__ import annotations

import json
from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--json-schema", help="JSON file: the answer is JSON valid for this schema (response_format)")
    p.add_argument("--tools", help="JSON file: a list of OpenAI tools (or bare functions) the answer calls")
    p.add_argument("--tool-choice", default="auto", help="auto | required | a tool's name (with --tools)")
    p.add_argument("--tool-format", default="auto", choices=["auto", "llama3", "la"],
                   help="the tool-call format (auto: la for ChatML vocabularies, llama3 for Llama 3)")


def _read(path: str, what: str):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what} {path}: not a readable JSON file ({e})") from None


def requests(a, tokenizer, vocab_size: int):
    """(prompt token ids, matchers, forced prefixes) for the CLI's prompts, or None without --json-schema/--tools."""
    if not (a.json_schema or a.tools):
        return None
    if a.raw:
        raise ValueError("--json-schema and --tools need the chat template; drop --raw")
    from ..serving.protocol import APIError, ChatRequest
    from ..serving.templating import choose_format, render
    from . import GrammarCompiler
    from .serving import request_matcher

    body: dict = {}
    if a.tools:
        tools = _read(a.tools, "--tools")
        if not isinstance(tools, list):
            raise ValueError(f"--tools {a.tools}: expected a JSON list of tools")
        body["tools"] = [{"type": "function", "function": {**t.get("function", t), "strict": True}}
                         for t in tools if isinstance(t, dict)]
        choice = a.tool_choice
        body["tool_choice"] = choice if choice in ("auto", "required", "none") else \
            {"type": "function", "function": {"name": choice}}
    if a.json_schema:
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "answer", "schema": _read(a.json_schema, "--json-schema")}}
    fmt = choose_format(a.tool_format, tokenizer, a.adapter)
    compiler = GrammarCompiler(tokenizer, vocab_size)
    ids, matchers, prefixes = [], [], []
    for text in a.prompt:
        msgs = ([{"role": "system", "content": a.system}] if a.system else []) + [{"role": "user", "content": text}]
        try:
            req = ChatRequest.model_validate({**body, "messages": msgs})
            prompt, prefix = render(req, tokenizer, fmt)
            matchers.append(request_matcher(req, tokenizer, compiler, fmt, "auto", prefix))
        except APIError as e:
            raise ValueError(e.message) from None
        except Exception as e:  # pydantic's ValidationError: a bad tool list or schema file
            if type(e).__name__ != "ValidationError":
                raise
            raise ValueError(f"--tools / --json-schema: {e.errors()[0].get('msg')}") from None
        ids.append(tokenizer.encode(prompt))
        prefixes.append(prefix)
    return ids, matchers, prefixes
