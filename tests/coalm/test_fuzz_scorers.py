"""Seeded fuzzing of every scorer: mutated gold answers (and mutated responses files) never knock a scorer over.

For each benchmark, a few thousand gold outputs are mutated (hostile fragments inserted, spans cut, duplicated or
truncated) and scored one item at a time. Asserted: no exception escapes the scorer; each item is scored in under a
second of CPU time; no string in the report (as written to disk) is longer than a few KB, so nothing echoes a huge
output.
Responses files with mutated lines either load or raise the one-line `EvalError`, never anything else.
"""

from __future__ import annotations

import json
import random
import time

import pytest

from coalm.eval import api_bank, bfcl
from coalm.eval import multiwoz as mw
from coalm.eval.base import EvalError, data_root, write_report

ROOT = data_root()
MAX_ECHO = 4096
HOSTILE = ["[", "]", "(", ")", "{", "}", "'", '"', "\\", "\ud800", "²", "=", ",", "*", "**", "\n", "\x00", "🙂",
           "0x" + "f" * 5000, "10**4301", "2**50000", "'%0100000000d' % 1", "'a'*100000*10000", "[" * 5000,
           "(" * 300, "-" * 3000 + "1", "9" * 5000, "__import__('os')", "os.system('touch x')", "__class__()",
           "lambda: 1", "...", "None", "1e999", "x=" * 3000, "a='" * 3000, "[A(" * 2000, '{"a":' * 3000,
           "'" + "a" * 30000, "[ls()]", "cd(folder='..')", "rm(file_name='x')", "{'pwd': {}}", "{}"]


def mutate(text: str, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(text) + 1)
        j = min(len(text), i + rng.randrange(1, 40))
        op = rng.randrange(6)
        if op <= 1:
            text = text[:i] + rng.choice(HOSTILE) + text[i:]
        elif op == 2:
            text = text[:i] + text[j:]
        elif op == 3:
            text = text[:j] + text[i:j] * rng.randint(2, 50) + text[j:]
        elif op == 4:
            text = text[:i]
        else:
            text = text[:i] + rng.choice(HOSTILE) + text[j:]
    return text


def check_report(report: dict, tmp_path) -> None:
    path = write_report(report, tmp_path / "report.json")
    stack = [json.loads(path.read_text(encoding="utf-8"))]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str):
            assert len(node) <= MAX_ECHO, node[:200]


def score_each(task, pairs, tmp_path) -> None:
    """pairs: [(example, saved output)], each scored alone and timed."""
    items = []
    for ex, out in pairs:
        t0 = time.process_time()  # CPU time: the limit is on the scorer's work, not on how busy the machine is
        report = task.evaluate([ex], {ex["id"]: out})
        took = time.process_time() - t0
        assert took < 1.0, (ex["id"], took, repr(out)[:300])
        items += report["items"]
    check_report({"items": items}, tmp_path)


def fuzz_file(read, lines: list[str], tmp_path, rng: random.Random, name: str, n: int = 150) -> None:
    for _ in range(n):
        path = tmp_path / name
        mutated = [mutate(line, rng) if rng.random() < 0.3 else line for line in rng.sample(lines, min(8, len(lines)))]
        path.write_text("\n".join(mutated) + "\n", encoding="utf-8", errors="surrogatepass")
        try:
            read(path)
        except EvalError as e:
            assert "\n" not in str(e) and len(str(e)) < MAX_ECHO


@pytest.mark.skipif(not (ROOT / "bfcl").is_dir(), reason="needs the shared BFCL data")
def test_fuzz_bfcl_single_turn(tmp_path):
    from test_eval_bfcl import render_python

    rng = random.Random(101)
    examples = bfcl.load_examples(ROOT, bfcl.Options(category="single_turn", per_category_limit=60))
    golds = [(ex, render_python(ex) if ex["answer"] else "[]") for ex in examples]
    pairs = [(ex, mutate(text, rng)) for _ in range(4) for ex, text in golds]
    assert len(pairs) >= 2000
    score_each(bfcl, pairs, tmp_path)
    lines = [json.dumps({"id": ex["id"], "result": text}, ensure_ascii=False) for ex, text in golds[:200]]
    fuzz_file(bfcl.read_responses, lines, tmp_path, rng, "r.jsonl")


@pytest.mark.skipif(not (ROOT / "bfcl").is_dir(), reason="needs the shared BFCL data")
def test_fuzz_bfcl_multi_turn(tmp_path):
    pytest.importorskip("bfcl_eval")
    from test_eval_bfcl_multi_turn import gold_result

    rng = random.Random(202)
    examples = bfcl.load_examples(ROOT, bfcl.Options(category="multi_turn", per_category_limit=None))
    pairs = []
    for _ in range(6):
        for ex in examples:
            result = gold_result(ex)
            t = rng.randrange(len(result))
            s = rng.randrange(len(result[t]))
            result[t][s] = mutate(result[t][s], rng)
            if rng.random() < 0.2:
                result[t] = result[t] * rng.randint(2, 5)  # more steps
            pairs.append((ex, result))
    score_each(bfcl, pairs, tmp_path)
    lines = [json.dumps({"id": ex["id"], "result": gold_result(ex)}) for ex in examples[:20]]
    fuzz_file(bfcl.read_responses, lines, tmp_path, rng, "mt.jsonl", n=100)


@pytest.mark.skipif(not (ROOT / "apibank").is_dir(), reason="needs the shared API-Bank data")
def test_fuzz_api_bank(tmp_path):
    rng = random.Random(303)
    examples = api_bank.load_examples(ROOT)
    golds = [(ex, api_bank.render_call(ex["gold"]["api_name"], ex["gold"]["param_dict"])
              if ex["kind"] == "api_call" else ex["gold"]["text"]) for ex in examples]
    pairs = [(ex, mutate(text, rng)) for _ in range(3) for ex, text in golds]
    assert len(pairs) >= 2000
    score_each(api_bank, pairs, tmp_path)
    lines = [json.dumps({"file": ex["file"], "id": ex["index"], "pred": text}) for ex, text in golds[:200]]
    fuzz_file(api_bank.read_responses, lines, tmp_path, rng, "r.jsonl")


@pytest.mark.skipif(not (ROOT / "multiwoz").is_dir(), reason="needs the shared MultiWOZ data")
def test_fuzz_multiwoz(tmp_path):
    rng = random.Random(404)
    examples = mw.load_examples(ROOT, mw.Options(multiwoz_subset="quick"))
    turns = rng.choices(examples, k=1500)
    pairs = []
    for ex in turns:  # DST: the state as the model would write it, mutated, parsed as generated text is
        text = mutate(json.dumps(ex["gold_state"]), rng)
        pairs.append((ex, mw.responses_from_texts([ex], [text])[ex["id"]]))
    for ex in rng.sample(turns, 300):  # states given directly, with hostile values
        state = json.loads(json.dumps(ex["gold_state"]))
        if state:
            dom = rng.choice(sorted(state))
            state[dom][rng.choice(sorted(state[dom]) + ["x" * 50])] = mutate(rng.choice(HOSTILE), rng)
        pairs.append((ex, {"state": state, "response": mutate(ex["gold_response_delex"], rng)}))
    score_each(mw, pairs, tmp_path)
    # Inform/Success/BLEU: whole dialogues with mutated responses, states and active domains.
    by_dialog: dict = {}
    for ex in examples:
        by_dialog.setdefault(ex["dialogue_id"], []).append(ex)
    items = []
    for did in rng.sample(sorted(by_dialog), 40):
        exs = by_dialog[did]
        resp = {ex["id"]: {"response": mutate(ex["gold_response_delex"], rng),
                           "state": {d: {s: mutate(v, rng) for s, v in slots.items()}
                                     for d, slots in ex["gold_state"].items()}} for ex in exs}
        t0 = time.process_time()
        items += mw.evaluate(exs, resp)["items"]
        assert time.process_time() - t0 < 1.0 * len(exs)
    check_report({"items": items}, tmp_path)
    data = {ex["dialogue_id"]: [{"response": ex["gold_response_delex"], "state": ex["gold_state"]}]
            for ex in examples[:50]}
    lines = json.dumps(data, indent=0).split("\n")
    for _ in range(150):
        path = tmp_path / "mw.json"
        path.write_text("\n".join(mutate(x, rng) if rng.random() < 0.05 else x for x in lines),
                        encoding="utf-8", errors="surrogatepass")
        try:
            mw.read_responses(path)
        except EvalError as e:
            assert "\n" not in str(e) and len(str(e)) < MAX_ECHO
