"""MultiWOZ evaluator: loader, strict and fuzzy JGA, slot F1, mwzeval-style Inform/Success, saved-output format."""

import copy
import functools
import json
import random

import pytest

from coalm.eval.base import EvalError, data_root
from coalm.eval.multiwoz import bench as mw

ROOT = data_root()
pytestmark = pytest.mark.skipif(not (ROOT / "multiwoz").is_dir(), reason="no shared MultiWOZ data")


Args = functools.partial(mw.Options, multiwoz_subset="quick")


@pytest.fixture(scope="module")
def quick():
    return mw.load_examples(ROOT, Args())


def _gold(examples, response=True):
    return {e["id"]: {"state": copy.deepcopy(e["gold_state"]),
                      **({"response": e["gold_response_delex"]} if response else {})} for e in examples}


def test_loader_counts_ids_and_version():
    full = mw.load_examples(ROOT)
    # the data README: 900 dialogues, 6596 system turns
    assert len({e["dialogue_id"] for e in full}) == 900 and len(full) == 6596
    assert all(e["data_version"] == "2.1" for e in full)
    assert all(e["dialogue_id"] == e["dialogue_id"].lower() and not e["dialogue_id"].endswith(".json") for e in full)
    e = next(x for x in full if x["dialogue_id"] == "sng0073" and x["turn"] == 0)
    assert e["gold_state"] == {"taxi": {"destination": "pizza hut fenditton", "departure": "saint johns college"}}
    assert e["messages"][-1]["content"].startswith("User: I would like a taxi from Saint John 's college")


def _no_dontcare(state):
    return {d: {k: v for k, v in slots.items() if v != "dontcare"} for d, slots in state.items()}


def test_gold_states_and_responses_score_full(quick):
    rep = mw.evaluate(quick, _gold(quick))
    s = rep["summary"]
    assert s["data_version"] == "2.1" and "2.4" in s["note"]
    assert s["jga_strict"] == 1.0 and s["slot_f1"] == 1.0
    assert s["bleu_vs_delex_2.1_refs"] == pytest.approx(100.0)
    assert 0.0 < s["success"] <= s["inform"] <= 1.0
    assert all(it["verdict"] == "correct" for it in rep["items"] if it["kind"] == "dst_turn")
    # mwzeval's references (MultiWOZ 2.2 gold states) hold no "dontcare" slot: a state that names one is a miss.
    with_dc = {e["id"] for e in quick if "dontcare" in mw._flat(e["gold_state"]).values()}
    assert with_dc and all(not it["fuzzy"] for it in rep["items"] if it["id"] in with_dc)
    clean = {i: {"state": _no_dontcare(r["state"])} for i, r in _gold(quick, response=False).items()}
    s = mw.evaluate(quick, clean)["summary"]
    assert s["jga_fuzzy"] == 1.0 and s["slot_f1_fuzzy"] == 1.0 and s["jga_strict"] < 1.0


def test_partial_ratio_hand_values():
    # fuzzywuzzy README: a substring scores 100
    assert mw.partial_ratio("YANKEES", "NEW YORK YANKEES") == 100
    assert mw.partial_ratio("this is a test", "this is a test!") == 100
    # "abcd" vs window "abce" of "xxabcexx": 2 * 3 / 8
    assert mw.partial_ratio("abcd", "xxabcexx") == 75
    # best window "saint john's colleg": 18 matching chars of 19 + 19 -> 94.7 -> 95, not above the threshold
    assert mw.partial_ratio("saint johns college", "saint john's college") == 95
    assert mw.partial_ratio("", "x") == 0


@pytest.mark.parametrize("pred,strict,fuzzy,err", [
    ({"hotel": {"name": "cambridge belfry", "area": "west"}}, False, True, "wrong_value:hotel-name"),
    ({"hotel": {"name": "the cambridge belfry", "area": "west"}}, True, True, None),
    # strict is TRADE's exact match, case included; mwzeval canonicalises names (lower case) but not areas
    ({"hotel": {"name": "The Cambridge Belfry ", "area": "west", "stars": "not mentioned"}}, False, True,
     "wrong_value:hotel-name"),
    ({"hotel": {"name": "the cambridge belfry", "area": "West"}}, False, False, "wrong_value:hotel-area"),
    ({"hotel": {"name": "the cambridge belfry"}}, False, False, "missing_slot:hotel-area"),
    ({"hotel": {"name": "the cambridge belfry", "area": "east"}}, False, False, "wrong_value:hotel-area"),
    ({"hotel": {"name": "the cambridge belfry", "area": "west", "parking": "yes"}}, False, False,
     "extra_slot:hotel-parking"),
    ({"hotel-name": "the cambridge belfry", "hotel-area": "west"}, True, True, None),
])
def test_state_rules(pred, strict, fuzzy, err):
    gold = {"hotel": {"name": "the cambridge belfry", "area": "west"}}
    c = mw.compare_states(mw.normalize_state(pred), gold)
    assert (c["strict"], c["fuzzy"], c["error"]) == (strict, fuzzy, err)


def test_slot_names_and_values_are_normalised():
    s = mw.normalize_state({"Train": {"leaveAt": "10:15", "arrive by": "none", "book_people": "2"},
                            "restaurant": {"price range": "Cheap", "food": "don't care"}})
    assert s == {"train": {"leaveat": "10:15", "book people": "2"},
                 "restaurant": {"pricerange": "Cheap", "food": "don't care"}}  # values as written


def test_random_mutations_on_real_turns(quick):
    rng = random.Random(2024)
    turns = [e for e in quick if any(v != "dontcare" for v in mw._flat(e["gold_state"]).values())]
    for e in rng.sample(turns, 60):
        gold = e["gold_state"]
        dom, slot = rng.choice(sorted(k for k, v in mw._flat(gold).items() if v != "dontcare"))
        changed = copy.deepcopy(gold)
        changed[dom][slot] = "".join(rng.choice("qxzjkv") for _ in range(6))
        dropped = copy.deepcopy(gold)
        del dropped[dom][slot]
        for pred in (changed, dropped):
            c = mw.compare_states(mw.normalize_state(pred), gold)
            assert not c["strict"] and not c["fuzzy"]
        c = mw.compare_states(mw.normalize_state(changed), gold)
        assert c["tp"] == len(mw._flat(gold)) - 1 and c["fp"] == 1 and c["fn"] == 1


def test_slot_f1_micro_average(quick):
    sub = quick[:40]
    resp = _gold(sub, response=False)
    # drop one slot from one turn, add one wrong slot to another
    a = next(e for e in sub if mw._flat(e["gold_state"]))
    dom = min(a["gold_state"])
    slot = min(a["gold_state"][dom])
    del resp[a["id"]]["state"][dom][slot]
    b = sub[0] if sub[0] is not a else sub[1]
    resp[b["id"]]["state"].setdefault("police", {})["department"] = "x"
    s = mw.evaluate(sub, resp)["summary"]
    n = sum(len(mw._flat(e["gold_state"])) for e in sub)
    p, r = (n - 1) / ((n - 1) + 1), (n - 1) / n  # tp = n - 1, fp = 1 (the police slot), fn = 1 (the dropped slot)
    assert s["slot_precision"] == pytest.approx(p) and s["slot_recall"] == pytest.approx(r)
    assert s["slot_f1"] == pytest.approx(2 * p * r / (p + r))
    assert s["jga_strict"] == pytest.approx((len(sub) - 2) / len(sub))


# ---------------------------------------------------------------- Inform / Success


@pytest.fixture(scope="module")
def db():
    return mw.VenueDatabase(ROOT / "multiwoz" / "mwzeval_database")


def test_database_query_matches_plain_filter(db):
    rows = json.loads((ROOT / "multiwoz" / "mwzeval_database" / "restaurant_db.json").read_text())
    rng = random.Random(5)
    for _ in range(20):
        area = rng.choice(["centre", "north", "south", "east", "west"])
        price = rng.choice(["cheap", "moderate", "expensive"])
        want = [r["id"] for r in rows if r["area"] == area and r["pricerange"] == price]
        assert db.query("restaurant", {"area": area, "pricerange": price}) == want
        assert db.query("restaurant", {"area": area, "pricerange": "dontcare"}) == [
            r["id"] for r in rows if r["area"] == area]
    trains = json.loads((ROOT / "multiwoz" / "mwzeval_database" / "train_db.json").read_text())
    minutes = lambda t: int(t[:2]) * 60 + int(t[3:])
    want = [t["trainID"] for t in trains if t["day"] == "monday" and t["departure"] == "cambridge"
            and t["destination"] == "london kings cross" and minutes(t["leaveAt"]) >= 10 * 60 + 15
            and minutes(t["arriveBy"]) <= 15 * 60]
    got = db.query("train", {"day": "monday", "departure": "cambridge", "destination": "london kings cross",
                             "leaveat": "10:15", "arriveby": "15:00"})
    assert got == want and want


GOAL = {"restaurant": {"informable": {"food": "italian", "area": "centre", "pricerange": "cheap"},
                       "requestable": ["PHONE", "REFERENCE"]}}
RIGHT = {"restaurant": {"food": "italian", "area": "centre", "pricerange": "cheap"}}
WRONG = {"restaurant": {"food": "chinese", "area": "centre", "pricerange": "cheap"}}
OFFER = mw.normalize_response("[restaurant_name] serves italian food .")
DETAILS = mw.normalize_response("the phone is [restaurant_phone] , reference [value_reference] .")


@pytest.mark.parametrize("goal,utts,states,booked,domains,want", [
    (GOAL, [OFFER, DETAILS], [RIGHT, RIGHT], [[], ["restaurant"]], None, (True, True)),
    # a reference given where the domain was not booked does not count
    (GOAL, [OFFER, DETAILS], [RIGHT, RIGHT], [[], []], None, (True, False)),
    # venues offered under a state that contradicts the goal
    (GOAL, [OFFER, DETAILS], [WRONG, WRONG], [[], ["restaurant"]], None, (False, False)),
    # no venue ever named
    (GOAL, ["sure .", DETAILS], [RIGHT, RIGHT], [[], ["restaurant"]], None, (False, False)),
    # named, but the turn's active domain is another one
    (GOAL, [OFFER, DETAILS], [RIGHT, RIGHT], [[], ["restaurant"]], [["hotel"], ["hotel"]], (False, False)),
    # the goal names the venue: matched automatically
    ({"restaurant": {"informable": {"name": "pizza hut city centre"}, "requestable": ["PHONE"]}},
     ["ok", mw.normalize_response("call [restaurant_phone]")], [RIGHT, RIGHT], [[], []], None, (True, True)),
    ({"taxi": {"informable": {"leaveat": "10:00"}, "requestable": []}}, ["booked ."],
     [{"taxi": {"leaveat": "10:00"}}], [["taxi"]], None, (True, True)),
])
def test_inform_success_rules(db, goal, utts, states, booked, domains, want):
    domains = domains or mw.estimate_domains(states)
    assert mw.dialog_inform_success(goal, booked, utts, states, domains, db) == want


def test_placeholder_normalisation_and_domain_estimate():
    assert mw.normalize_response("[restaurant_name]s at [value_address] , [hotel_phone] [ref]") == (
        "NAME at ADDRESS , PHONE REFERENCE")
    states = [{}, {"hotel": {"area": "north"}}, {"hotel": {"area": "north"}},
              {"hotel": {"area": "north"}, "train": {"day": "monday"}}]
    assert mw.estimate_domains(states) == [[], ["hotel"], ["hotel"], ["train"]]


def test_goal_parsing_follows_the_multiwoz_evaluator():
    raw = {"train": {"info": {"leaveAt": "10:00"}, "reqt": ["price", "trainID"], "book": {"people": "2"}},
           "hotel": {"info": {"name": "x"}, "reqt": ["phone", "postcode", "area"]}, "taxi": {}, "topic": {}}
    g = mw.parse_goal(raw)
    assert g == {"hotel": {"informable": {"name": "x"}, "requestable": ["PHONE", "POST"]},
                 "train": {"informable": {"leaveat": "10:00"}, "requestable": ["REFERENCE", "TRAINID"]}}


# ---------------------------------------------------------------- formats


def test_mwzeval_file_round_trip(tmp_path, quick):
    sub = [e for e in quick if e["dialogue_id"] == quick[0]["dialogue_id"]]
    resp = _gold(sub)
    path = mw.write_responses(tmp_path / "out.json", sub, resp)
    data = json.loads(path.read_text())
    assert list(data) == [sub[0]["dialogue_id"]] and len(data[sub[0]["dialogue_id"]]) == len(sub)
    assert mw.read_responses(path) == resp
    # mwzeval files written with upper-case ids or ".json" suffixes map to the same examples
    path.write_text(json.dumps({sub[0]["dialogue_id"].upper() + ".json": data[sub[0]["dialogue_id"]]}))
    assert mw.read_responses(path) == resp


def test_generated_texts_are_parsed_not_evaluated(quick):
    ex = quick[:3]
    texts = ['```json\n{"hotel": {"area": "North"}}\n```', "state: {bad json} then {\"taxi-leaveAt\": \"10:00\"}",
             "__import__('os')"]
    resp = mw.responses_from_texts(ex, texts)
    assert resp[ex[0]["id"]]["state"] == {"hotel": {"area": "North"}}
    assert resp[ex[1]["id"]]["state"] == {"taxi": {"leaveat": "10:00"}}
    assert resp[ex[2]["id"]]["parse_error"] and resp[ex[2]["id"]]["state"] == {}
    rep = mw.evaluate(ex, resp)
    assert rep["items"][2]["error_type"] == "parse_error"


def test_bad_inputs_raise(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(EvalError, match="mwzeval dict"):
        mw.read_responses(bad)

    with pytest.raises(EvalError, match="nope.json"):
        mw.load_examples(ROOT, Args(multiwoz_file="nope.json"))


# ---------------------------------------------------------------- cross-tests against the libraries mwzeval runs


def test_partial_ratio_equals_fuzzywuzzy_with_python_levenshtein(quick):
    fuzz = pytest.importorskip("fuzzywuzzy.fuzz")
    from fuzzywuzzy.StringMatcher import StringMatcher

    assert fuzz.SequenceMatcher is StringMatcher  # the python-Levenshtein path mwzeval runs in practice
    rng = random.Random(7)
    pairs = [("".join(rng.choice("abc d'") for _ in range(rng.randrange(12))),
              "".join(rng.choice("abc d'") for _ in range(rng.randrange(24)))) for _ in range(3000)]
    db = json.loads((ROOT / "multiwoz" / "mwzeval_database" / "restaurant_db.json").read_text())
    names = [r["name"] for r in db]
    values = sorted({v for e in quick for v in mw._flat(e["gold_state"]).values()})
    pairs += [(rng.choice(values), rng.choice(names)) for _ in range(1000)]
    pairs += [(v[: rng.randrange(1, len(v) + 1)], v) for v in rng.sample(values, 200)] + [("", ""), ("", "a")]
    for a, b in pairs:
        assert mw.partial_ratio(a, b) == fuzz.partial_ratio(a, b), (a, b)


def test_bleu_is_sacrebleu_on_mwzeval_normalised_responses(quick):
    sacrebleu = pytest.importorskip("sacrebleu")
    rng = random.Random(3)
    resp = _gold(quick)
    for r in resp.values():
        words = r["response"].split()
        rng.shuffle(words)
        r["response"] = " ".join(words[: max(1, len(words) - 2)])
    got = mw.evaluate(quick, resp)["summary"]["bleu_vs_delex_2.1_refs"]
    hyps = [mw.normalize_response(resp[e["id"]]["response"]) for e in quick]
    refs = [mw.normalize_response(e["gold_response_delex"]) for e in quick]
    assert got == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, rel=1e-12) and 0 < got < 100


def test_strict_jga_is_exact_as_trade(quick):
    e = next(x for x in quick if any(v.isalpha() for v in mw._flat(x["gold_state"]).values()))
    gold = e["gold_state"]
    dom, slot = next(k for k, v in mw._flat(gold).items() if v.isalpha())
    for variant in (gold[dom][slot].upper(), " " + gold[dom][slot], gold[dom][slot] + "."):
        pred = copy.deepcopy(gold)
        pred[dom][slot] = variant
        rep = mw.evaluate([e], {e["id"]: {"state": pred}})
        assert rep["summary"]["jga_strict"] == 0.0 and rep["items"][0]["error_type"] == f"wrong_value:{dom}-{slot}"
    assert mw.evaluate([e], {e["id"]: {"state": copy.deepcopy(gold)}})["summary"]["jga_strict"] == 1.0


@pytest.mark.parametrize("slot,value,want", [
    ("leave", "5pm", "17:00"), ("leave", "after 10:30 am", "10:30"), ("arrive", "by 5", "05:00"),
    ("arrive", "1530", "15:30"), ("leave", "9:45", "09:45"), ("leave", "noon", "12:00"), ("leave", "", "00:00"),
    ("arrive", "12 pm", "24:00"), ("leave", "x:15 pm", "x:15"), ("leave", "²pm", "²"),
    ("name", " Nando's ", "nandos"), ("name", "Cafe Uno", "caffe uno"), ("destination", "a & b", "a and b"),
    ("food", "English", "british"), ("type", "guest house", "guesthouse"), ("type", "Guest House", "Guest House"),
    ("parking", "free", "yes"), ("area", "West", "West"),
])
def test_mwzeval_value_normalisation(slot, value, want):
    from coalm.eval.multiwoz.norm import mwz_slot, mwz_value

    assert mwz_value(mwz_slot(slot), value) == want


def test_inform_uses_the_name_and_time_fixes(db):
    assert db.query("restaurant", {"name": "nando's"}) == db.query("restaurant", {"name": "nandos"}) != []
    late = db.query("train", {"day": "monday", "departure": "cambridge", "destination": "london kings cross",
                              "leaveat": "5pm"})
    assert late == db.query("train", {"day": "monday", "departure": "cambridge",
                                      "destination": "london kings cross", "leaveat": "17:00"}) != []


def test_malformed_mwzeval_files_name_the_dialogue(tmp_path, quick):
    did = quick[0]["dialogue_id"]
    for turn, message in [({"response": 5}, "'response' must be a string"),
                          ({"response": "x", "active_domains": "hotel"}, "'active_domains' must be a list"),
                          ({"state": [1]}, "'state' must be an object"), (7, "a turn must be an object")]:
        path = tmp_path / "r.json"
        path.write_text(json.dumps({did: [{"response": "ok"}, turn]}))
        with pytest.raises(EvalError, match=f"dialogue '{did}', turn 1: {message}"):
            mw.read_responses(path)
    path.write_text("[" * 100_000)
    with pytest.raises(EvalError, match="r.json"):
        mw.read_responses(path)
