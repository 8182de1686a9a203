"""BFCL function docs -> standard JSON Schema, for grammar-constrained decoding (`coalm.eval --constrained`).

BFCL writes parameter types in its own vocabulary ("dict", "float", "tuple", "any"; Java and JavaScript type names).
The mapping follows BFCL's documented conversion to OpenAPI types (dict -> object, float -> number, tuple -> array),
except that "any" (and a type BFCL does not list) puts no constraint on the value, so a grammar never forbids a value
the checker accepts. Java and JavaScript parameters are strings, as the prompts present them (`_language_docs`).
"""

from __future__ import annotations

_TYPES = {"dict": "object", "object": "object", "float": "number", "double": "number", "number": "number",
          "integer": "integer", "int": "integer", "long": "integer", "short": "integer", "byte": "integer",
          "Bigint": "integer", "string": "string", "String": "string", "char": "string", "boolean": "boolean",
          "bool": "boolean", "Boolean": "boolean", "array": "array", "list": "array", "tuple": "array",
          "ArrayList": "array", "Array": "array", "HashMap": "object"}


def to_json_schema(schema: dict) -> dict:
    """One BFCL parameter schema (recursively) as JSON Schema."""
    out = {k: v for k, v in schema.items() if k not in ("type", "properties", "items", "optional", "default")}
    t = _TYPES.get(schema.get("type"))
    if t:  # a documented default of null (live categories) makes null a value the checker accepts
        out["type"] = [t, "null"] if "default" in schema and schema["default"] is None else t
    if "enum" in out and "default" in schema and schema["default"] not in out["enum"]:
        out["enum"] = out["enum"] + [schema["default"]]  # a documented default is a value the checker accepts
    if isinstance(schema.get("properties"), dict) and t == "object":
        out["properties"] = {k: to_json_schema(v) for k, v in schema["properties"].items() if isinstance(v, dict)}
    if isinstance(schema.get("items"), dict) and t == "array":
        out["items"] = to_json_schema(schema["items"])
        if "enum" in out and "enum" not in out["items"]:  # BFCL docs put the item enum on the array itself
            out["items"]["enum"] = out.pop("enum")
    return out


def function_tool(fn: dict, category: str) -> dict:
    """A BFCL function doc as an OpenAI tool (`{"type": "function", "function": {name, description, parameters}}`)."""
    params = fn.get("parameters") or {}
    if category in ("java", "javascript"):  # arguments are source text in strings, as the prompt says
        props = {k: {"type": "string"} for k in params.get("properties", {})}
        schema = {"type": "object", "properties": props, "required": list(params.get("required", []))}
    else:
        schema = to_json_schema({**params, "type": "dict"})
    return {"type": "function", "function": {"name": fn["name"], "description": fn.get("description", ""),
                                             "parameters": schema}}
