"""Streamed tool-call deltas (engine.structured.stream): for random call lists cut into random pieces, the deltas
rebuild exactly the calls that `json` reads from the whole text, in both formats."""

import json
import random

import pytest

from engine.structured.stream import ToolCallStream


def _random_value(rng, depth=0):
    kinds = ["s", "i", "f", "b", "n"] + (["o", "a"] if depth < 3 else [])
    k = rng.choice(kinds)
    if k == "s":
        return "".join(rng.choice(['a', '"', '\\', '{', '}', '[', ']', ' ', 'é', '\n', ',', ':']) for _ in range(5))
    if k == "i":
        return rng.randint(-10**6, 10**6)
    if k == "f":
        return rng.uniform(-1e3, 1e3)
    if k == "b":
        return rng.random() < 0.5
    if k == "n":
        return None
    if k == "a":
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {"k" + str(i) + rng.choice(["", "}", '"']): _random_value(rng, depth + 1) for i in range(rng.randint(0, 3))}


@pytest.mark.parametrize("fmt", ["llama3", "la"])
@pytest.mark.parametrize("seed", range(20))
def test_deltas_rebuild_the_calls(fmt, seed):
    rng = random.Random(f"{seed}-{fmt}")
    calls = [{"name": f"f{i}.x_y", "arguments": {f"a{j}": _random_value(rng) for j in range(rng.randint(0, 3))}}
             for i in range(rng.randint(1, 4))]
    key = "parameters" if fmt == "llama3" else "arguments"
    parts = [json.dumps({"name": c["name"], key: c["arguments"]}, ensure_ascii=rng.random() < 0.5) for c in calls]
    text = rng.choice(["", "; ", "\n"]).join(parts) if fmt == "llama3" else "[" + ", ".join(parts) + "]"
    stream, deltas, cut = ToolCallStream(fmt), [], 0
    while cut < len(text):
        cut = min(len(text), cut + rng.randint(1, 7))
        deltas += stream.feed(text[:cut])
    rebuilt: dict[int, dict] = {}
    for d in deltas:
        c = rebuilt.setdefault(d["index"], {"name": None, "arguments": ""})
        if "id" in d:
            assert c["name"] is None and d["type"] == "function"
            c["name"] = d["function"]["name"]
        c["arguments"] += d["function"]["arguments"]
    assert [rebuilt[i]["name"] for i in sorted(rebuilt)] == [c["name"] for c in calls]
    assert [json.loads(rebuilt[i]["arguments"]) for i in sorted(rebuilt)] == [c["arguments"] for c in calls]
    assert [c["function"]["arguments"] for c in stream.calls] == [rebuilt[i]["arguments"] for i in sorted(rebuilt)]


def test_nothing_before_a_header_is_complete():
    s = ToolCallStream("la")
    assert s.feed('[{"name": "get_w') == [] and s.feed('[{"name": "get_weather", "argum') == []
    d = s.feed('[{"name": "get_weather", "arguments": {"c')
    assert d[0]["function"] == {"name": "get_weather", "arguments": ""} and d[1]["function"]["arguments"] == '{"c'


def test_text_answers_give_no_calls():
    s = ToolCallStream("llama3")
    assert s.feed("Sure, here is the JSON:") == [] and s.feed('Sure, here is the JSON: {"name": "f", "parameters": {}}') == []
    assert ToolCallStream.is_text("Sure") and ToolCallStream.is_text("") is None and not ToolCallStream.is_text("[")
