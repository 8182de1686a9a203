"""Tool-call parsers for the server: model text -> a list of calls `{"name", "arguments": dict}`, one class per format.

The formats themselves (and their one parser each) live in `engine.tool_formats`; a class here adds what streaming
needs: the prefixes after which the output may be a call (the server buffers instead of streaming). Every call must
name one of the request's tools (an allow-list). `parse` returns None when the text is not a well-formed call list
(the server then answers it as plain content and logs it), or the calls (possibly none: the LA format's `[]` means
"no tool fits").
"""

from __future__ import annotations

from engine.tool_formats import ToolFormatError, parse_la, parse_llama3


class ToolParser:
    name = ""
    starts = ()  # text prefixes after which the output may be a call

    def may_be_call(self, text: str) -> bool:
        t = text.lstrip()
        return any(t.startswith(s) or s.startswith(t) for s in self.starts) if t else True

    def parse(self, text: str, allowed: set[str]) -> list[dict] | None:
        try:
            return self._parse(text, allowed)
        except ToolFormatError:
            return None

    def _parse(self, text: str, allowed: set[str]) -> list[dict]:
        raise NotImplementedError


class Llama3JsonParser(ToolParser):
    """Llama 3.1+ JSON tool calls (`engine.tool_formats.parse_llama3`)."""

    name = "llama3"
    starts = ("{", "[", "<|python_tag|>", "```")

    def _parse(self, text, allowed):
        return parse_llama3(text, allowed=allowed)


class LAParser(ToolParser):
    """The CoALM-IT LA answer, strictly: one JSON list, optionally in a ``` fence (`engine.tool_formats.parse_la`)."""

    name = "la"
    starts = ("[", "```")

    def _parse(self, text, allowed):
        return parse_la(text, allowed=allowed, string_arguments=True)


PARSERS: dict[str, type[ToolParser]] = {"llama3": Llama3JsonParser, "la": LAParser}


def get_parser(name: str) -> ToolParser:
    if name not in PARSERS:
        raise ValueError(f"unknown tool format {name!r}; choose one of: {', '.join(PARSERS)}")
    return PARSERS[name]()
