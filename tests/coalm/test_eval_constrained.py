"""`coalm.eval --constrained on` (BFCL, CoALM-IT LA style): with a random-init model every answer that ends before
the token budget is an LA call list of the item's own functions whose arguments validate (checked with json and
`jsonschema`), scored by the same checker; the free run of the same model is cached apart."""

import json

import jsonschema

from coalm.eval.backends import LocalBackend
from coalm.eval.bfcl.schemas import function_tool
from coalm.eval.pipeline import evaluate


def test_constrained_bfcl_answers_are_valid_calls(tmp_path):
    backend = LocalBackend("debug", random_init=True, batch_size=4, dtype="fp32")
    kw = {"backend": backend, "prompt_style": "coalm", "category": "simple,multiple,irrelevance",
          "per_category_limit": 2, "max_new_tokens": 160}
    report = evaluate("bfcl", tmp_path / "on.json", constrained="on", **kw)
    rows = [json.loads(line) for line in (tmp_path / "on.responses.jsonl").read_text().splitlines()]
    data = {r["id"]: r for r in _items(report)}
    assert len(rows) == 6 and set(data) == {r["id"] for r in rows}
    functions = _functions()
    for r in rows:
        try:
            calls = json.loads(r["result"])
        except json.JSONDecodeError:  # only a list cut by the token budget (random weights write long strings)
            assert len(backend.tokenizer.encode(r["result"])) >= kw["max_new_tokens"] - 4, r
            continue
        tools = {f["name"]: function_tool(f, "simple")["function"]["parameters"] for f in functions[r["id"]]}
        for c in calls:
            assert set(c) == {"name", "arguments"} and c["name"] in tools, r
            jsonschema.validate(c["arguments"], tools[c["name"]])
    free = evaluate("bfcl", tmp_path / "off.json", **kw)
    assert free["summary"]["n_items"] == 6


def _items(report):
    return report["items"]


def _functions():
    from coalm.paths import data_root

    out = {}
    for cat in ("simple", "multiple", "irrelevance"):
        for line in (data_root() / "bfcl" / f"BFCL_v3_{cat}.json").read_text().splitlines()[:2]:
            row = json.loads(line)
            out[row["id"]] = row["function"]
    return out


def test_constrained_api_bank_and_multiwoz_answers(tmp_path):
    """API-Bank call samples: calls of the shown APIs with their argument names, the non-optional ones present;
    MultiWOZ DST: `System: ` + one listed domain with its own slots, categorical values from the ontology."""
    from coalm.eval.multiwoz.bench import dst_schema
    from coalm.paths import data_root

    backend = LocalBackend("debug", random_init=True, batch_size=4, dtype="fp32")
    evaluate("api-bank", tmp_path / "ab.json", backend=backend, prompt_style="coalm", constrained="on", limit=4,
             max_new_tokens=160)
    from coalm.eval.api_bank.bench import TASK as AB

    examples = {ex["id"]: ex for ex in AB.load(data_root(), AB.Options(), "coalm")}
    for r in [json.loads(line) for line in (tmp_path / "ab.responses.jsonl").read_text().splitlines()]:
        ex = examples[f"{r['file']}#{r['id']}"]
        if "shown" not in ex:
            continue  # a response sample: free text
        try:
            calls = json.loads(r["pred"])
        except json.JSONDecodeError:
            assert len(backend.tokenizer.encode(r["pred"])) >= 156, r
            continue
        apis = {d["name"]: d.get("input_parameters") or {} for d in ex["shown"]}
        assert calls, r
        for c in calls:
            params = apis[c["name"]]
            assert set(c["arguments"]) <= set(params), r
            assert {k for k, p in params.items() if not p.get("description", "").startswith("[Optional]")} \
                <= set(c["arguments"]), r
            assert all(isinstance(v, str) for k, v in c["arguments"].items() if params[k].get("type") == "str"), r
    evaluate("multiwoz", tmp_path / "mw.json", backend=backend, prompt_style="coalm", constrained="on", limit=4,
             max_new_tokens=120)
    schema = dst_schema(str(data_root() / "multiwoz"))
    # the raw answers: the runner's per-item cache keeps each output text
    texts = [json.loads(line)["text"] for line in (tmp_path / "mw.cache.jsonl").read_text().splitlines()]
    assert texts
    for text in texts:
        assert text.startswith("System: "), text
        try:
            answer = json.loads(text[len("System: "):])
        except json.JSONDecodeError:
            assert len(backend.tokenizer.encode(text)) >= 116, text
            continue
        jsonschema.validate(answer, schema)


def test_suite_constrained_column_needs_the_coalm_style():
    import pytest

    from coalm.eval.base import EvalError
    from coalm.eval.suite import parse_args

    with pytest.raises(EvalError, match="prompt-style coalm"):
        parse_args(["--suite", "coalm", "--model", "m", "--constrained", "on"])
    assert parse_args(["--suite", "coalm", "--model", "m", "--constrained", "on", "--prompt-style", "coalm"]).constrained == "on"
