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
