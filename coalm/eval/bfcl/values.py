"""Java / JavaScript source text -> Python values, by the rules of bfcl-eval's type converters."""

from __future__ import annotations

import re

_JS_TYPES = {"String": str, "integer": int, "float": float, "Bigint": int, "Boolean": bool, "dict": dict,
             "array": list, "any": str}

_INT = r"-?\d+"
_JAVA_FLOAT = r"-?\d+(\.\d+)?([eE][+-]?\d+)?"


def _java_literal(s: str):
    """An element whose type is not declared: bool, "string", 1L, 1.5f, int, float, else the text."""
    if s in ("true", "false"):
        return s == "true"
    if _quoted(s, '"'):
        return s[1:-1]
    if re.match(_INT + r"[lL]$", s):
        return int(s[:-1])
    if re.match(_JAVA_FLOAT + r"[fF]$", s):
        return float(s[:-1])
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    return s


def _java_elements(body: str, nested, strip_quotes: bool) -> list:
    out = []
    for e in (x.strip() for x in body):
        if strip_quotes and nested in ("char", "String"):
            out.append(e[1:-1])
        else:
            out.append(java_value(e, nested) if nested else _java_literal(e))
    return out


def java_value(s: str, typ: str, nested=None):
    """Java source text -> Python value for a declared Java type; text that does not fit stays a string."""
    if typ in ("byte", "short", "integer"):
        return int(s) if re.match(_INT + "$", s) else s
    if typ == "float":
        return float(s[:-1]) if re.match(_JAVA_FLOAT + "[fF]$", s) else s
    if typ == "double":
        return float(s) if re.match(_JAVA_FLOAT + "$", s) else s
    if typ == "long":
        return int(s[:-1]) if re.match(_INT + "[lL]$", s) else s
    if typ == "boolean":
        return s == "true" if s in ("true", "false") else s
    if typ == "ArrayList":
        m = re.search(r"new\s+ArrayList<\w*>\(Arrays\.asList\((.+?)\)\)", s)
        if m:
            return _java_elements(m.group(1).split(","), nested, strip_quotes=True)
        m = re.search(r"new\s+ArrayList<\w*>\(\)\s*\{\{\s*(.+?)\s*\}\}", s, re.DOTALL)
        if m:
            return _java_elements(re.findall(r"add\((.+?)\)", m.group(1)), nested, strip_quotes=True)
        return [] if re.search(r"new\s+ArrayList<\w*>\(\)", s) else s
    if typ == "Array":
        m = re.search(r"new\s+\w+\[\]\s*\{(.*?)\}", s)
        if not m:
            return s
        # Unlike ArrayList, String elements keep their quotes here (upstream behaviour).
        return _java_elements([x for x in m.group(1).split(",") if x.strip()], nested, strip_quotes=False)
    if typ == "HashMap":
        m = re.search(r"new\s+HashMap<.*?>\s*\(\)\s*\{\s*\{?\s*(.*?)\s*\}?\s*\}", s, re.DOTALL)
        if m:
            return {k: _java_literal(v.strip()) for k, v in re.findall(r"put\(\"(.*?)\",\s*(.*?)\)", m.group(1))}
        return {} if re.search(r"new\s+HashMap<.*?>\s*\(\)", s) else s
    # char never matches upstream's pattern; String/any and the unimplemented collections stay text.
    return s


def _quoted(s: str, quotes: str = "'\"") -> bool:
    # Upstream's test: starts and ends with the same quote character (a lone quote counts, giving "").
    return any(s.startswith(q) and s.endswith(q) for q in quotes)


def _js_literal(s: str):
    s = s.strip()
    if s in ("true", "false"):
        return s == "true"
    if _quoted(s):
        return s[1:-1]
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    return s


def _js_collection(code: str, typ: str, nested=None):
    code = code.strip()
    try:
        if typ == "array":
            m2 = re.match(r"\[\s*\[.*?\]\s*(,\s*\[.*?\]\s*)*\]|\bnew\s+Array\(\s*\[.*?\]\s*(,\s*\[.*?\]\s*)*\)", code)
            if m2:
                rows = []
                for i, inner in enumerate(re.findall(r"\[(.*?)\]", m2.group(0))):
                    inner = inner.strip()
                    if i == 0 and inner.startswith("["):
                        inner = inner[1:]
                    rows.append([_js_literal(e.strip()) for e in inner.split(",")])
                return rows
            m = re.match(r"\[(.*?)\]|\bnew\s+Array\((.*?)\)", code)
            if not m:
                return code
            body = (m.group(1) if m.group(1) is not None else m.group(2) or "").strip()
            elems = [e.strip() for e in body.split(",")] if body else []
            if nested:
                return [js_value(e, nested) for e in elems]
            return [_js_literal(e) for e in elems]
        if code == "{}":
            return {}
        m = re.match(r"\{(.*?)\}", code)
        if not m:
            return code
        out = {}
        for key, val in re.findall(r"([^:]+):\s*(.*?)(?:,\s*(?=[^,]+:)|$)", m.group(1)):
            key, val = key.strip().strip("'\""), val.strip()
            if val.startswith("[") and val.endswith("]"):
                out[key] = _js_collection(val, "array")
            elif val.startswith("{") and val.endswith("}"):
                out[key] = _js_collection(val, "dict")
            else:
                out[key] = _js_literal(val.strip("'\""))
        return out
    except Exception:  # noqa: BLE001 - upstream falls back to the source text on any parse failure
        return code


def js_value(s: str, typ: str, nested=None):
    """JavaScript source text -> Python value for a declared type; text that does not fit stays a string."""
    if typ not in _JS_TYPES:
        raise ValueError(f"unsupported JavaScript type {typ!r}")
    if typ == "String":
        return s[1:-1] if _quoted(s) else s
    if typ == "integer":
        return int(s) if re.match(_INT + "$", s) else s
    if typ == "float":
        return float(s) if re.match(r"-?\d+(\.\d+)?$", s) else s
    if typ == "Bigint":
        return int(s[:-1]) if re.match(_INT + "n$", s) else s
    if typ == "Boolean":
        return s == "true" if s in ("true", "false") else s
    if typ in ("dict", "array"):
        return _js_collection(s, typ, nested)
    return s

