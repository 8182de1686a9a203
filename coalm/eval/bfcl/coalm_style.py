"""BFCL in the CoALM style: the item's functions as LA tools (task block, tools as JSON, format block) and the user
turn as input; the answer is a JSON list of {"name", "arguments"} decoded into the structure the AST checker takes
([{name: {arg: value}}]); `[]` means no call. Java and JavaScript items are official-style only (their answers are
source text)."""

from __future__ import annotations

from coalm.data import formats as F
from coalm.eval.task import decode_la


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
