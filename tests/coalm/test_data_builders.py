"""Builders on the shared sources, the contamination check, mixtures, and the embedded sample."""

import itertools
import json
import random
import re
from pathlib import Path

import pytest

from coalm.data import DataError, generate_sample, load_sample, mix, validate_row
from coalm.data import formats as F
from coalm.data.builders import build_sgd_cra, build_sgd_la, build_snips_dst
from coalm.data.contamination import ContaminationIndex, collect_queries, query_providers
from coalm.eval.base import data_root

ROOT = data_root()
needs_data = pytest.mark.skipif(not (ROOT / "sgd").is_dir(), reason=f"shared data not at {ROOT}")


@needs_data
def test_snips_dst_rows():
    rows = build_snips_dst(ROOT, limit=5)
    assert len(rows) == 35 and all(validate_row(r) is None for r in rows)
    raw = json.loads((ROOT / "snips/GetWeather/train_GetWeather.json").read_text())["GetWeather"]
    for r in rows:
        st = F.parse_dst(r["output"])
        assert r["output"].startswith("System: ") and st is not None and r["input"].startswith("User: ")
        # every slot is listed for its domain in the instruction, and every value is a span of the utterance
        line = next(x for x in r["instruction"].splitlines() if x.startswith(f"- {st['domain']}:"))
        for slot, v in st["slot_values"].items():
            assert slot in line.split(": ", 1)[1].split(", ")
            assert all(x in r["input"] for x in (v if isinstance(v, list) else [v]))
    weather = [r for r in rows if F.parse_dst(r["output"])["domain"] == "GetWeather"]
    first = raw[0]["data"]
    assert weather[0]["input"] == "User: " + " ".join("".join(p["text"] for p in first).split())
    assert F.parse_dst(weather[0]["output"])["slot_values"] == {p["entity"]: p["text"].strip()
                                                                for p in first if "entity" in p}


@needs_data
def test_sgd_la_rows():
    rows = build_sgd_la(ROOT, limit_dialogues=40, seed=3)
    assert rows and all(validate_row(r) is None for r in rows)
    assert any(r["meta"]["no_tool"] for r in rows) and not all(r["meta"]["no_tool"] for r in rows)
    for r in rows:
        tools = json.loads(r["instruction"].split("[BEGIN OF AVAILABLE TOOLS]\n")[1].split("\n[END OF")[0])
        names = {t["name"] for t in tools}
        calls = F.parse_calls(r["output"])
        assert calls is not None and len(tools) >= 3
        if r["meta"]["no_tool"]:
            assert calls == []
        else:
            (c,) = calls
            assert c["name"] in names
            params = next(t for t in tools if t["name"] == c["name"])["parameters"]
            assert set(c["arguments"]) <= set(params)


@needs_data
def test_sgd_cra_rows():
    rows = build_sgd_cra(ROOT, limit_dialogues=5)
    assert all(validate_row(r) is None for r in rows)
    acts = [r for r in rows if r["meta"]["format"] == "cra_action"]
    resp = [r for r in rows if r["meta"]["format"] == "cra_response"]
    assert acts and resp and all(r["meta"]["thought"] == "templated" for r in rows)
    for r in acts:
        name, args = F.parse_action(r["output"])
        assert f"- {name}(" in r["instruction"] and r["input"].splitlines()[1].startswith("Thought: ")
        assert all(isinstance(v, str) for v in args.values())
    for r in resp:
        assert r["output"].startswith("System: ") and r["input"].startswith("User: ")
    # each turn's history holds the previous exchange's user line, and at most 6 exchanges
    d0 = [r for r in rows if r["meta"]["id"].startswith(rows[0]["meta"]["id"].rsplit("/", 1)[0] + "/")]
    turns = sorted({int(r["meta"]["id"].rsplit("/", 1)[1]) for r in d0})
    first = {t: next(r for r in d0 if r["meta"]["id"].endswith(f"/{t}")) for t in turns}
    for prev, cur in itertools.pairwise(turns):
        assert first[prev]["input"].splitlines()[0] in first[cur]["instruction"]
        assert first[cur]["instruction"].count("\nUser: ") == min(6, turns.index(cur))


@needs_data
def test_contamination_catches_planted_items():
    queries = collect_queries(ROOT, query_providers())  # the evaluators' own test queries
    assert set(queries) == {"bfcl", "api-bank", "multiwoz"}
    index = ContaminationIndex(queries)
    rng = random.Random(0)
    clean = build_snips_dst(ROOT, limit=10)
    assert index.filter(clean) == (clean, {})
    for bench, qs in queries.items():
        long = [q for q in qs if len(re.findall(r"[A-Za-z0-9]+", q)) >= 14]
        q = rng.choice(long)
        # planted verbatim, with changed case/punctuation, and as a 13-word window inside other text
        words = re.findall(r"[A-Za-z0-9]+", q)
        s = rng.randrange(len(words) - 13 + 1)
        variants = [q, q.upper().replace(",", " ,"), "Hello there. " + " ".join(words[s : s + 13]) + " thanks"]
        for v in variants:
            row = dict(clean[0], input=f"User: {v}")
            assert index.check(row) == bench, (bench, v)
            kept, dropped = index.filter(clean + [row])
            assert kept == clean and dropped == {bench: 1}
    # a whole short query (10-12 words) is caught too; one of under 10 words is not indexed
    idx = ContaminationIndex({"t": ["Book me a table for two at eight in Cambridge tonight",
                                    "yes please book it"]})
    assert idx.check_text("ok. book me a table for two at eight in cambridge tonight!") == "t"
    assert idx.check_text("yes please book it") is None


def test_mix_dedup_weights_and_val():
    mk = lambda tag, n: [{"instruction": "i", "input": f"{tag}{k}", "output": "o"} for k in range(n)]
    a, b = mk("a", 40), mk("b", 10)
    train, val, stats = mix({"a": a + a[:5], "b": b + a[:3]}, {"a": 0.5, "b": 2.5}, val_frac=0.1, seed=1)
    assert stats["a"]["duplicates"] == 5 and stats["b"]["duplicates"] == 3
    key = lambda r: (r["instruction"], r["input"], r["output"])
    assert not {key(r) for r in val} & {key(r) for r in train}
    assert stats["a"]["val"] == 4 and stats["a"]["train"] == 18 and stats["b"]["val"] == 1
    assert stats["b"]["train"] == 9 * 2 + round(0.5 * 9)
    again = mix({"a": a + a[:5], "b": b + a[:3]}, {"a": 0.5, "b": 2.5}, val_frac=0.1, seed=1)
    assert again[0] == train and again[1] == val
    with pytest.raises(DataError, match="unknown source"):
        mix({"a": a}, {"c": 1.0})


def test_sample_committed_deterministic_and_disjoint():
    train, evals = generate_sample(seed=0)
    assert train == load_sample("train") and evals == load_sample("eval")
    assert generate_sample(seed=1)[0] != train
    assert {r["input"] for r in train}.isdisjoint(r["input"] for r in evals)
    for r in train + evals:
        assert validate_row(r) is None and F.row_format(r) == r["meta"]["format"]
    sample_dir = Path(__file__).resolve().parents[2] / "engine/data/sample"
    assert sorted(p.name for p in sample_dir.iterdir()) == ["eval.jsonl", "train.jsonl"]
