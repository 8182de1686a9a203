"""Prompt handlers per model family: how a benchmark item is asked and how the answer is read back.

BFCL scores every model through its own handler (prompt mode for Llama, Hammer's JSON format for Hammer models);
here the two styles are:
- "official" (the default): each benchmark's own prompts and parsers, in the benchmark modules;
- "coalm": the CoALM-IT formats a model trained on CoALM-IT data knows (`coalm.data.formats`):
  - BFCL: the item's functions as LA tools (task block, tools as JSON, format block), the user turn as input; the
    answer is a JSON list of {"name", "arguments"} decoded into the structure the AST checker takes
    ([{name: {arg: value}}]); `[]` means no call;
  - API-Bank: call samples in the LA format (the path the CoALM paper took, through Hammer's API-Bank evaluation),
    the dialogue so far as `User:`/`AI:`/`API:` lines; the first call of the answer goes through the official
    value rules as the strings API-Bank compares. Response samples in the CRA format (functions, the conversation,
    the last call as `Action:`/`Observation:`), the reply read after `System:`;
  - MultiWOZ: the DST format (domains with their slots; the conversation so far as input); each turn's answer is
    the state of one domain, and a dialogue's state at turn t merges the answers of turns <= t (a later answer for
    a domain replaces an earlier one), since the format names one domain per answer.
Decoding parses (`json`), never evaluates; an answer that does not parse is a `HandlerError` the scorers count as
wrong with its error type.
"""

from __future__ import annotations

import json

from coalm.data import formats as F
from engine.tool_formats import ToolFormatError, parse_la

STYLES = ("official", "coalm")


class HandlerError(ValueError):
    """Model output that does not decode in the asked format."""


def style(args) -> str:
    s = getattr(args, "prompt_style", None) or "official"
    if s not in STYLES:
        raise ValueError(f"unknown prompt style {s!r}; choose one of {', '.join(STYLES)}")
    return s


# ---------------------------------------------------------------- the LA answer

def decode_la(text: str) -> list[dict]:
    """The first JSON list of {"name", "arguments"} in `text` (a ``` fence and trailing text are tolerated)."""
    try:
        return parse_la(text, tolerant=True)
    except ToolFormatError as e:
        raise HandlerError(str(e)) from None


# ---------------------------------------------------------------- BFCL

def _bfcl_param(spec: dict, required: bool) -> dict:
    out = {"description": spec.get("description", ""), "type": spec.get("type", "string")}
    for key in ("enum", "items"):
        if key in spec:
            out[key] = spec[key]
    if "properties" in spec:
        req = set(spec.get("required", []))
        out["properties"] = {k: _bfcl_param(v, k in req) for k, v in spec["properties"].items()}
    if not required:
        out["default"] = spec.get("default")  # a default (None when the doc gives none) marks it optional
    return out


def bfcl_tool(doc: dict) -> dict:
    """A BFCL function doc as an LA tool: {"name", "description", "parameters": {arg: {description, type, ...}}}."""
    params = doc.get("parameters", {})
    req = set(params.get("required", []))
    return {"name": doc["name"], "description": doc.get("description", ""),
            "parameters": {k: _bfcl_param(v, k in req) for k, v in params.get("properties", {}).items()}}


def bfcl_messages(question: list[dict], functions: list[dict]) -> list[dict]:
    """LA instruction as the system turn; the item's own system text (if any) and user turns as the input."""
    text = "\n".join(m["content"] for m in question if m.get("role") in ("system", "user"))
    return [{"role": "system", "content": F.la_instruction([bfcl_tool(f) for f in functions])},
            {"role": "user", "content": text}]


def bfcl_calls(text: str) -> list[dict]:
    """LA answer -> [{function name: {param: value}}], the AST checker's input."""
    return [{c["name"]: dict(c["arguments"])} for c in decode_la(text)]


# ---------------------------------------------------------------- API-Bank

def apibank_tool(desc: dict) -> dict:
    params = {}
    for name, p in (desc.get("input_parameters") or {}).items():
        params[name] = {"description": p.get("description", ""), "type": p.get("type", "str")}
        if str(p.get("description", "")).startswith("[Optional]"):
            params[name]["default"] = None
    return {"name": desc["name"], "description": desc.get("description", ""), "parameters": params}


def _call_text(name: str, params: dict) -> str:
    return f"[{name}(" + ", ".join(f"{k}='{v}'" for k, v in params.items()) + ")]"


def apibank_lines(history: list[dict]) -> list[str]:
    """The dialogue as `User:`/`AI:`/`API: [Name(k='v')] Response: {...}` lines (as the synthetic rows write it)."""
    out = []
    for h in history:
        if h["role"] == "API":
            out.append(f"API: {_call_text(h['api_name'], h['param_dict'])} Response: "
                       + json.dumps(h["result"]["output"], ensure_ascii=False))
        else:
            out.append(f"{h['role']}: {h['text']}")
    return out


def apibank_call_messages(history: list[dict], descs: list[dict]) -> list[dict]:
    return [{"role": "system", "content": F.la_instruction([apibank_tool(d) for d in descs])},
            {"role": "user", "content": "\n".join(apibank_lines(history))}]


def _cra_lines(history: list[dict]) -> list[str]:
    """API-Bank turns as CRA lines: `User:`, `System:` (the AI's turns), and each API call as the Thought, Action and
    Observation lines the CRA training rows write (`coalm.data.builders.build_sgd_cra`)."""
    lines = []
    for h in history:
        if h["role"] == "API":
            lines += [f"Thought: I have what I need, so I will call {h['api_name']}.",
                      F.format_action(h["api_name"], h["param_dict"]), F.format_observation(h["result"]["output"])]
        else:
            lines.append(f"{'System' if h['role'] == 'AI' else h['role']}: {h['text']}")
    return lines


def apibank_response_messages(history: list[dict], descs: list[dict]) -> list[dict]:
    """CRA: the conversation before the last user turn in the instruction; that turn, a thought, the call as an
    Action and its result as an Observation in the input. Earlier calls are Action/Observation lines too (not the
    `API: [...]` lines of the call prompt): a model trained on CRA rows otherwise echoes that bracket form."""
    last_user = max((i for i, h in enumerate(history) if h["role"] == "User"), default=0)
    funcs = [(d["name"], list(d.get("input_parameters") or {}), d.get("description", "")) for d in descs]
    return [{"role": "system", "content": F.cra_instruction(funcs, _cra_lines(history[:last_user]))},
            {"role": "user", "content": "\n".join(_cra_lines(history[last_user:]))}]


def _as_apibank_value(v) -> str:
    # API-Bank compares strings; booleans as Python writes them ("True"), lists as their Python text, as in the
    # official call format `key=['a', 'b']`.
    return v if isinstance(v, str) else str(v)


def apibank_call(text: str) -> tuple[str, dict] | None:
    """(api_name, {param: str}) of the answer's first call; None when it makes no call."""
    calls = decode_la(text)
    if not calls:
        return None
    c = calls[0]
    return c["name"], {k: _as_apibank_value(v) for k, v in c["arguments"].items() if v is not None}


def apibank_reply(text: str) -> str:
    t = text.strip()
    for prefix in ("System:", "AI:"):
        if t.startswith(prefix):
            return t[len(prefix):].strip()
    return t


# ---------------------------------------------------------------- MultiWOZ

def multiwoz_messages(log: list[dict], t: int, ontology: dict, history_turns: int = 4) -> list[dict]:
    """DST format for user turn t: the last `history_turns` exchanges up to it as `User:`/`System:` lines."""
    lines = [("User: " if i % 2 == 0 else "System: ") + turn["text"] for i, turn in enumerate(log[: 2 * t + 1])]
    return [{"role": "system", "content": F.dst_instruction(ontology)},
            {"role": "user", "content": "\n".join(lines[-(2 * history_turns - 1):])}]


def multiwoz_turn_state(text: str) -> dict:
    """{domain: {slot: value}} from one DST answer."""
    if not isinstance(text, str):
        raise HandlerError(f"output is a {type(text).__name__}, not text")
    parsed = F.parse_dst(text.strip().splitlines()[0] if text.strip() else "")
    if parsed is None:
        raise HandlerError('not a DST answer System: {"domain": ..., "slot_values": {...}}')
    return {parsed["domain"]: {k: v for k, v in parsed["slot_values"].items() if not isinstance(v, (dict, list))}}


def merge_states(turns: list[dict | None]) -> list[dict]:
    """Per-turn domain states of one dialogue -> the cumulative state after each turn (None: nothing parsed)."""
    out, state = [], {}
    for s in turns:
        if s:
            state = {**state, **s}
        out.append(dict(state))
    return out


def multiwoz_responses(examples: list[dict], texts: list[str]) -> dict:
    """MultiWOZ DST responses {id: {"response", "state", "raw", "parse_error"}}; `examples` in turn order per
    dialogue (as loaded), so each turn's state merges the answers of the dialogue's earlier turns."""
    out, states = {}, {}
    for ex, text in zip(examples, texts):
        try:
            turn, err = multiwoz_turn_state(text), False
        except HandlerError:
            turn, err = None, True
        state = {**states.get(ex["dialogue_id"], {}), **(turn or {})}
        states[ex["dialogue_id"]] = state
        out[ex["id"]] = {"response": "", "state": state, "raw": text, "parse_error": err}
    return out
