"""API-Bank in the CoALM style (the path the CoALM paper took, through Hammer's API-Bank evaluation): call samples in
the LA format, the dialogue so far as `User:`/`AI:`/`API:` lines; the first call of the answer goes through the official
value rules as the strings API-Bank compares. Response samples in the CRA format (functions, the conversation, the
last call as `Action:`/`Observation:`), the reply read after `System:`."""

from __future__ import annotations

import json

from coalm.data import formats as F
from coalm.eval.task import decode_la


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
