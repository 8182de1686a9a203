"""Grammars (llguidance Lark text) for tool calls and JSON output, built from OpenAI-style tools and schemas.

Two tool formats, as the engine's parsers read them (engine/serving/tool_parsers.py):
- "llama3": one or more `{"name": NAME, "parameters": ARGS}` objects (consecutive, or separated by "; " / a newline);
- "la": the CoALM-IT LA list `[{"name": NAME, "arguments": ARGS}, ...]`.

NAME is one of the listed tools (each tool is its own alternative, so a name and its arguments always agree) and
ARGS follows that tool's JSON schema (llguidance's `%json`: types, enums, required, nested objects and arrays).
Object schemas in tool arguments that list properties and do not say otherwise are closed (`additionalProperties: false`): an invented
argument name is never valid. JSON is written compactly, with json.dumps' default separators (", " and ": ", the way
the chat templates and the CoALM-IT data write calls), so the model cannot spin on whitespace. Properties come in the
schema's order (llguidance, like xgrammar, keeps schema order; JSON Schema itself does not care).

tool_choice:
- "auto": llama3: text, or calls (text may not start with "{" or "[", the openings the parser treats as a call);
  la: a list, `[]` allowed (the LA format's way to decline);
- "required": at least one call;
- {"type": "function", "function": {"name": N}} (or just N): exactly one call of N;
- "none": no grammar.

Schemas are checked before they reach the compiler: a size limit and a `$ref` cycle that never reaches a value give
a `GrammarError` with the reason (the server's 400), instead of a grammar that admits nothing.
"""

from __future__ import annotations

import json

MAX_SCHEMA_BYTES = 2_000_000  # all schemas of one request together; llguidance's own limits apply below this
_COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_SUB_SCHEMAS = ("items", "additionalItems", "contains", "not", "if", "then", "else")
_SUB_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUB_MAPS = ("properties", "patternProperties", "$defs", "definitions")
FORMATS = ("llama3", "la")


class GrammarError(ValueError):
    """A schema or tool list that cannot be turned into a grammar (HTTP 400 in the server)."""


def close_objects(schema):
    """A copy of `schema` where object schemas that list `properties` but say nothing of others get
    `additionalProperties: false`."""
    if isinstance(schema, list):
        return [close_objects(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for k, v in schema.items():
        if k in _SUB_MAPS and isinstance(v, dict):
            out[k] = {name: close_objects(s) for name, s in v.items()}
        elif k in _SUB_LISTS or k in _SUB_SCHEMAS or k == "additionalProperties":
            out[k] = close_objects(v)
        else:
            out[k] = v
    # only objects that list their properties: a free-form map (`{"type": "object"}`) stays open
    if "properties" in out and "additionalProperties" not in out and "patternProperties" not in out:
        out["additionalProperties"] = False
        # a required name the schema forgot to describe is still a documented name: allow it with any value
        missing = [r for r in out.get("required", []) if isinstance(r, str) and r not in out.get("properties", {})]
        if missing:
            out["properties"] = {**out.get("properties", {}), **{r: {} for r in missing}}
    return out


def _resolve(root: dict, ref: str):
    if not ref.startswith("#"):
        raise GrammarError(f"$ref {ref!r}: only local references ('#/...') are supported")
    node = root
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise GrammarError(f"$ref {ref!r} points nowhere")
    return node


def check_schema(schema, what: str = "schema") -> None:
    """Raise GrammarError for a schema that is not an object or has a `$ref` chain that loops without a value."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise GrammarError(f"{what} must be a JSON object, got {type(schema).__name__}")
    stack = [schema]
    while stack:  # every $ref in the schema: follow the chain of pure references and fail on a repeat
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        seen, cur = [], node
        while isinstance(cur, dict) and isinstance(cur.get("$ref"), str):
            ref = cur["$ref"]
            if ref in seen:
                raise GrammarError(f"{what}: $ref cycle {' -> '.join(seen + [ref])} never reaches a value")
            seen.append(ref)
            cur = _resolve(schema, ref)
        stack.extend(v for v in node.values() if isinstance(v, (dict, list)))


def _lit(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a Lark string literal uses JSON's escapes


def _json(schema, closed: bool) -> str:
    if schema is True or schema is None:
        schema = {}
    if schema is False:
        raise GrammarError("a schema of `false` admits no value")
    schema = dict(close_objects(schema) if closed else schema)
    schema["x-guidance"] = {**_COMPACT, **schema.get("x-guidance", {})}
    return "%json " + json.dumps(schema, ensure_ascii=False)


def _tool(t: dict) -> tuple[str, dict]:
    """(name, parameters schema) of an OpenAI tool ({"type": "function", "function": {...}}) or a bare function."""
    f = t.get("function", t) if isinstance(t, dict) else None
    if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not f["name"]:
        raise GrammarError(f"a tool needs a function with a non-empty string name, got {t!r}"[:300])
    params = f.get("parameters")
    if params is None:
        params = {"type": "object", "properties": {}}
    check_schema(params, f"tool {f['name']!r} parameters")
    return f["name"], params


def _choice_name(choice) -> str | None:
    if isinstance(choice, str):
        return None if choice in ("auto", "required", "none") else choice
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name", choice.get("name"))
        if isinstance(name, str):
            return name
    raise GrammarError(f"tool_choice must be 'auto', 'required', 'none' or a named function, got {choice!r}"[:300])


def _repeat(first: str, sep: str, n: int | None) -> str:
    """`first` then up to n-1 more (`sep` before each), or any number when n is None."""
    if n is None:
        return f"{first} ({sep} call)*"
    out = ""
    for _ in range(n - 1):
        out = f" ({sep} call{out})?"
    return first + out


def _tool_specs(tools: list[dict], tool_choice) -> tuple[list[tuple[str, dict]], str | None]:
    """([(name, parameters schema)] of `tools`, checked: unique names, size; the name `tool_choice` picks, or None)."""
    if not tools:
        raise GrammarError("tool_choice needs at least one tool")
    specs = [_tool(t) for t in tools]
    names = [n for n, _ in specs]
    if len(set(names)) != len(names):
        raise GrammarError(f"tool names must be unique, got {names}")
    _check_size([p for _, p in specs])
    named = _choice_name(tool_choice)
    if named is not None and named not in names:
        raise GrammarError(f"tool_choice names {named!r}, which is not one of the tools: {', '.join(names)}")
    return specs, named


def tool_grammar(tools: list[dict], fmt: str = "llama3", tool_choice="auto", max_calls: int | None = None) -> str | None:
    """Lark text (llguidance dialect) for calls of `tools` in `fmt` under `tool_choice`; None for "none".
    `max_calls`: at most that many calls (1 for OpenAI's `parallel_tool_calls: false`); None: no limit."""
    if fmt not in FORMATS:
        raise GrammarError(f"unknown tool format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if tool_choice == "none":
        return None
    if max_calls is not None and max_calls < 1:
        raise GrammarError(f"max_calls must be >= 1, got {max_calls}")
    specs, named = _tool_specs(tools, tool_choice)
    key = "parameters" if fmt == "llama3" else "arguments"
    rules = []
    for i, (name, params) in enumerate(specs):
        if named is not None and name != named:
            continue
        opening = _lit(f'{{"name": {json.dumps(name, ensure_ascii=False)}, "{key}": ')
        rules.append(f"call_{i}: {opening} args_{i} \"}}\"\nargs_{i}: {_json(params, closed=True)}")
    alts = " | ".join(r.split(":", 1)[0] for r in rules if r.startswith("call_"))
    lines = [f"call: {alts}"] + rules
    if fmt == "llama3":
        if named is not None:
            start = "start: call"
        else:
            lines.append(f'calls: {_repeat("call", "sep?", max_calls)}\nsep: "; " | ";" | "\\n"')
            start = "start: calls" if tool_choice == "required" else "start: calls | TEXT\nTEXT: /[^{\\[](.|\\n)*/"
    else:
        if named is not None:
            start = 'start: "[" call "]"'
        else:
            empty = ' | "[]"' if tool_choice == "auto" else ""
            body = _repeat("call", '", "', max_calls)
            start = f'start: "[" {body} "]"{empty}'
    return "\n".join([start] + lines) + "\n"


def la_calls_schema(tools: list[dict], tool_choice="auto") -> dict:
    """The JSON schema of a CoALM-IT LA answer (a list of {"name", "arguments"} calls of `tools`): what
    `tool_grammar(tools, "la", tool_choice)` admits, as a schema an OpenAI-compatible endpoint takes in
    `response_format` (for servers that constrain by schema only, e.g. `coalm.eval --base-url --constrained on`)."""
    if tool_choice == "none":
        raise GrammarError("tool_choice 'none' has no call list to constrain")
    specs, named = _tool_specs(tools, tool_choice)
    if any('"$ref"' in json.dumps(p) for _, p in specs):  # root-relative refs would dangle inside the list schema
        raise GrammarError("a tool schema with $ref cannot be nested in a call-list schema")
    calls = [{"type": "object", "properties": {"name": {"const": name}, "arguments": close_objects(params)},
              "required": ["name", "arguments"], "additionalProperties": False}
             for name, params in specs if named is None or name == named]
    schema = {"type": "array", "items": calls[0] if len(calls) == 1 else {"anyOf": calls}}
    if named is not None:
        schema.update(minItems=1, maxItems=1)
    elif tool_choice == "required":
        schema["minItems"] = 1
    return schema


def json_grammar(schema=None, strict: bool = False, prefix: str = "") -> str:
    """Lark text for one JSON value: any object when `schema` is None (json_object), else the schema (closed
    objects when `strict`, as OpenAI's strict mode requires), after the fixed text `prefix` (e.g. "System: ")."""
    if schema is None:
        schema = {"type": "object"}
    check_schema(schema, "response_format schema")
    _check_size([schema])
    return f"start: {_lit(prefix) + ' ' if prefix else ''}{_json(schema, closed=strict)}\n"


def response_format_grammar(response_format: dict | None) -> str | None:
    """The grammar for an OpenAI `response_format` ({"type": "text" | "json_object" | "json_schema", ...})."""
    if not response_format or response_format.get("type", "text") == "text":
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return json_grammar(None)
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            raise GrammarError("response_format json_schema needs {'json_schema': {'name': ..., 'schema': {...}}}")
        return json_grammar(spec["schema"], strict=bool(spec.get("strict")))
    raise GrammarError(f"response_format type must be text, json_object or json_schema, got {kind!r}")


def _check_size(schemas) -> None:
    size = sum(len(json.dumps(s)) for s in schemas)
    if size > MAX_SCHEMA_BYTES:
        raise GrammarError(f"schemas of {size / 1e6:.1f} MB exceed the {MAX_SCHEMA_BYTES / 1e6:.0f} MB limit")
