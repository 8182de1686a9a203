"""The synthetic function-calling generator: formats, types, patterns, value copying/conversion, determinism, and
no overlap with the benchmarks (test queries, function names)."""

import json
import re
from collections import Counter

import pytest

from coalm.data import formats as F
from coalm.data import validate_row
from coalm.data.contamination import ContaminationIndex, normalise
from coalm.data.synth import APIS, PATTERNS, generate_la
from coalm.data.synth.generate import DIALECTS
from coalm.data.synth.pools import MONTHS, number_words
from coalm.paths import data_root

ROOT = data_root()
needs_data = pytest.mark.skipif(not (ROOT / "bfcl").is_dir(), reason=f"shared data not at {ROOT}")
ROWS = generate_la(1500, seed=7)
PY = {"integer": int, "int": int, "number": (int, float), "float": (int, float), "boolean": bool, "bool": bool,
      "string": str, "str": str, "array": list, "list": list, "object": dict, "dict": dict}


def _tools(row):
    return {t["name"]: t for t in json.loads(row["instruction"].split("[BEGIN OF AVAILABLE TOOLS]\n")[1]
                                             .split("\n[END OF AVAILABLE TOOLS]")[0])}


def _type_ok(value, schema):
    if "enum" in schema and value not in schema["enum"]:
        return False
    want = PY[schema["type"]]
    if isinstance(value, bool) and want not in (bool,):
        return False  # a bool is an int in Python, never in the schema
    if not isinstance(value, want):
        return False
    if isinstance(value, list):
        return all(_type_ok(v, schema["items"]) for v in value)
    if isinstance(value, dict):
        return value.keys() <= schema["properties"].keys() and all(
            _type_ok(v, schema["properties"][k]) for k, v in value.items())
    return True


def test_rows_are_valid_la_and_calls_fit_their_tools():
    seen_types, seen_py = Counter(), Counter()
    for row in ROWS:
        assert validate_row(row) is None and F.row_format(row) == "la"
        calls = F.parse_calls(row["output"])
        assert calls is not None and row["output"] == F.la_output(calls)
        tools = _tools(row)
        for call in calls:
            params = tools[call["name"]]["parameters"]
            required = {k for k, s in params.items() if "default" not in s}
            assert required <= call["arguments"].keys() <= params.keys(), (row["input"], call)
            for k, v in call["arguments"].items():
                assert _type_ok(v, params[k]), (k, v, params[k])
                seen_types[params[k]["type"]] += 1
                seen_py[type(v).__name__] += 1
        for t in tools.values():
            seen_types.update(s["type"] for s in t["parameters"].values())
    # every type naming (JSON schema, BFCL, Python) and every Python value type occurs
    assert {n for d in DIALECTS for n in d.values()} <= set(seen_types)
    assert {"int", "float", "bool", "str", "list", "dict"} <= set(seen_py)
    kinds = {p.kind for a in APIS for p in a.params}
    assert kinds == {"integer", "number", "boolean", "enum", "string", "array", "object", "date", "datetime", "clock"}
    assert any(p.optional for a in APIS for p in a.params) and len(APIS) >= 50
    assert len({a.domain for a in APIS}) >= 10


def test_patterns_no_call_rows_and_multiple_calls():
    by = Counter(r["meta"]["pattern"] for r in ROWS)
    assert set(by) == set(PATTERNS) and all(n >= 0.08 * len(ROWS) for n in by.values())
    for row in ROWS:
        calls = F.parse_calls(row["output"])
        names = [c["name"] for c in calls]
        pattern = row["meta"]["pattern"]
        if pattern == "none":
            assert calls == [] and row["output"] == "[]"
            # the requested API and every API of its domain are left out of the tool list
            domain = next(a.domain for a in APIS if a.name == row["meta"]["asked"][0])
            assert not any(a.domain == domain for a in APIS if a.name in _tools(row))
        elif pattern == "parallel":
            assert len(names) >= 2 and len(set(names)) == 1
        elif pattern == "multi":
            assert len(set(names)) == len(names) >= 2
        elif pattern == "parallel_multi":  # several functions, one of them called more than once
            assert len(set(names)) >= 2 and len(names) > len(set(names))
        elif pattern == "dialogue":
            assert row["input"].startswith("User: ") and "\nAI: " in row["input"] and len(calls) == 1
            if "\nAPI: [login_user(" in row["input"]:
                token = re.search(r'"token": "(\w+)"', row["input"]).group(1)
                assert calls[0]["arguments"]["token"] == token
        else:
            assert len(calls) == 1


def test_parallel_rows_list_one_parameter_and_share_the_rest():
    """BFCL words parallel questions as one clause with a list ("in Berlin and Paris next Friday"): such rows differ
    in exactly one argument across calls, and the listed values appear in the query joined with "and"."""
    shared = 0
    for row in ROWS:
        if row["meta"]["pattern"] != "parallel":
            continue
        calls = F.parse_calls(row["output"])
        args = [c["arguments"] for c in calls]
        varying = {k for a in args for k in a if any(b.get(k) != a.get(k) for b in args)}
        if len(varying) == 1 and all(a.keys() == args[0].keys() for a in args):
            (k,) = varying
            if " and " in row["input"] and len({json.dumps(a[k]) for a in args}) == len(args):
                shared += 1
    assert shared >= 20


def test_values_are_copied_or_converted_from_the_query():
    converted_words = dates = left_out = 0
    for row in ROWS:
        text = row["input"]
        tools = _tools(row)
        for call in F.parse_calls(row["output"]):
            if "token" in call["arguments"]:
                continue
            api = next(a for a in APIS if a.name == call["name"])
            left_out += sum(1 for p in api.params if p.optional and p.name not in call["arguments"])
            for p in api.params:
                if p.name not in call["arguments"]:
                    continue
                v = call["arguments"][p.name]
                if p.kind in ("string", "enum"):
                    assert v in text, (p.name, v, text)
                elif p.kind == "integer":
                    assert str(v) in text or number_words(abs(v)) in text, (v, text)
                    converted_words += str(v) not in text
                elif p.kind == "number":
                    assert str(v) in text
                elif p.kind == "array":
                    assert all(str(x) in text for x in v)
                elif p.kind == "date":
                    y, m, d = v.split("-")
                    assert v in text or (y in text and MONTHS[int(m) - 1] in text and str(int(d)) in text), (v, text)
                    dates += v not in text
                assert tools[call["name"]]["parameters"][p.name]["description"] == p.desc
    assert converted_words > 20 and dates > 20 and left_out > 100


def test_seeded_and_deterministic():
    assert generate_la(60, seed=3) == generate_la(60, seed=3)
    assert generate_la(60, seed=3) != generate_la(60, seed=4)
    assert generate_la(40, seed=7) == ROWS[:40]
    with pytest.raises(ValueError, match="unknown synthetic pattern"):
        generate_la(5, patterns={"single": 1, "chitchat": 1})


@needs_data
def test_no_benchmark_test_query_or_function_name_in_the_output():
    from coalm.agent.recipe import evaluator_queries

    queries = evaluator_queries(ROOT)
    assert set(queries) == {"bfcl", "api-bank", "multiwoz"}
    index = ContaminationIndex(queries)
    assert index.filter(ROWS) == (ROWS, {})
    # stricter than the 13-gram rule: no whole test query of 8+ words is inside any row (a query inside a row has
    # every one of its 8-grams among the row's)
    grams = set()
    for r in ROWS:
        w = normalise(r["input"] + " " + r["output"])
        grams |= {tuple(w[i:i + 8]) for i in range(len(w) - 7)}
    inside = [q for qs in queries.values() for q in qs if len(normalise(q)) >= 8
              and all(tuple(normalise(q)[i:i + 8]) in grams for i in range(len(normalise(q)) - 7))]
    assert inside == []
    norm = lambda s: re.sub(r"[^a-z0-9]", "", s.lower())
    bench_names = set()
    for path in (ROOT / "bfcl").glob("BFCL_v3_*.json"):
        for line in path.read_text().splitlines():
            bench_names |= {norm(f["name"]) for f in json.loads(line).get("function", [])}
    bench_names |= {norm(d["name"]) for d in json.loads((ROOT / "apibank/api_descriptions.json").read_text())}
    assert not {a.name for a in APIS if norm(a.name) in bench_names}
