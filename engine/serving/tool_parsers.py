"""Tool-call parsers: model text -> a list of calls `{"name", "arguments": dict}`, one small class per format.

A parser never evaluates model text: it reads JSON with `json` only, and every call must name one of the request's
tools (an allow-list). `parse` returns None when the text is not a well-formed call list (the server then answers it
as plain content and logs it), or the calls (possibly none: the LA format's `[]` means "no tool fits").

- `Llama3JsonParser`: Llama 3.1+ JSON tool calls, `{"name": ..., "parameters": {...}}` (optionally after
  `<|python_tag|>`, several separated by `;` or newlines), as Meta's prompt format documents.
- `LAParser`: the CoALM-IT LA (Hammer-style) output, a JSON list `[{"name": ..., "arguments": {...}}]`, optionally
  inside a ``` fence.
"""

from __future__ import annotations

import json
import re

_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")


class ToolParser:
    name = ""
    starts = ()  # text prefixes after which the output may be a call (the server buffers instead of streaming)

    def may_be_call(self, text: str) -> bool:
        t = text.lstrip()
        return any(t.startswith(s) or s.startswith(t) for s in self.starts) if t else True

    def parse(self, text: str, allowed: set[str]) -> list[dict] | None:
        raise NotImplementedError

    @staticmethod
    def _call(obj, arg_keys: tuple[str, ...], allowed: set[str]) -> dict | None:
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or obj["name"] not in allowed:
            return None
        args = next((obj[k] for k in arg_keys if k in obj), {})
        if isinstance(args, str):  # some models emit the arguments as a JSON string, as the OpenAI wire format does
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return None
        return {"name": obj["name"], "arguments": args} if isinstance(args, dict) else None


class Llama3JsonParser(ToolParser):
    name = "llama3"
    starts = ("{", "[", "<|python_tag|>", "```")

    def parse(self, text, allowed):
        t = _FENCE.sub("", text.strip().removeprefix("<|python_tag|>").strip()).strip()
        dec, objs, i = json.JSONDecoder(), [], 0
        while i < len(t):  # a sequence of JSON values separated by whitespace or ';'
            try:
                val, i = dec.raw_decode(t, i)
            except json.JSONDecodeError:
                return None
            objs += val if isinstance(val, list) else [val]
            while i < len(t) and t[i] in " \t\r\n;":
                i += 1
        calls = [self._call(o, ("parameters", "arguments"), allowed) for o in objs]
        return calls if calls and all(calls) else None


class LAParser(ToolParser):
    name = "la"
    starts = ("[", "```")

    def parse(self, text, allowed):
        t = _FENCE.sub("", text.strip()).strip()
        try:
            val = json.loads(t)
        except json.JSONDecodeError:
            return None
        if not isinstance(val, list):
            return None
        calls = [self._call(o, ("arguments",), allowed) for o in val]
        return calls if all(calls) else None


PARSERS: dict[str, type[ToolParser]] = {"llama3": Llama3JsonParser, "la": LAParser}


def get_parser(name: str) -> ToolParser:
    if name not in PARSERS:
        raise ValueError(f"unknown tool format {name!r}; choose one of: {', '.join(PARSERS)}")
    return PARSERS[name]()
