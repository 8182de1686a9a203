"""API-Bank evaluator: official sample construction and parsing, offline call check, text metrics."""

import json
import math
import random

import pytest
from rouge import Rouge

from coalm.eval._text_metrics import bleu4_method3, llamafactory_scores, rouge_f, word_tokens
from coalm.eval.api_bank import bench as ab
from coalm.eval.base import EvalError, data_root

ROOT = data_root()
pytestmark = pytest.mark.skipif(not (ROOT / "apibank").is_dir(), reason="no shared API-Bank data")


@pytest.fixture(scope="module")
def examples():
    return ab.load_examples(ROOT)


def _gold_text(ex):
    g = ex["gold"]
    return ab.render_call(g["api_name"], g["param_dict"]) if ex["kind"] == "api_call" else g["text"]


def test_sample_counts_match_official_construction(examples):
    # the counts the data README gives for the official construction on this subset
    counts = {}
    for ex in examples:
        counts[(ex["level"], ex["kind"])] = counts.get((ex["level"], ex["kind"]), 0) + 1
    assert counts == {(1, "api_call"): 332, (1, "response"): 312, (2, "api_call"): 94, (2, "response"): 76}


def test_sample_ids_and_history_follow_official_order():
    rows = [{"role": "User", "text": "u0"}, {"role": "API", "api_name": "A", "param_dict": {}, "result": {"output": 1}},
            {"role": "API", "api_name": "B", "param_dict": {"x": "1"}, "result": {"output": 2}},
            {"role": "AI", "text": "a3"}]
    samples = ab.official_samples(rows)
    # A -> (A), (B); B -> (B), (a3): the duplicate B target is kept, as in the official list
    assert [(len(h), t.get("api_name", t.get("text"))) for h, t in samples] == [(1, "A"), (2, "B"), (2, "B"), (3, "a3")]
    msg = ab.render_history_item(rows[2])
    assert msg == {"role": "system", "content": "[B(x='1')] Response: 2"}


def test_prompts_and_level2_sees_only_toolsearcher(examples):
    l1 = next(e for e in examples if e["level"] == 1 and e["kind"] == "api_call")
    l2 = next(e for e in examples if e["level"] == 2 and e["kind"] == "api_call")
    assert l1["messages"][0]["role"] == "system"
    assert l1["messages"][0]["content"].startswith(ab.API_CALL_PROMPT)
    desc = json.loads(l2["messages"][0]["content"][len(ab.API_CALL_PROMPT):])
    assert desc["name"] == "ToolSearcher" and list(desc) == ["name", "description", "input_parameters",
                                                             "output_parameters"]
    r2 = next(e for e in examples if e["level"] == 2 and e["kind"] == "response")
    assert r2["messages"][0]["content"].startswith(ab.RESPONSE_PROMPT)


def test_gold_outputs_score_full_marks(examples):
    report = ab.evaluate(examples, {ex["id"]: _gold_text(ex) for ex in examples})
    s = report["summary"]
    for lv in ("level-1", "level-2"):
        assert s["levels"][lv]["rate"] == 1.0
        assert s["levels"][lv]["rouge_l"] == pytest.approx(1.0, abs=1e-6)
        assert s["levels"][lv]["call_text_metrics_llamafactory"]["bleu-4"] == pytest.approx(100.0)
    n_calls = sum(ex["kind"] == "api_call" for ex in examples)
    assert s["gold_calls_passing_our_check"] == f"{n_calls}/{n_calls}"
    assert all(it["verdict"] == "correct" for it in report["items"] if it["kind"] == "api_call")


def test_every_gold_call_round_trips_through_the_parser(examples):
    for ex in examples:
        if ex["kind"] == "api_call":
            g = ex["gold"]
            assert ab.parse_api_call(ab.render_call(g["api_name"], g["param_dict"])) == (g["api_name"],
                                                                                        g["param_dict"])


@pytest.mark.parametrize("text", [
    "Sure! [QueryStock(stock_code='AMZN', date='2022-03-12')] done",
    '[QueryStock(stock_code="AMZN", date="2022-03-12")]',
    "[QueryStock(stock_code = 'AMZN', date = '2022-03-12')]",
    "[QueryStock(stock_code=AMZN, date='2022-03-12')]",
])
def test_formatting_variants_parse_like_the_official_parser(text):
    assert ab.parse_api_call(text) == ("QueryStock", {"stock_code": "AMZN", "date": "2022-03-12"})


@pytest.mark.parametrize("text", ["QueryStock(stock_code='AMZN')", '{"name": "QueryStock"}', "no call", ""])
def test_unparseable_outputs(text):
    assert ab.parse_api_call(text) is None
    assert ab.check_call(ab.parse_api_call(text), "QueryStock", {"stock_code": "AMZN"}) == (False, "no_call")


def test_quoted_list_value_does_not_parse_as_the_list():
    # the history rendering quotes lists; the official parser then stops at the first inner quote
    name, params = ab.parse_api_call("[AddMeeting(attendees='['John', 'Jane']')]")
    assert params["attendees"] == "["
    assert ab.check_call((name, params), "AddMeeting", {"attendees": "['John', 'Jane']"})[0] is False


GOLD = ("QueryStock", {"stock_code": "AMZN", "date": "2022-03-12"})


@pytest.mark.parametrize("api,gold,pred,ok,err", [
    ("QueryStock", GOLD[1], ("QueryBalance", GOLD[1]), False, "wrong_api_name"),
    ("QueryStock", GOLD[1], ("QueryStock", {"stock_code": "AMZN"}), False, "missing_param:date"),
    ("QueryStock", GOLD[1], ("QueryStock", {**GOLD[1], "token": "x"}), False, "extra_param:token"),
    ("QueryStock", GOLD[1], ("QueryStock", {**GOLD[1], "stock_code": "AAPL"}), False, "wrong_value:stock_code"),
    # QueryStock normalises case, whitespace and unpadded dates, but only the %Y-%m-%d layout
    ("QueryStock", GOLD[1], ("QueryStock", {"stock_code": " amzn", "date": "2022-3-12"}), True, None),
    ("QueryStock", GOLD[1], ("QueryStock", {"stock_code": "AMZN", "date": "03/12/2022"}), False, "wrong_value:date"),
    ("QueryStock", GOLD[1], ("QueryStock", {"stock_code": "AMZN", "date": "2022-03-13"}), False, "wrong_value:date"),
    # AddAgenda compares the time string exactly (after an strptime format check)
    ("AddAgenda", {"token": "t", "content": "Meeting with John at the office", "time": "2023-09-12 14:00:00",
                   "location": "office"},
     ("AddAgenda", {"token": "t", "content": "Meeting with John at office", "time": "2023-09-12 14:00:00",
                    "location": "office"}), True, None),
    ("AddAgenda", {"token": "t", "content": "a b", "time": "2023-09-12 14:00:00", "location": "o"},
     ("AddAgenda", {"token": "t", "content": "a b", "time": "2023-09-12 14:00", "location": "o"}),
     False, "wrong_value:time"),
    ("AddAgenda", {"token": "t", "content": "Meeting with John at the office", "time": "2023-09-12 14:00:00",
                   "location": "office"},
     ("AddAgenda", {"token": "t", "content": "John", "time": "2023-09-12 14:00:00", "location": "office"}),
     False, "wrong_value:content"),
    # AddReminder lowercases content; AddAgenda does not
    ("AddReminder", {"token": "t", "content": "Call John", "time": "2022-05-25 15:00:00"},
     ("AddReminder", {"token": "t", "content": "CALL JOHN", "time": "2022-05-25 15:00:00"}), True, None),
    ("AddAgenda", {"token": "t", "content": "Call John", "time": "2022-05-25 15:00:00", "location": "x"},
     ("AddAgenda", {"token": "t", "content": "CALL JOHN", "time": "2022-05-25 15:00:00", "location": "x"}),
     False, "wrong_value:content"),
    # RecordHealthData: user id case-insensitive, time re-padded, health items in any order
    ("RecordHealthData", {"user_id": "E12345", "time": "2023-08-06 09:00:00",
                          "health_data": "[{'name': 'bp', 'value': '120/80'}, {'name': 'hr', 'value': '80'}]"},
     ("RecordHealthData", {"user_id": "e12345 ", "time": "2023-8-6 9:00:00",
                           "health_data": "[{'name': 'hr', 'value': '80'}, {'name': 'bp', 'value': '120/80'}]"}),
     True, None),
    ("RecordHealthData", {"user_id": "E1", "time": "2023-08-06 09:00:00",
                          "health_data": "[{'name': 'hr', 'value': '80'}]"},
     ("RecordHealthData", {"user_id": "E1", "time": "2023-08-06 09:00:00",
                           "health_data": "[{'name': 'hr', 'value': '81'}]"}), False, "wrong_value:health_data"),
    ("QueryHistoryToday", {"date": "12-10"}, ("QueryHistoryToday", {"date": "2023-12-10"}), True, None),
    ("QueryHistoryToday", {"date": "12-10"}, ("QueryHistoryToday", {"date": "10-12"}), False, "wrong_value:date"),
    ("BookHotel", {"room_count": "1"}, ("BookHotel", {"room_count": "01"}), True, None),
    ("DeleteAgenda", {"token": "t", "content": "x", "time": "2023-03-21 15:00:00", "location": "Cleaners"},
     ("DeleteAgenda", {"token": "t", "content": "y", "time": "2023-03-21 15:00:00", "location": "home"}), True, None),
    ("GetUserToken", {"username": "JaneSmith", "password": "password"},
     ("GetUserToken", {"username": "janesmith", "password": "password"}), False, "wrong_value:username"),
])
def test_call_check_rules(api, gold, pred, ok, err):
    assert ab.check_call(pred, api, gold) == (ok, err)


def test_optional_parameter_may_be_added(examples):
    ex = next(e for e in examples if e["kind"] == "api_call" and e["gold"]["api_name"] == "Translate")
    g = ex["gold"]
    pred = ("Translate", {**g["param_dict"], "src_lang": "en"})
    assert ab.check_call(pred, "Translate", g["param_dict"], ex["api_desc"]) == (True, None)


def test_random_value_mutations_are_rejected(examples):
    rng = random.Random(1234)
    calls = [e for e in examples if e["kind"] == "api_call" and e["gold"]["param_dict"]]
    checked = 0
    for ex in rng.sample(calls, 80):
        g = ex["gold"]
        key = rng.choice(sorted(g["param_dict"]))
        if ab._RULES.get(g["api_name"], {}).get(key) == "ignore":
            continue
        junk = "".join(rng.choice("qxzjv") for _ in range(rng.randint(3, 9)))
        params = {**g["param_dict"], key: junk}
        text = ab.render_call(g["api_name"], params)
        assert ab.check_call(ab.parse_api_call(text), g["api_name"], g["param_dict"], ex["api_desc"]) == (
            False, f"wrong_value:{key}")
        checked += 1
    assert checked > 60


def test_responses_round_trip_and_missing_outputs(tmp_path, examples):
    sub = examples[:30]
    resp = ab.responses_from_texts(sub, [_gold_text(e) for e in sub])
    path = ab.write_responses(tmp_path / "out.jsonl", sub, resp)
    first = json.loads(path.read_text().splitlines()[0])
    assert set(first) == {"file", "id", "pred"} and first["id"] == sub[0]["index"]
    assert ab.read_responses(path) == resp
    del resp[sub[0]["id"]]
    rep = ab.evaluate(sub, resp)
    assert rep["items"][0]["error_type"] == "missing_output"


def test_bad_inputs_raise(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"file": "x"}\n')
    with pytest.raises(EvalError, match="bad.jsonl:1"):
        ab.read_responses(bad)

    with pytest.raises(EvalError, match="choose from 1, 2"):
        ab.load_examples(ROOT, ab.Options(apibank_levels="3"))


# ---------------------------------------------------------------- text metrics

def test_rouge_l_is_the_rouge_package():
    rng = random.Random(7)
    words = ["the", "a", "cat", "dog", "sat", "on", "mat", "hat"]
    for _ in range(20):
        h = " ".join(rng.choice(words) for _ in range(rng.randint(1, 9)))
        r = " ".join(rng.choice(words) for _ in range(rng.randint(1, 9)))
        assert rouge_f(h, r) == Rouge().get_scores(h, r)[0]["rouge-l"]["f"]
    assert rouge_f(".", "a reference") == 0.0
    assert rouge_f("", "a reference") == 0.0


def test_bleu4_method3_hand_computed():
    # p1 = 3/4, p2 = 2/3, p3 = 1/2, p4: no match -> 1 / (2 * 1); equal lengths, no brevity penalty
    assert bleu4_method3("abce", "abcd") == pytest.approx((3 / 4 * 2 / 3 * 1 / 2 * 1 / 2) ** 0.25, rel=1e-12)
    # hypothesis "ab" vs "abcd": p1 = p2 = 1, p3 and p4 have no n-grams -> 1/2 and 1/4; BP = exp(1 - 4/2)
    assert bleu4_method3("abcd", "ab") == pytest.approx(math.exp(-1) * (1 / 8) ** 0.25, rel=1e-12)
    assert bleu4_method3("abc", "xyz") == 0.0
    assert bleu4_method3("abc", "") == 0.0
    # longer hypothesis: clipped counts, no brevity penalty; p1 = 4/5 (one "a" clipped), p2 = 3/4, p3 = 2/3, p4 = 1/2
    assert bleu4_method3("abcde", "abcda") == pytest.approx((4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25, rel=1e-12)


def test_llamafactory_word_split_and_scores():
    assert word_tokens("[QueryStock(stock_code='AMZN')]") == ["[", "QueryStock", "(", "stock_code", "=", "'",
                                                             "AMZN", "'", ")", "]"]
    s = llamafactory_scores("[A(x='1')]", "[A(x='1')]")
    assert s == pytest.approx({"rouge-1": 100.0, "rouge-2": 100.0, "rouge-l": 100.0, "bleu-4": 100.0}, rel=1e-6)
    s = llamafactory_scores("[A(x='1')]", "[A(x='2')]")
    ref = Rouge().get_scores("[ A ( x = ' 1 ' ) ]", "[ A ( x = ' 2 ' ) ]")[0]
    assert s["rouge-1"] == pytest.approx(100 * ref["rouge-1"]["f"])
    assert s["bleu-4"] == pytest.approx(100 * bleu4_method3("[A(x='2')]", "[A(x='1')]"))


# ---------------------------------------------------------------- parsers that adversarial text cannot stall

# The official patterns, as the API-Bank evaluator writes them: the reference for our linear-time matching.
_OFFICIAL_CALL = r"\[(\w+)\((.*)\)\]"
_OFFICIAL_PARAM = r"(\w+)\s*=\s*['\"](.+?)['\"]|(\w+)\s*=\s*(\[.*\])|(\w+)\s*=\s*(\w+)"


def test_linear_call_matching_equals_the_official_regexes():
    import re

    call, param = re.compile(_OFFICIAL_CALL), re.compile(_OFFICIAL_PARAM)
    rng = random.Random(12)
    alphabet = ["a", "b", "_", "1", "=", " ", "'", '"', "[", "]", "(", ")", "\n", ",", "é", "²", "x="]
    for _ in range(5000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 48)))
        m = call.search(s)
        assert ab._call_match(s) == ((m.start(), m.group(1), m.group(2), m.end()) if m else None), s
        assert [p.groups() for p in param.finditer(s)] == [p.groups() for p in ab._PARAM_RE.finditer(s)], s


def test_superscript_digit_is_not_an_int():
    assert "²".isdigit()
    assert not ab.value_matches("int", "²", "2") and ab.value_matches("int", "2", "2")
    assert ab._json_list("[" * 100_000) is None
