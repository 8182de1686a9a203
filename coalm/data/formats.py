"""The three CoALM-IT prompt formats, as text builders and parsers shared by the source builders and the sample.

- DST (dialogue state tracking, from SNIPS): the instruction lists each domain with its slots and asks for the
  user's intent as JSON; input `User: <utterance>`; output `System: {"domain": ..., "slot_values": {...}}`.
- LA (function calling, Hammer style): instruction = a task block, the tool list as JSON (name, description,
  parameters) and a format block; input = the user query; output = a JSON list `[{"name", "arguments"}]`, or `[]`.
- CRA (conversational ReAct API, from SGD): the instruction lists the functions as `Name(arg1, arg2, ...)` and the
  conversation so far as `User:`/`Thought:`/`Action:`/`Observation:`/`System:` lines. Action rows: input = the new
  user turn and a thought, output `Action: Func(arg='v', ...)`. Response rows: input = the turn with its thought
  (and action + observation when a call was made), output `System: <reply>`.

Parsers never evaluate model text: calls are read with `json` and `ast.parse` (literal nodes only).
"""

from __future__ import annotations

import ast
import json

from engine.tool_formats import LA_FORMAT, LA_TASK, ToolFormatError, la_instruction, la_output, parse_la  # noqa: F401

FORMATS = ("dst", "la", "cra_action", "cra_response")

# ---- DST ---------------------------------------------------------------------------------------------------------

DST_TASK = (
    "You are a dialogue state tracker. Read the user's utterance, pick the one domain below that matches the "
    "user's intent, and fill in the slots the user mentioned, copying each value exactly as written."
)
DST_FORMAT = (
    'Answer with one line: System: {"domain": "<domain>", "slot_values": {"<slot>": "<value>", ...}} '
    "using only the slots listed for that domain; leave out slots the user did not mention."
)


def dst_instruction(domains: dict[str, list[str]]) -> str:
    """`domains` maps each domain (intent) to its slot names, in a fixed order chosen by the caller."""
    lines = [DST_TASK, "", "Domains and their slots:"]
    lines += [f"- {d}: {', '.join(slots) if slots else '(no slots)'}" for d, slots in domains.items()]
    lines += ["", DST_FORMAT]
    return "\n".join(lines)


def dst_output(domain: str, slot_values: dict) -> str:
    return "System: " + json.dumps({"domain": domain, "slot_values": slot_values}, ensure_ascii=False)


# ---- LA (function calling) ---------------------------------------------------------------------------------------

# LA_TASK, LA_FORMAT, la_instruction and la_output come from `engine.tool_formats` (imported above): the server's
# `la` tool format shows and reads the same text.

# ---- CRA (conversational ReAct API) ------------------------------------------------------------------------------

CRA_TASK = (
    "You are a helpful assistant that can call functions to serve the user. At each user turn, think about what "
    "to do (Thought), then either call one function (Action: Name(arg='value', ...)) and reply after reading its "
    "Observation, or reply directly (System: ...)."
)


def cra_signature(name: str, args: list[str]) -> str:
    return f"{name}({', '.join(args)})"


def cra_instruction(functions: list[tuple[str, list[str], str]], history: list[str]) -> str:
    """`functions`: (name, argument names, description); `history`: rendered lines of the conversation so far."""
    lines = [CRA_TASK, "", "Available functions:"]
    lines += [f"- {cra_signature(n, a)}: {d}" if d else f"- {cra_signature(n, a)}" for n, a, d in functions]
    lines += ["", "Conversation so far:"]
    lines += history if history else ["(none)"]
    return "\n".join(lines)


def _quote(v) -> str:
    # Single-quoted Python-style literals, the form the paper's Action lines use; repr escapes quotes and
    # backslashes so the line parses back with ast.
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return repr(v)
    return repr(str(v))


def format_action(name: str, arguments: dict) -> str:
    return f"Action: {name}(" + ", ".join(f"{k}={_quote(v)}" for k, v in arguments.items()) + ")"


def format_observation(obs) -> str:
    return "Observation: " + json.dumps(obs, ensure_ascii=False)


# ---- parsers (used by the scorer) -------------------------------------------------------------------------------

def parse_calls(text: str) -> list[dict] | None:
    """The LA answer's calls, read strictly (`engine.tool_formats.parse_la`); None when it does not parse."""
    try:
        return parse_la(text)
    except ToolFormatError:
        return None


def parse_dst(text: str) -> dict | None:
    """{"domain", "slot_values"} from `System: {...}`; None when it does not parse."""
    t = text.strip()
    if t.startswith("System:"):
        t = t[len("System:"):].strip()
    try:
        val = json.loads(t)
    except (ValueError, RecursionError):  # model output: deep nesting or a 5,000-digit int is a parse failure, no crash
        return None
    if not isinstance(val, dict) or not isinstance(val.get("domain"), str) or not isinstance(
        val.get("slot_values", {}), dict
    ):
        return None
    return {"domain": val["domain"], "slot_values": val.get("slot_values", {})}


def parse_action(text: str) -> tuple[str, dict] | None:
    """(name, {arg: value}) from `Action: Name(arg='v', ...)`; literal values only, never evaluated."""
    t = text.strip()
    if t.startswith("Action:"):
        t = t[len("Action:"):].strip()
    t = t.splitlines()[0].strip() if t else t
    try:
        node = ast.parse(t, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if not isinstance(node, ast.Call) or node.args:
        return None
    fn = node.func
    parts = []
    while isinstance(fn, ast.Attribute):
        parts.append(fn.attr)
        fn = fn.value
    if not isinstance(fn, ast.Name):
        return None
    name = ".".join([fn.id, *reversed(parts)])
    args = {}
    for kw in node.keywords:
        if kw.arg is None:
            return None
        try:
            args[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
            return None
    return name, args


def row_format(row: dict) -> str:
    """The row's format: from meta when present, else recognised from the output's shape."""
    fmt = (row.get("meta") or {}).get("format")
    if fmt in FORMATS:
        return fmt
    out = row["output"].lstrip()
    if out.startswith("Action:"):
        return "cra_action"
    if out.startswith("System:"):
        return "dst" if parse_dst(out) is not None else "cra_response"
    if out.startswith(("[", "```")):
        return "la"
    return "other"
