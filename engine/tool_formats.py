"""The tool-call formats, one home each: how tools are shown to a model and how its calls are read back.

- LA, the CoALM-IT function-calling format (Hammer style): the system text is a task block, the tools as JSON
  (`[{"name", "description", "parameters": {arg: schema}}]`) and a format block; the answer is a JSON list of calls
  `[{"name": ..., "arguments": {...}}]`, `[]` when no tool fits. Training rows (`coalm.data`), the server's `la`
  tool format and the evaluators' CoALM style all use `la_instruction`, `la_output` and `parse_la` from here.
- Llama 3 JSON: Llama 3.1+ tool calls `{"name": ..., "parameters": {...}}`, optionally after `<|python_tag|>`,
  several separated by `;` or newlines, as Meta's prompt format documents (`parse_llama3`).

Parsers never evaluate model text: they read it with `json` only. Every failure is a `ToolFormatError` (a
ValueError) with a short reason; deep nesting and out-of-range numbers are parse failures, never crashes.
"""

from __future__ import annotations

import json
import re

LA_TASK = (
    "[BEGIN OF TASK INSTRUCTION]\n"
    "You are a tool calling assistant. To complete the user's request, choose one or more of the tools below and "
    "fill in the correct values for their parameters.\n"
    "1. Make one or more tool calls that answer the query.\n"
    "2. If none of the tools can be used, make no call.\n"
    "[END OF TASK INSTRUCTION]"
)
LA_FORMAT = (
    "[BEGIN OF FORMAT INSTRUCTION]\n"
    "The output MUST be a JSON list of calls and nothing else:\n"
    '[{"name": "tool_name", "arguments": {"argument1": "value1"}}]\n'
    "If no tool fits the query, output an empty list: []\n"
    "[END OF FORMAT INSTRUCTION]"
)

# strict: one ``` fence around the whole answer; tolerant: any ``` or ```json marker anywhere
_OUTER_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_ANY_FENCE = re.compile(r"```(?:json)?")


class ToolFormatError(ValueError):
    """Model text that is not a call list in the expected format."""


# ---------------------------------------------------------------- LA: prompt and writer

def la_tools(functions: list[dict]) -> list[dict]:
    """OpenAI function definitions ({"name", "description", "parameters": JSON schema}) -> LA (Hammer) tools, whose
    "parameters" map each argument to its schema."""
    return [{"name": f["name"], "description": f.get("description") or "",
             "parameters": (f.get("parameters") or {}).get("properties", {})} for f in functions]


def la_instruction(tools: list[dict]) -> str:
    """The LA system text. `tools`: [{"name", "description", "parameters": {arg: {"description", "type", ...}}}]."""
    tool_json = json.dumps(tools, ensure_ascii=False)
    return f"{LA_TASK}\n\n[BEGIN OF AVAILABLE TOOLS]\n{tool_json}\n[END OF AVAILABLE TOOLS]\n\n{LA_FORMAT}"


def la_output(calls: list[dict]) -> str:
    """Calls [{"name", "arguments"}] as the LA answer text."""
    return json.dumps([{"name": c["name"], "arguments": c["arguments"]} for c in calls], ensure_ascii=False)


# ---------------------------------------------------------------- parsers

def _json_value(text: str, start: int = 0, whole: bool = True):
    """One JSON value at `start`; with `whole`, nothing but whitespace may follow it."""
    try:
        if whole:
            return json.loads(text[start:] if start else text)
        return json.JSONDecoder().raw_decode(text, start)[0]
    except json.JSONDecodeError as e:
        raise ToolFormatError(f"not a JSON list: {e.msg}") from None
    except RecursionError:
        raise ToolFormatError("JSON nested too deeply") from None
    except ValueError:  # e.g. an integer of over 4,300 digits
        raise ToolFormatError("a JSON value out of range") from None


def _call(obj, arg_keys: tuple[str, ...], allowed, string_arguments: bool) -> dict:
    bad = ToolFormatError(f'a list element is not {{"name": str, "{arg_keys[0]}": {{...}}}}')
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise bad
    if allowed is not None and obj["name"] not in allowed:
        raise ToolFormatError(f"calls {obj['name'][:100]!r}, which is not an offered tool")
    args = next((obj[k] for k in arg_keys if k in obj), {})
    if string_arguments and isinstance(args, str):  # the OpenAI wire format sends arguments as a JSON string
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):
            raise bad from None
    if not isinstance(args, dict):
        raise bad
    return {"name": obj["name"], "arguments": args}


def parse_la(text, *, tolerant: bool = False, allowed=None, string_arguments: bool = False) -> list[dict]:
    """LA answer text -> [{"name", "arguments": dict}] (possibly empty: `[]` means no tool fits).

    Strict (the default; the server and exact-match scoring): the whole text is one JSON list, optionally inside one
    ``` fence. Tolerant (benchmark scoring in the CoALM style): ``` markers anywhere are dropped and the first JSON
    list in the text is read, whatever follows it. `allowed`: names the calls must use (an allow-list);
    `string_arguments`: also accept arguments given as a JSON object string. Raises ToolFormatError."""
    if not isinstance(text, str):
        raise ToolFormatError(f"output is a {type(text).__name__}, not text")
    if tolerant:
        t = _ANY_FENCE.sub("", text).strip()
        start = t.find("[")
        if start < 0:
            raise ToolFormatError("no JSON list in the output")
        val = _json_value(t, start, whole=False)
    else:
        val = _json_value(_OUTER_FENCE.sub("", text.strip()).strip())
    if not isinstance(val, list):
        raise ToolFormatError("not a JSON list")
    return [_call(c, ("arguments",), allowed, string_arguments) for c in val]


def parse_llama3(text, *, allowed=None) -> list[dict]:
    """Llama 3 JSON tool calls -> [{"name", "arguments": dict}], at least one. Accepts `<|python_tag|>`, a ``` fence,
    several values separated by whitespace or `;`, lists of calls, and "arguments" for "parameters" (as the
    OpenAI wire format names them, then possibly a JSON string). Raises ToolFormatError."""
    if not isinstance(text, str):
        raise ToolFormatError(f"output is a {type(text).__name__}, not text")
    t = _OUTER_FENCE.sub("", text.strip().removeprefix("<|python_tag|>").strip()).strip()
    objs, i = [], 0
    while i < len(t):  # a sequence of JSON values separated by whitespace or ';'
        try:
            val, i = json.JSONDecoder().raw_decode(t, i)
        except json.JSONDecodeError as e:
            raise ToolFormatError(f"not JSON: {e.msg}") from None
        except RecursionError:
            raise ToolFormatError("JSON nested too deeply") from None
        except ValueError:
            raise ToolFormatError("a JSON value out of range") from None
        objs += val if isinstance(val, list) else [val]
        while i < len(t) and t[i] in " \t\r\n;":
            i += 1
    if not objs:
        raise ToolFormatError("no call in the output")
    return [_call(o, ("parameters", "arguments"), allowed, True) for o in objs]
