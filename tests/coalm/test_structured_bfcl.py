"""The grammar never forbids a right answer: every BFCL gold answer of every AST category in the shared data, rendered
as model text in both tool formats, is accepted whole by its item's grammar (engine.structured over the BFCL docs
converted by coalm.eval.bfcl.schemas). Irrelevance items may decline (`[]` in LA, text in Llama 3 JSON)."""

import json
import re

import jsonschema
import pytest

from coalm.eval.bfcl.schemas import function_tool
from coalm.paths import data_root
from engine.structured import GrammarCompiler, close_objects, json_grammar, la_calls_schema, tool_grammar
from engine.tokenizer import load_tokenizer

_OMIT = object()
AST = ["simple", "multiple", "parallel", "parallel_multiple", "java", "javascript", "live_simple", "live_multiple",
       "live_parallel", "live_parallel_multiple"]


def _bfcl():
    d = data_root() / "bfcl"
    if not d.is_dir():
        pytest.skip(f"no BFCL data under {d}")
    return d


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _value(v, schema):
    """A gold value as the model writes it: dicts (and dicts in lists) hold option lists of their own."""
    if isinstance(v, dict):
        props = schema.get("properties", {})
        keys = [k for k in props if k in v] + [k for k in v if k not in props]
        picked = {k: _pick(v[k], props.get(k, {})) for k in keys}
        return {k: x for k, x in picked.items() if x is not _OMIT}
    if isinstance(v, list):
        return [_value(e, schema.get("items", {})) for e in v]
    return v


def _standard(v):
    """BFCL's string comparison: lower case, without spaces and punctuation (the checker's standardize step)."""
    return re.sub(r"[ ,./\\\-_*^]", "", v).lower().replace("'", '"')


def _pick(options, schema):
    """Omitted when "" (BFCL's mark of an omittable argument) is among the options, else the first option."""
    if "" in options or not options:
        return _OMIT
    value = _value(options[0], schema)
    enum = schema.get("enum")
    if isinstance(value, str) and enum and value not in enum:  # the enum value the checker treats as this one
        value = next((e for e in enum if isinstance(e, str) and _standard(e) == _standard(value)), value)
    if "string" in schema.get("type", "") and not isinstance(value, str):  # Java/JS: source text in a string
        value = json.dumps(value)
    return value


def gold_calls(answer: list[dict], tools: dict) -> list[dict]:
    calls = []
    for call in answer:
        (name, args), = call.items()
        schema = tools[name]["function"]["parameters"]
        calls.append({"name": name, "arguments": _value(args, schema)})
    return calls


def render(calls, fmt):
    if fmt == "la":
        return json.dumps(calls, ensure_ascii=False)
    return "".join(json.dumps({"name": c["name"], "parameters": c["arguments"]}, ensure_ascii=False) for c in calls)


@pytest.fixture(scope="module")
def compilers():
    return {"la": GrammarCompiler(load_tokenizer("debug")), "llama3": GrammarCompiler(load_tokenizer("llama3"))}


def _accepts(compiler, grammar, text) -> bool:
    m = compiler.matcher(grammar)
    ids = compiler.tokenizer.encode(text)
    return m.ll.try_consume_tokens(ids) == len(ids) and m.ll.is_accepting()


@pytest.mark.parametrize("category", AST)
def test_gold_answers_accepted(compilers, category):
    """A gold answer is accepted exactly when `jsonschema` finds its arguments valid for the tool's (closed) schema.
    The few gold answers that contradict their own docs (an undocumented function or argument, a value outside the
    documented type or enum) are the ones both reject; they are counted and must stay a small minority."""
    d = _bfcl()
    answers = {r["id"]: r["ground_truth"] for r in _rows(d / "possible_answer" / f"BFCL_v3_{category}.json")}
    wrong, off_docs, rows = [], [], _rows(d / f"BFCL_v3_{category}.json")
    for row in rows:
        tools = {f["name"]: function_tool(f, category) for f in row["function"]}
        gold = answers[row["id"]]
        if any(name not in tools for call in gold for name in call):
            off_docs.append(row["id"])
            continue
        calls = gold_calls(gold, tools)
        valid = all(jsonschema.Draft202012Validator(close_objects(tools[c["name"]]["function"]["parameters"]))
                    .is_valid(c["arguments"]) for c in calls)
        if not valid:
            off_docs.append(row["id"])
        for fmt, compiler in compilers.items():
            text = render(calls, fmt)
            if _accepts(compiler, tool_grammar(list(tools.values()), fmt, "auto"), text) != valid:
                wrong.append((row["id"], fmt, valid, text[:300]))
        # what `coalm.eval --base-url --constrained on` sends instead (response_format): the same answers, by jsonschema
        # and by the grammar a server builds from it
        schema = la_calls_schema(list(tools.values()), "auto")
        if jsonschema.Draft202012Validator(schema).is_valid(calls) != valid:
            wrong.append((row["id"], "la_calls_schema", valid, render(calls, "la")[:300]))
        if _accepts(compilers["la"], json_grammar(schema, strict=True), render(calls, "la")) != valid:
            wrong.append((row["id"], "response_format", valid, render(calls, "la")[:300]))
    assert not wrong, f"{len(wrong)} gold answers where the grammar and jsonschema disagree, e.g. {wrong[:3]}"
    assert len(off_docs) <= 0.05 * len(rows), f"{len(off_docs)} of {len(rows)} gold answers off their docs: {off_docs}"


@pytest.mark.parametrize("category", ["irrelevance", "live_irrelevance"])
def test_irrelevance_may_decline(compilers, category):
    for row in _rows(_bfcl() / f"BFCL_v3_{category}.json")[:40]:
        tools = [function_tool(f, category) for f in row["function"]]
        assert _accepts(compilers["la"], tool_grammar(tools, "la", "auto"), "[]"), row["id"]
        assert _accepts(compilers["llama3"], tool_grammar(tools, "llama3", "auto"), "No tool fits."), row["id"]
        assert not _accepts(compilers["la"], tool_grammar(tools, "la", "required"), "[]"), row["id"]
        assert jsonschema.Draft202012Validator(la_calls_schema(tools, "auto")).is_valid([]), row["id"]
        assert not jsonschema.Draft202012Validator(la_calls_schema(tools, "required")).is_valid([]), row["id"]
