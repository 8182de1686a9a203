"""BFCL V3 (Berkeley Function Calling Leaderboard), single-turn categories, scored by the official AST rules.

    python -m coalm.eval --bench bfcl --responses result.jsonl [--category non_live,live_relevance]
    python -m coalm.eval --bench bfcl --model smollm2-135m --category simple --limit 20

Prompting is the leaderboard's prompt mode for Llama-family models (bfcl-eval 2025.6.8, `LlamaHandler`): the
default system prompt with the function docs inserted as the pipeline does it (`str()` of the list of docs, after the
language hints; Java/JavaScript parameter types are rewritten to "string" with a note), the item's own system
message appended after it, then the user turn. Scoring follows that release's AST checker, re-implemented here from
its documented behaviour:

- decoding: strip backticks/newlines/spaces, add a missing "[" or "]", then Python `ast` (keyword arguments only)
  or, for Java/JavaScript, a tree-sitter parse of the text between the brackets (first call only); output that does
  not decode is "ast_decoder:decoder_failed". Model output is parsed, never evaluated: the official decoder `eval`s
  binary operations, here only literal arithmetic is folded and anything else fails to decode as `eval` would.
- checkers: simple (exactly one call), multiple (one call of the expected function), parallel / parallel_multiple
  (same number of calls, matched to the answers in any order, greedily as upstream); required, unexpected and
  missing-but-not-optional parameters (`""` among the accepted values marks a parameter as optional); type checks
  (int accepted for float, tuple as list, one level of nested list types, a value of the answer's type is taken as
  a variable name); strings compared after standardisation (lower case; spaces and ,./-_*^ removed; ' -> "); dicts
  and lists of dicts key by key; Java/JavaScript values converted from source text by the official converters' rules.
- relevance: irrelevance categories are correct when the output does not decode to a non-empty call list,
  live_relevance when it does (decoded as Python).

Faithful quirks worth knowing (they are upstream behaviour, kept so numbers match the leaderboard): a Java
`new String[]{"a"}` keeps the quotes on its elements, an `ArrayList` of `any` keeps element source text, and a
`new HashMap<..>() {{ put(..); }}` decodes to an empty map (the parser drops anonymous class bodies), so items
expecting those values cannot be passed by well-formed Java; a unary operator on a literal negates it.

Aggregation follows the V3 leaderboard: Non-Live simple = mean of python simple, java, javascript; Non-Live AST =
mean of simple, multiple, parallel, parallel_multiple; Non-Live overall adds irrelevance (unweighted); Live AST and
Live overall are weighted by category size (here the full V3 sizes, so a subsampled category keeps its real weight);
irrelevance = mean of irrelevance and live_irrelevance; relevance = live_relevance. Every mean is over the
categories present. Multi-turn categories need the executable API backends and are reported as not supported; the
leaderboard's Overall averages Multi-Turn in, so `overall_single_turn` here (mean of Non-Live and Live overall) is
not the leaderboard's Overall column.
"""

from __future__ import annotations

import ast
import copy
import json
import operator
import re
from pathlib import Path

from coalm.eval.base import EvalError, benchmark_dir

RESPONSES_SUFFIX = ".jsonl"

# Full V3 category sizes (rows in bfcl-eval 2025.6.8); the live weights and the "subset" note use them.
FULL_V3_SIZES = {
    "simple": 400, "multiple": 200, "parallel": 200, "parallel_multiple": 200, "java": 100, "javascript": 50,
    "irrelevance": 240, "live_simple": 258, "live_multiple": 1053, "live_parallel": 16,
    "live_parallel_multiple": 24, "live_irrelevance": 882, "live_relevance": 18,
}
SINGLE_TURN = tuple(FULL_V3_SIZES)
MULTI_TURN = ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context")
GROUPS = {
    "all": SINGLE_TURN + MULTI_TURN,
    "single_turn": SINGLE_TURN,
    "ast": SINGLE_TURN,
    "non_live": ("simple", "irrelevance", "parallel", "multiple", "parallel_multiple", "java", "javascript"),
    "live": ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple", "live_irrelevance",
             "live_relevance"),
    "python": tuple(c for c in SINGLE_TURN if c not in ("java", "javascript")),
    "non_python": ("java", "javascript"),
    "multi_turn": MULTI_TURN,
}
RELEVANCE = ("irrelevance", "live_irrelevance", "live_relevance")

_PROMPT = (
    "You are an expert in composing functions. You are given a question and a set of possible functions. Based on "
    "the question, you will need to make one or more function/tool calls to achieve the purpose.\n"
    "If none of the functions can be used, point it out. If the given question lacks the parameters required by the "
    "function, also point it out.\nYou should only return the function calls in your response.\n\n"
    "If you decide to invoke any of the function(s), you MUST put it in the format of [func_name1(params_name1="
    "params_value1, params_name2=params_value2...), func_name2(params)]\n"
    "You SHOULD NOT include any other text in the response.\n\n"
    "At each turn, you should try your best to complete the tasks requested by the user within the current turn. "
    "Continue to output functions to call until you have fulfilled the user's request to the best of your ability. "
    "Once you have no more functions to call, the system will consider the current turn complete and proceed to the "
    "next turn or task.\n\nHere is a list of functions in JSON format that you can invoke.\n{functions}\n\n"
)


def add_arguments(parser):
    parser.add_argument("--category", default="all",
                        help=f"BFCL categories or groups, comma-separated: {', '.join(GROUPS)}, {', '.join(SINGLE_TURN)}")
    parser.add_argument("--per-category-limit", type=int, default=None, help="keep the first N items of each category")


def parse_categories(spec: str) -> tuple[list[str], list[str]]:
    """'non_live,live_relevance' -> (single-turn categories in canonical order, multi-turn ones asked for)."""
    wanted = set()
    for name in (s.strip() for s in spec.split(",") if s.strip()):
        if name in GROUPS:
            wanted.update(GROUPS[name])
        elif name in SINGLE_TURN or name in MULTI_TURN:
            wanted.add(name)
        else:
            raise EvalError(f"unknown BFCL category {name!r}; choose from groups {', '.join(GROUPS)} "
                            f"or categories {', '.join(SINGLE_TURN + MULTI_TURN)}")
    return [c for c in SINGLE_TURN if c in wanted], [c for c in MULTI_TURN if c in wanted]


# ---------------------------------------------------------------- loading and prompts

def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise EvalError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(rows[-1], dict) or "id" not in rows[-1]:
                raise EvalError(f"{path}:{lineno}: expected a JSON object with an 'id'")
    return rows


def _unique_ids(ids: list[str]) -> list[str]:
    """Rows sharing an id (live_relevance_3-3-0 appears twice) become id, id#2, ... in file order."""
    seen: dict[str, int] = {}
    out = []
    for i in ids:
        seen[i] = seen.get(i, 0) + 1
        out.append(i if seen[i] == 1 else f"{i}#{seen[i]}")
    return out


def _language_docs(functions: list[dict], category: str) -> list[dict]:
    """The docs as the prompt shows them: a language hint on every function; Java/JS types become 'string'."""
    functions = copy.deepcopy(functions)
    lang = {"java": "Java 8 SDK", "javascript": "JavaScript"}.get(category, "Python 3")
    for fn in functions:
        fn["description"] = fn.get("description", "") + f" Note that the provided function is in {lang} syntax."
        if category not in ("java", "javascript"):
            continue
        name = "Java" if category == "java" else "JavaScript"
        for p in fn["parameters"]["properties"].values():
            t = p.get("type")
            desc = p.get("description", "")
            if t == "any":
                desc += f" This parameter can be of any type of {name} object in string representation."
            else:
                desc += f" This is {name} {t} type parameter in string representation."
            if (category == "java" and t in ("ArrayList", "Array")) or (category == "javascript" and t == "array"):
                desc += f" The list elements are of type {p['items']['type']}; they are not in string representation."
                del p["items"]
            if category == "javascript" and t == "dict" and "properties" in p:
                desc += (" The dictionary entries have the following schema; they are not in string representation. "
                         + json.dumps(p.pop("properties")))
            p["description"] = desc
            p["type"] = "string"
    return functions


def build_messages(question: list[dict], functions: list[dict], category: str) -> list[dict]:
    system = _PROMPT.format(functions=str(_language_docs(functions, category)))
    msgs = [dict(m) for m in question]
    if msgs and msgs[0]["role"] == "system":
        msgs[0]["content"] = system + "\n\n" + msgs[0]["content"]
    else:
        msgs.insert(0, {"role": "system", "content": system})
    return msgs


def load_examples(data_root, args=None) -> list[dict]:
    root = benchmark_dir(data_root, "bfcl")
    cats, multi = parse_categories(getattr(args, "category", None) or "all")
    if not cats:
        raise EvalError(f"multi-turn categories ({', '.join(multi)}) need the executable API backends of bfcl-eval "
                        "and are not supported; pick single-turn categories")
    per_cat = getattr(args, "per_category_limit", None)
    examples = []
    for cat in cats:
        path = root / f"BFCL_v3_{cat}.json"
        if not path.is_file():
            raise EvalError(f"missing BFCL file {path}")
        rows = _read_jsonl(path)[:per_cat] if per_cat else _read_jsonl(path)
        answers = {}
        if cat not in RELEVANCE:
            ans_path = root / "possible_answer" / f"BFCL_v3_{cat}.json"
            if not ans_path.is_file():
                raise EvalError(f"missing BFCL possible answers {ans_path}")
            answers = {r["id"]: r["ground_truth"] for r in _read_jsonl(ans_path)}
        for uid, row in zip(_unique_ids([r["id"] for r in rows]), rows):
            if cat not in RELEVANCE and row["id"] not in answers:
                raise EvalError(f"{path}: item {row['id']} has no possible answer in {root / 'possible_answer'}")
            examples.append({
                "id": uid, "category": cat, "functions": row["function"], "answer": answers.get(row["id"]),
                "messages": build_messages(row["question"][0], row["function"], cat),
            })
    return examples


# ---------------------------------------------------------------- saved responses (BFCL result JSONL)

def read_responses(path) -> dict:
    """BFCL result JSONL `{"id", "result", ...}`, or a directory of official `BFCL_v3_<cat>_result.json` files."""
    path = Path(path)
    files = sorted(path.glob("**/BFCL_v3_*_result.json")) if path.is_dir() else [path]
    if not files:
        raise EvalError(f"no BFCL_v3_*_result.json files under {path}")
    out = {}
    for f in files:
        rows = _read_jsonl(f)
        for lineno, row in enumerate(rows, 1):
            if "result" not in row:
                raise EvalError(f"{f}: row {lineno} (id {row['id']}) has no 'result'")
        out.update({uid: row["result"] for uid, row in zip(_unique_ids([r["id"] for r in rows]), rows)})
    return out


def responses_from_texts(examples, texts) -> dict:
    return {ex["id"]: text for ex, text in zip(examples, texts)}


def write_responses(path, examples, responses) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            if ex["id"] in responses:
                f.write(json.dumps({"id": ex["id"].split("#")[0], "result": responses[ex["id"]]},
                                   ensure_ascii=False) + "\n")
    return path


# ---------------------------------------------------------------- decoding model output

class DecodeError(Exception):
    pass


_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNOPS = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_, ast.Invert: operator.invert}


def _fold(node):
    """Literal arithmetic, standing in for the official decoder's `eval` of a BinOp (names fail, as they do there)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_fold(e) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNOPS:
        return _UNOPS[type(node.op)](_fold(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _fold(node.left), _fold(node.right)
        # Bound the work a hostile output can ask for (huge powers, huge repeated strings).
        if isinstance(node.op, ast.Pow) and isinstance(a, int) and isinstance(b, int) \
                and abs(b) * max(1, abs(a).bit_length()) > 100_000:
            raise DecodeError("power too large")
        if isinstance(node.op, ast.Mult) and any(isinstance(x, (str, list, tuple)) for x in (a, b)) \
                and any(isinstance(x, int) and x > 100_000 for x in (a, b)):
            raise DecodeError("repetition too large")
        return _BINOPS[type(node.op)](a, b)
    raise DecodeError(f"cannot evaluate {type(node).__name__} in a binary operation")


def _py_value(node):
    if isinstance(node, ast.Constant):
        return "..." if node.value is Ellipsis else node.value
    if isinstance(node, ast.UnaryOp):
        # Upstream negates the literal operand whatever the operator; kept for identical verdicts.
        if not isinstance(node.operand, ast.Constant):
            raise DecodeError("unary operator on a non-literal")
        return -node.operand.value
    if isinstance(node, ast.List):
        return [_py_value(v) for v in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_py_value(v) for v in node.elts)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise DecodeError("dict unpacking is not a value")
        return {_py_value(k): _py_value(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.BinOp):
        return _fold(node)
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Call):
        return _py_call(node) if node.keywords else ast.unparse(node)
    if isinstance(node, ast.Subscript):
        return ast.unparse(node.value) + "[" + ast.unparse(node.slice) + "]"
    raise DecodeError(f"unsupported AST type {type(node).__name__}")


def _py_call(node: ast.Call) -> dict:
    parts = []
    func = node.func
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return {".".join(reversed(parts)): {kw.arg: _py_value(kw.value) for kw in node.keywords}}


def _decode_python(text: str) -> list:
    tree = ast.parse(text.strip("[]'"), mode="eval")
    if isinstance(tree.body, ast.Call):
        return [_py_call(tree.body)]
    if not isinstance(tree.body, (ast.List, ast.Tuple, ast.Set)):
        raise DecodeError("output is not a call or a list of calls")
    calls = []
    for elt in tree.body.elts:
        if not isinstance(elt, ast.Call):
            raise DecodeError("list element is not a call")
        calls.append(_py_call(elt))
    return calls


_TS = {}


def _ts_parse(source: str, lang: str):
    if lang not in _TS:
        from tree_sitter import Language, Parser

        if lang == "java":
            import tree_sitter_java as mod
        else:
            import tree_sitter_javascript as mod
        _TS[lang] = Parser(Language(mod.language()))
    src = source.encode("utf-8")
    root = _TS[lang].parse(src).root_node
    # Upstream rejects ERROR nodes only; MISSING tokens (the ';' a bare call lacks) are fine.
    stack = [root]
    while stack:
        n = stack.pop()
        if n.is_error:
            raise DecodeError(f"{lang} parse error")
        if n.has_error:
            stack.extend(n.children)
    return src, root


def _decode_java(text: str):
    src, root = _ts_parse(text[1:-1], "java")

    def txt(n):
        return src[n.start_byte:n.end_byte].decode("utf-8")

    def value(n, nested=False):
        if n.type in ("string_literal", "character_literal"):
            return txt(n) if nested else txt(n)[1:-1]
        if n.type in ("identifier", "class_literal", "type_identifier", "method_invocation"):
            return txt(n)
        if n.type == "array_creation_expression":
            typ, init = n.child_by_field_name("type"), n.child_by_field_name("value")
            if init is None:
                raise DecodeError("array creation without initializer")
            return f"new {value(typ, True)}[]{value(init, True)}"
        if n.type == "object_creation_expression":
            # Only type and constructor arguments: an anonymous class body ({{ put(..); }}) is dropped, as upstream.
            typ, args = n.child_by_field_name("type"), n.child_by_field_name("arguments")
            inner = ", ".join(value(c, True) for c in args.children if c.type not in (",", "(", ")")) if args else ""
            return f"new {value(typ, True)}({inner})"
        if n.child_count:
            return "".join(value(c, True) for c in n.children)
        return txt(n)

    stack = [root]
    while stack:
        n = stack.pop()
        if n.type == "method_invocation":
            name = txt(n.child_by_field_name("name"))
            obj = n.child_by_field_name("object")
            if obj is not None:
                name = f"{txt(obj)}.{name}"
            params = {}
            for c in n.child_by_field_name("arguments").children:
                if c.type == "assignment_expression":
                    key, val = txt(c.children[0]), value(c.children[2])
                elif c.type in ("identifier", "class_literal"):
                    key, val = None, value(c)
                else:
                    continue
                if key in params:
                    raise DecodeError("multiple arguments with the same name")
                params[key] = val
            return [{name: params}]
        stack.extend(reversed(n.children))  # pre-order: the first call in the text wins
    return {}


def _decode_js(text: str):
    src, root = _ts_parse(text[1:-1], "javascript")

    def txt(n):
        return src[n.start_byte:n.end_byte].decode("utf-8")

    for stmt in root.children:
        if stmt.type != "expression_statement":
            continue
        for call in stmt.children:
            if call.type != "call_expression":
                continue
            params = {}
            for c in call.children[1].children:
                if c.type == "assignment_expression":
                    key, val = txt(c.children[0]), txt(c.children[2])
                    if _quoted(val):
                        val = val[1:-1]
                elif c.type in ("identifier", "true"):
                    key, val = None, txt(c)
                else:
                    continue
                if key in params:
                    raise DecodeError("multiple arguments with the same name")
                params[key] = val
            return [{txt(call.children[0]): params}]
    return None


def decode_ast(result, language: str = "Python"):
    """Model text -> [{function name: {param: value}}]; raises on output that does not decode."""
    if not isinstance(result, str):
        raise DecodeError(f"result is a {type(result).__name__}, not a string")
    text = result.strip("`\n ")
    if not text.startswith("["):
        text = "[" + text
    if not text.endswith("]"):
        text = text + "]"
    if language == "Java":
        return _decode_java(text)
    if language == "JavaScript":
        return _decode_js(text)
    return _decode_python(text)


def is_call_list(decoded) -> bool:
    return isinstance(decoded, list) and all(
        isinstance(c, dict) and len(c) == 1 and isinstance(next(iter(c.values())), dict) for c in decoded)


def _no_call(decoded) -> bool:
    return not is_call_list(decoded) or len(decoded) == 0 or (len(decoded) == 1 and len(decoded[0]) == 0)


# ---------------------------------------------------------------- Java / JavaScript value conversion

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


# ---------------------------------------------------------------- the AST checker

_PY_TYPES = {"string": str, "integer": int, "float": float, "boolean": bool, "array": list, "tuple": list,
             "dict": dict, "any": str}
_JAVA_TYPES = {"byte": int, "short": int, "integer": int, "float": float, "double": float, "long": int,
               "boolean": bool, "char": str, "Array": list, "ArrayList": list, "Set": set, "HashMap": dict,
               "Hashtable": dict, "Queue": list, "Stack": list, "String": str, "any": str}
_JS_TYPES = {"String": str, "integer": int, "float": float, "Bigint": int, "Boolean": bool, "dict": dict,
             "array": list, "any": str}


def _fail(error_type: str, error: str) -> dict:
    return {"valid": False, "error": error, "error_type": error_type}


_OK = {"valid": True, "error": None, "error_type": None}


def standardize(s: str) -> str:
    return re.sub(r"[ ,./\-_*^]", "", s).lower().replace("'", '"')


def _answer_type(accepted: list):
    return next((type(a) for a in accepted if a != ""), None)


def _type_check(param, value, accepted, expected, nested) -> tuple[dict, bool]:
    """-> (verdict, is_variable). A value of the answer's type (when that is not the declared one) is a variable."""
    ans_type = _answer_type(accepted)
    is_variable = ans_type is not None and ans_type != expected
    if type(value) is expected:
        if nested is None:
            return _OK, is_variable
        for item in accepted:
            if not isinstance(item, list) or all(_type_check(param, v, item, nested, None)[0]["valid"] for v in value):
                return _OK, is_variable
        if ans_type is not None and type(value) is ans_type:
            return _fail("type_error:nested", f"nested type check failed for {param!r}: {value!r}"), True
    elif ans_type is not None and type(value) is ans_type:
        return _OK, True
    return _fail("type_error:simple", f"incorrect type for {param!r}: expected {expected.__name__}, "
                                      f"got {type(value).__name__} ({value!r})"), is_variable


def _std_seq(seq):
    return [standardize(x) if isinstance(x, str) else x for x in seq]


def _check_string(param, value, accepted):
    if standardize(value) not in [standardize(a) for a in accepted if isinstance(a, str)]:
        return _fail("value_error:string", f"invalid value for {param!r}: {value!r}; expected one of {accepted}")
    return _OK


def _check_list(param, value, accepted):
    options = [_std_seq(a) for a in accepted if isinstance(a, (list, str))]
    if _std_seq(list(value)) not in options:
        return _fail("value_error:list/tuple", f"invalid value for {param!r}: {value!r}; expected one of {accepted}")
    return _OK


def _seq(accepted):
    # Accepted values are lists; a few Java answers give a bare string (kept: upstream then tests substrings/chars).
    return accepted if isinstance(accepted, (list, str)) else [accepted]


def _check_dict(param, value, accepted):
    result = _fail("dict_checker:unclear", f"no accepted dict for {param!r}")
    for option in accepted:
        if option == "" or not isinstance(option, dict):
            continue
        result = _OK
        for key, v in value.items():
            if key not in option:
                result = _fail("value_error:dict_key", f"unexpected dict key {key!r} in {param!r}")
                break
            if (standardize(v) if isinstance(v, str) else v) not in _std_seq(_seq(option[key])):
                result = _fail("value_error:dict_value", f"invalid value for {key!r} in {param!r}: {v!r}; "
                                                         f"expected one of {option[key]}")
                break
        for key, v in option.items():
            if key not in value and "" not in _seq(v):
                result = _fail("value_error:dict_key", f"missing dict key {key!r} in {param!r}")
                break
        if result["valid"]:
            return _OK
    return result


def _check_list_of_dicts(param, value, accepted):
    result = _fail("list_dict_checker:unclear", f"no accepted list of dicts for {param!r}")
    for option in accepted:
        if len(value) != len(option):
            result = _fail("value_error:list_dict_count", f"wrong number of dicts in {param!r}")
            continue
        for v, o in zip(value, option):
            result = (_check_dict(param, v, [o]) if isinstance(v, dict)
                      else _fail("value_error:dict_value", f"{param!r} holds a non-dict {v!r}"))
            if not result["valid"]:
                break
        else:
            return _OK
    return result


def check_call(doc: dict, call: dict, answer: dict, language: str) -> dict:
    """One decoded call against one possible answer {name: {param: [accepted values]}} of the function `doc`."""
    accepted_params = next(iter(answer.values()))
    name = doc["name"]
    props = doc["parameters"]["properties"]
    if name not in call:
        return _fail("simple_function_checker:wrong_func_name", f"function {name!r} not found in the output")
    args = call[name]
    for p in doc["parameters"].get("required", []):
        if p not in args:
            return _fail("simple_function_checker:missing_required", f"missing required parameter {p!r}")
    for p, value in args.items():
        if p not in props or p not in accepted_params:
            return _fail("simple_function_checker:unexpected_param", f"unexpected parameter {p!r}")
        typ = props[p].get("type")
        item_type = props[p].get("items", {}).get("type")
        accepted = accepted_params[p]
        nested = None
        if language in ("Java", "JavaScript"):
            table, convert = (_JAVA_TYPES, java_value) if language == "Java" else (_JS_TYPES, js_value)
            if typ not in table:
                return _fail("type_error:unknown", f"{language} type {typ!r} of {p!r} is not supported")
            expected = table[typ]
            if not isinstance(value, str):
                err = "type_error:java" if language == "Java" else "type_error:js"
                return _fail(err, f"incorrect type for {p!r}: expected String, got {type(value).__name__}")
            if typ in ("Array", "ArrayList", "array"):
                nested = table.get(item_type)
                value = convert(value, typ, item_type)
            else:
                value = convert(value, typ)
        else:
            expected = _PY_TYPES.get(typ)
            if expected is None:
                return _fail("type_error:unknown", f"type {typ!r} of {p!r} is not supported")
            if typ in ("array", "tuple"):
                nested = _PY_TYPES.get(item_type)
        if typ == "tuple" and isinstance(value, tuple):
            value = list(value)  # answers went through JSON, where tuples become lists
        if language == "Python" and typ == "float" and type(value) is int:
            value = float(value)
        verdict, is_variable = _type_check(p, value, accepted, expected, nested)
        if not verdict["valid"]:
            return verdict
        if not is_variable:
            if expected is dict:
                verdict = _check_dict(p, value, accepted)
            elif expected is list and nested is dict:
                verdict = _check_list_of_dicts(p, value, accepted)
            elif expected is str:
                verdict = _check_string(p, value, accepted)
            elif expected is list:
                verdict = _check_list(p, value, accepted)
            else:
                verdict = None
            if verdict is not None:
                if not verdict["valid"]:
                    return verdict
                continue
        if value not in accepted:
            return _fail("value_error:others", f"invalid value for {p!r}: {value!r}; expected one of {accepted}")
    for p, accepted in accepted_params.items():
        if p not in args and "" not in accepted:
            return _fail("simple_function_checker:missing_optional",
                         f"optional parameter {p!r} not provided and not marked as optional")
    return _OK


def _find_doc(functions, name):
    return next((f for f in functions if f["name"] == name), None)


def check_calls(functions: list, calls: list, answers: list, language: str, category: str) -> dict:
    """The per-category checker: simple, multiple, or parallel (order-free greedy matching)."""
    if "parallel" in category:
        if len(calls) != len(answers):
            return _fail("parallel_function_checker_no_order:wrong_count",
                         f"{len(calls)} calls, expected {len(answers)}")
        matched = set()
        for i, answer in enumerate(answers):
            doc = _find_doc(functions, next(iter(answer)))
            found = None
            for j, call in enumerate(calls):
                if j not in matched and doc is not None and check_call(doc, call, answer, language)["valid"]:
                    found = j
                    break
            if found is None:
                return _fail("parallel_function_checker_no_order:cannot_find_match",
                             f"no call in the output matches answer #{i} ({next(iter(answer))})")
            matched.add(found)
        return _OK
    if "multiple" in category:
        if len(calls) != len(answers):
            return _fail("multiple_function_checker:wrong_count", f"{len(calls)} calls, expected {len(answers)}")
        doc = _find_doc(functions, next(iter(answers[0])))
        if doc is None:
            raise EvalError(f"possible answer names {next(iter(answers[0]))!r}, which is not among the functions")
        return check_call(doc, calls[0], answers[0], language)
    if len(calls) != 1:
        return _fail("simple_function_checker:wrong_count", f"{len(calls)} calls, expected 1")
    return check_call(functions[0], calls[0], answers[0], language)


def score_item(example: dict, result) -> dict:
    """-> {"valid", "error", "error_type"} for one example and its raw model output."""
    cat = example["category"]
    if cat in RELEVANCE:
        try:
            called = not _no_call(decode_ast(result, "Python"))
        except Exception:  # noqa: BLE001 - any decoding failure means "no call", as upstream
            called = False
        if cat == "live_relevance":
            return _OK if called else _fail("relevance_error:decoder_failed", "expected a function call, got none")
        return _fail("irrelevance_error:decoder_success", "made a function call where none fits") if called else _OK
    language = {"java": "Java", "javascript": "JavaScript"}.get(cat, "Python")
    try:
        calls = decode_ast(result, language)
    except Exception as e:  # noqa: BLE001 - model output is arbitrary text; every failure is a decoder failure
        return _fail("ast_decoder:decoder_failed", f"invalid syntax, failed to decode: {type(e).__name__}: {e}")
    if not is_call_list(calls):
        return _fail("ast_decoder:decoder_wrong_output_format", "did not output a list of function calls")
    return check_calls(example["functions"], calls, example["answer"], language, cat)


# ---------------------------------------------------------------- aggregation and evaluate()

def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _weighted(acc: dict, weights: dict, cats):
    present = [c for c in cats if c in acc]
    if not present:
        return None
    return sum(acc[c] * weights[c] for c in present) / sum(weights[c] for c in present)


def aggregate(acc: dict[str, float], weights: dict[str, int] | None = None) -> dict:
    """Per-category accuracies -> the V3 leaderboard's section scores, each over the categories present (else None)."""
    weights = weights or FULL_V3_SIZES
    simple = _mean([acc.get(c) for c in ("simple", "java", "javascript")])
    ast_parts = [simple] + [acc.get(c) for c in ("multiple", "parallel", "parallel_multiple")]
    live_ast = ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple")
    non_live_overall = _mean(ast_parts + [acc.get("irrelevance")])
    live_overall = _weighted(acc, weights, live_ast + ("live_irrelevance", "live_relevance"))
    return {
        "non_live_simple": simple,
        "non_live_ast": _mean(ast_parts),
        "non_live_overall": non_live_overall,
        "live_ast": _weighted(acc, weights, live_ast),
        "live_overall": live_overall,
        "irrelevance": _mean([acc.get("irrelevance"), acc.get("live_irrelevance")]),
        "relevance": acc.get("live_relevance"),
        "overall_single_turn": _mean([non_live_overall, live_overall]),
    }


def evaluate(examples, responses) -> dict:
    items, per_cat = [], {}
    for ex in examples:
        stats = per_cat.setdefault(ex["category"], {"correct": 0, "total": 0, "missing_responses": 0})
        stats["total"] += 1
        if ex["id"] not in responses:
            stats["missing_responses"] += 1
            verdict = _fail("missing_response", "no model output for this item")
        else:
            verdict = score_item(ex, responses[ex["id"]])
        stats["correct"] += verdict["valid"]
        items.append({"id": ex["id"], "category": ex["category"],
                      "verdict": "correct" if verdict["valid"] else "incorrect",
                      "error": verdict["error"], "error_type": verdict["error_type"]})
    acc = {c: s["correct"] / s["total"] for c, s in per_cat.items()}
    categories = {c: {"accuracy": acc[c], **per_cat[c], "full_v3_size": FULL_V3_SIZES[c]}
                  for c in SINGLE_TURN if c in per_cat}
    subsets = [f"{c} {s['total']}/{FULL_V3_SIZES[c]}" for c, s in categories.items() if s["total"] < FULL_V3_SIZES[c]]
    notes = ["scores are over the categories present; Live sections are weighted by full V3 category sizes"]
    if subsets:
        notes.append("subsampled categories (scored/full V3): " + ", ".join(subsets)
                     + "; numbers differ slightly from full-set ones")
    absent = [c for c in SINGLE_TURN if c not in per_cat]
    if absent:
        notes.append("single-turn categories not evaluated: " + ", ".join(absent))
    return {
        "summary": {
            "benchmark": "BFCL V3 single-turn (AST)",
            "n_items": len(items),
            "correct": sum(s["correct"] for s in per_cat.values()),
            "missing_responses": sum(s["missing_responses"] for s in per_cat.values()),
            "scores": aggregate(acc),
            "categories": categories,
            "multi_turn": "not supported (" + ", ".join(MULTI_TURN) + " need bfcl-eval's executable API backends)",
            "notes": notes,
        },
        "items": items,
    }
