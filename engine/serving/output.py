"""Model text -> an assistant message: plain content, or tool calls when the request has tools.

While streaming, text is passed through as soon as it cannot be a tool call (its first characters do not open the
format's call syntax); otherwise it is held until the end and parsed. A call list that does not parse, or names a
function that is not among the request's tools, is answered as plain content and logged.
"""

from __future__ import annotations

import json
import logging

from .protocol import new_id

log = logging.getLogger("engine.serve")


class Assembler:
    def __init__(self, parser=None, allowed: set[str] = frozenset(), prefix: str = ""):
        self.parser, self.allowed, self.prefix = parser, allowed, prefix
        self.buffer = ""
        self.streaming = parser is None  # content goes out as it comes
        self.tool_calls: list[dict] | None = None

    def feed(self, delta: str) -> str:
        """Content to send now (maybe empty)."""
        if self.streaming:
            return delta
        self.buffer += delta
        if not self.prefix and not self.parser.may_be_call(self.buffer):
            self.streaming, out, self.buffer = True, self.buffer, ""
            return out
        return ""

    def finish(self) -> str:
        """The rest of the content once generation ended; sets `tool_calls` when the held text is a call list."""
        if self.streaming:
            return ""
        text = self.prefix + self.buffer
        if self.prefix:  # a forced call: the answer is the call the prefix opened; what follows it is dropped
            try:
                text = text[:json.JSONDecoder().raw_decode(text)[1]]
            except json.JSONDecodeError:
                pass
        calls = self.parser.parse(text, self.allowed)
        if calls:
            self.tool_calls = [{"id": new_id("call"), "type": "function",
                                "function": {"name": c["name"], "arguments": json.dumps(c["arguments"],
                                                                                      ensure_ascii=False)}}
                               for c in calls]
            return ""
        if calls is None:
            log.warning("malformed tool call returned as content: %r", text[:500])
        return text


def message(content: str, tool_calls: list[dict] | None) -> dict:
    if tool_calls:
        return {"role": "assistant", "content": None, "tool_calls": tool_calls}
    return {"role": "assistant", "content": content}
