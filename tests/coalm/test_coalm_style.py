"""The CoALM-IT prompt style of BFCL and API-Bank (`<bench>/coalm_style.py`) must give the same verdicts as the official style.

The reference is each benchmark's official path: every gold answer in the shared data is rendered twice, once as
the official text (Python calls for BFCL, `[Name(k='v')]` for API-Bank) and once as the LA JSON list, and both go
through the same checker; the verdicts must agree item by item, and (bar BFCL items whose gold answer contradicts
its own function docs) be correct.
"""

import ast
import json
import random

import pytest

from coalm.data import formats as F
from coalm.eval import api_bank, bfcl
from coalm.eval.api_bank.bench import _check_pred
from coalm.eval.api_bank.coalm_style import apibank_call
from coalm.eval.base import EvalError
from coalm.eval.bfcl.checker import score_item
from coalm.eval.multiwoz.coalm_style import multiwoz_responses
from coalm.eval.task import HandlerError, decode_la
from coalm.paths import data_root

ROOT = data_root()
needs_data = pytest.mark.skipif(not (ROOT / "bfcl").is_dir(), reason=f"shared data not at {ROOT}")
AST_PY = "simple,multiple,parallel,parallel_multiple,live_simple,live_multiple,live_parallel,live_parallel_multiple"


def _pick(accepted):
    """The first accepted value that is not "" (the optional marker); dicts and lists of dicts key by key."""
    v = next(x for x in accepted if x != "")
    if isinstance(v, dict):
        return {k: _pick(a) for k, a in v.items() if any(x != "" for x in a)}
    if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
        return [{k: _pick(a) for k, a in d.items() if any(x != "" for x in a)} for d in v]
    return v


def _gold_calls(answer):
    return [{"name": name, "arguments": {k: _pick(acc) for k, acc in params.items() if any(x != "" for x in acc)}}
            for name, params in (next(iter(a.items())) for a in answer)]


@needs_data
def test_bfcl_every_gold_answer_scores_the_same_as_la_json():
    exs = bfcl.load_examples(ROOT, bfcl.Options(category=AST_PY, per_category_limit=None), "coalm")
    assert len(exs) > 1400 and all(ex["style"] == "coalm" for ex in exs)
    correct = 0
    for ex in exs:
        calls = _gold_calls(ex["answer"])
        la = score_item(ex, F.la_output(calls))
        python = "[" + ", ".join(c["name"] + "(" + ", ".join(f"{k}={v!r}" for k, v in c["arguments"].items()) + ")"
                                 for c in calls) + "]"
        official = score_item(dict(ex, style="official"), python)
        assert (la["valid"], la["error_type"]) == (official["valid"], official["error_type"]), ex["id"]
        correct += la["valid"]
    # the few failures are gold answers that name a function or parameter their own docs do not have
    assert correct >= 0.99 * len(exs)


@needs_data
def test_bfcl_relevance_and_bad_output_in_la_style():
    exs = bfcl.load_examples(ROOT, bfcl.Options(category="irrelevance,simple", per_category_limit=3), "coalm")
    irr = next(ex for ex in exs if ex["category"] == "irrelevance")
    simple = next(ex for ex in exs if ex["category"] == "simple")
    call = F.la_output(_gold_calls(simple["answer"]))
    assert score_item(irr, "[]")["valid"]
    assert not score_item(irr, json.dumps([{"name": irr["functions"][0]["name"], "arguments": {}}]))["valid"]
    assert score_item(simple, "```json\n" + call + "\n```")["valid"]
    for bad in ("", "[", "[{\"name\": 3}]", "{\"name\": \"f\"}", "[" * 5000 + "]" * 5000, "not json at all",
                call.replace('"', "'"), "null"):
        v = score_item(simple, bad)
        assert not v["valid"] and v["error_type"].startswith("ast_decoder"), bad[:30]
    assert score_item(simple, "[]")["error_type"] == "simple_function_checker:wrong_count"


@needs_data
def test_bfcl_la_prompt_shows_types_and_optional_parameters():
    exs = bfcl.load_examples(ROOT, bfcl.Options(category="simple", per_category_limit=5), "coalm")
    ex = exs[0]
    system, user = ex["messages"]
    assert system["role"] == "system" and system["content"].startswith(F.LA_TASK)
    tools = json.loads(system["content"].split("[BEGIN OF AVAILABLE TOOLS]\n")[1].split("\n[END OF AVAILABLE")[0])
    doc = ex["functions"][0]
    assert tools[0]["name"] == doc["name"]
    props, required = doc["parameters"]["properties"], set(doc["parameters"].get("required", []))
    for name, spec in props.items():
        assert tools[0]["parameters"][name]["type"] == spec["type"]
        assert ("default" in tools[0]["parameters"][name]) == (name not in required)
    assert user["content"] == ex_question(ex)
    with pytest.raises(Exception, match="Python categories"):
        bfcl.load_examples(ROOT, bfcl.Options(category="java", per_category_limit=1), "coalm")


def ex_question(ex):
    row = next(json.loads(line) for line in (ROOT / "bfcl" / "BFCL_v3_simple.json").read_text().splitlines()
               if json.loads(line)["id"] == ex["id"])
    return "\n".join(m["content"] for m in row["question"][0])


@needs_data
def test_apibank_every_gold_call_scores_correct_as_la_json():
    exs = api_bank.load_examples(ROOT, api_bank.Options(apibank_levels="1,2", apibank_kinds="api_call"), "coalm")
    rng = random.Random(0)
    for ex in exs:
        g = ex["gold"]
        args = {}
        for k, v in g["param_dict"].items():
            if v.startswith("[") and v.endswith("]") and rng.random() < 0.5:
                v = ast.literal_eval(v)  # a list parameter written as a JSON list, as a model would
            args[k] = v
        ok, err = _check_pred(ex, F.la_output([{"name": g["api_name"], "arguments": args}]))
        official = _check_pred(dict(ex, style="official"), api_bank.render_call(g["api_name"],
                                                                                         g["param_dict"]))
        assert ok and official == (True, None), (ex["id"], err)
    ex = exs[0]
    assert _check_pred(ex, "[]") == (False, "no_call")
    assert _check_pred(ex, "AddAgenda(time='x')") == (False, "decoder_failed")
    system, user = ex["messages"]
    assert system["content"].startswith(F.LA_TASK) and user["content"].startswith("User: ")


@needs_data
def test_apibank_response_samples_in_cra_format():
    exs = api_bank.load_examples(ROOT, api_bank.Options(apibank_levels="1", apibank_kinds="response"), "coalm")
    ex = exs[0]
    system, user = ex["messages"]
    assert system["content"].startswith(F.CRA_TASK)
    assert "\nAction: " in user["content"] and "\nObservation: " in user["content"]
    assert F.parse_action(next(x for x in user["content"].splitlines() if x.startswith("Action: "))) is not None
    rep = api_bank.evaluate([ex], {ex["id"]: "System: " + ex["gold"]["text"]})
    assert rep["summary"]["levels"]["level-1"]["rouge_l"] == pytest.approx(1.0)
    # every sample: the whole conversation, earlier calls included, in CRA lines (the form the CRA rows train on),
    # each call as an Action that parses back to the call API-Bank logged
    earlier = 0
    for ex in exs:
        system, user = ex["messages"]
        text = system["content"] + "\n" + user["content"]
        assert "API: [" not in text and "AI: " not in text
        actions = [F.parse_action(x) for x in text.splitlines() if x.startswith("Action: ")]
        assert actions and all(a is not None for a in actions)
        earlier += "\nAction: " in system["content"]
    assert earlier > 0


def test_decode_la_and_multiwoz_merge():
    assert decode_la('[{"name": "f", "arguments": {"a": 1}}] trailing') == [{"name": "f",
                                                                                      "arguments": {"a": 1}}]
    assert decode_la('[{"name": "f"}]') == [{"name": "f", "arguments": {}}]
    for bad in ("", "{}", "[1]", '[{"name": "f", "arguments": []}]', "[", None):
        with pytest.raises(HandlerError):
            decode_la(bad)
    assert apibank_call('[{"name": "A", "arguments": {"on": true, "n": 2, "l": ["x", "y"], "o": null}}]') \
        == ("A", {"on": "True", "n": "2", "l": "['x', 'y']"})
    t1 = 'System: {"domain": "hotel", "slot_values": {"area": "north"}}'
    t2 = 'System: {"domain": "train", "slot_values": {"day": "monday"}}'
    t3 = 'System: {"domain": "hotel", "slot_values": {"area": "north", "stars": "4"}}'
    exs = [{"id": f"d:{i}", "dialogue_id": "d"} for i in range(4)] + [{"id": "e:0", "dialogue_id": "e"}]
    out = multiwoz_responses(exs, [t1, "garbage", t2, t3, t2])
    assert out["d:1"]["state"] == {"hotel": {"area": "north"}} and out["d:1"]["parse_error"]
    assert out["d:3"]["state"] == {"hotel": {"area": "north", "stars": "4"}, "train": {"day": "monday"}}
    assert out["e:0"]["state"] == {"train": {"day": "monday"}}
    with pytest.raises(EvalError, match="prompt style"):
        bfcl.TASK.check_style("hammer")
