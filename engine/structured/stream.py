"""Tool calls streamed as they are generated: OpenAI-style `tool_calls` deltas from the growing text of a call list.

Under a tool grammar the text has a fixed shape (`{"name": N, "parameters": ARGS}` objects for llama3, a list of
`{"name": N, "arguments": ARGS}` for la), so the stream needs no guessing: a call's header delta (index, id, type,
name, empty arguments) goes out once its name and key are complete, then its ARGS text in pieces as tokens arrive,
ending at the brace that closes ARGS. The argument pieces concatenate to exactly the ARGS text of the answer, which is
also what the non-streamed answer carries, so both agree byte for byte.

Hand-written (a string-aware brace counter) because `json` has no incremental parser, and the shape is fixed.
"""

from __future__ import annotations

import json
import uuid


def _string_end(text: str, i: int) -> int | None:
    """Index just past the JSON string starting at text[i] == '"', or None if it is not complete yet."""
    j = i + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
            continue
        if text[j] == '"':
            return j + 1
        j += 1
    return None


class ToolCallStream:
    """Feed the whole text so far (`feed(text)`); get the deltas it adds. `calls` holds the finished calls as
    {"id", "type", "function": {"name", "arguments": str}}."""

    def __init__(self, fmt: str = "llama3"):
        self.key = '"parameters": ' if fmt == "llama3" else '"arguments": '
        self.calls: list[dict] = []
        self._pos = 0  # where the next call's search starts
        self._open: dict | None = None  # the call whose arguments are streaming
        self._scan = 0
        self._depth = 0
        self._in_str = False
        self._esc = False

    @staticmethod
    def is_text(text: str) -> bool | None:
        """Whether the answer is plain text (tool_choice "auto" chose not to call): a call list begins with "{" or
        "[" and the grammar's text never does. None while nothing is written."""
        return None if not text else text[0] not in "{["

    def feed(self, text: str) -> list[dict]:
        if self.is_text(text) is not False:
            return []
        out = []
        while True:
            if self._open is None:
                head = self._header(text)
                if head is None:
                    return out
                out.append(head)
            piece_from = self._scan
            done = self._advance(text)
            if self._scan > piece_from:
                self._open["function"]["arguments"] += text[piece_from:self._scan]
                out.append({"index": len(self.calls), "function": {"arguments": text[piece_from:self._scan]}})
            if not done:
                return out
            self.calls.append(self._open)
            self._open, self._pos = None, self._scan

    def _header(self, text: str) -> dict | None:
        i = text.find('{"name": ', self._pos)
        if i < 0:
            return None
        q = i + len('{"name": ')
        end = _string_end(text, q) if q < len(text) and text[q] == '"' else None
        if end is None or not text.startswith(", " + self.key, end):
            return None  # not complete yet (under a grammar it will be)
        name = json.loads(text[q:end])
        self._scan = end + len(", " + self.key)
        self._depth, self._in_str, self._esc = 0, False, False
        self._open = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": name, "arguments": ""}}
        return {"index": len(self.calls), "id": self._open["id"], "type": "function",
                "function": {"name": name, "arguments": ""}}

    def _advance(self, text: str) -> bool:
        """Scan the arguments forward; True once their closing brace (or a whole scalar value) is passed."""
        while self._scan < len(text):
            c = text[self._scan]
            self._scan += 1
            if self._in_str:
                if self._esc:
                    self._esc = False
                elif c == "\\":
                    self._esc = True
                elif c == '"':
                    self._in_str = False
            elif c == '"':
                self._in_str = True
            elif c in "{[":
                self._depth += 1
            elif c in "}]":
                self._depth -= 1
                if self._depth == 0:
                    return True
        return False
