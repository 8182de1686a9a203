"""engine.data.render: the chat rendering's loss mask and truncation, with the engine's real tokenizers, checked
against the template's own rendering of the whole conversation."""

import random

import pytest

from engine.data import IGNORE, load, render_row, render_rows
from engine.data.render import RenderStats, messages
from engine.tokenizer import load_tokenizer


@pytest.fixture(scope="module", params=["llama3", "smollm2-135m"])
def tok(request):
    return load_tokenizer(request.param)


@pytest.fixture(scope="module")
def rows():
    r = load("sample")
    by = {}
    for x in r:  # a few rows of every format
        by.setdefault(x["meta"]["format"], []).append(x)
    return [x for v in by.values() for x in v[:4]]


def test_mask_covers_exactly_output_and_eot(tok, rows):
    for row in rows:
        ids, labels = render_row(row, tok)
        # Independent reference: the template's rendering of the whole conversation, assistant turn included.
        full = tok.apply_chat_template(messages(row) + [{"role": "assistant", "content": row["output"]}])
        full_ids = tok.encode(full, bos=False)
        assert full_ids[: len(ids)] == ids
        k = sum(y == IGNORE for y in labels)
        assert all(y == IGNORE for y in labels[:k]) and all(y != IGNORE for y in labels[k:])
        assert labels[k:] == ids[k:]
        assert tok.decode(ids[:k]) == tok.apply_chat_template(messages(row), add_generation_prompt=True)
        assert tok.decode(labels[k:]) == row["output"] + tok.decode([tok.eot_id])
        assert labels[-1] == tok.eot_id and labels.count(tok.eot_id) == 1


def test_truncation_keeps_target_and_template(tok):
    rng = random.Random(1)
    words = ["alpha", "beta", "gamma", "delta", "epsilon"]
    row = {"instruction": " ".join(rng.choice(words) for _ in range(700)) + " END_OF_INSTRUCTION",
           "input": "User: " + " ".join(rng.choice(words) for _ in range(50)),
           "output": 'System: {"domain": "X", "slot_values": {}}'}
    ids0, labels0 = render_row(row, tok)
    n_target = sum(y != IGNORE for y in labels0)
    gen_prompt = tok.apply_chat_template(
        [{"role": "system", "content": ""}, {"role": "user", "content": ""}], add_generation_prompt=True)
    fixed = len(tok.encode(gen_prompt, bos=False))
    for max_len in (len(ids0) - 1, 300, fixed + n_target + 10, fixed + n_target + 60, fixed + n_target):
        stats = RenderStats()
        ids, labels = render_row(row, tok, max_len=max_len, stats=stats)
        assert len(ids) == max_len and stats.truncated == 1
        assert labels[-n_target:] == labels0[-n_target:] and sum(y != IGNORE for y in labels) == n_target
        text = tok.decode(ids[:-n_target])
        # template markers intact: same start as the untruncated prompt, same assistant header at the end
        head = gen_prompt[: gen_prompt.index("\n") + 1]
        assert text.startswith(head) and text.endswith(gen_prompt[-12:])
    # the instruction is cut first (from the left); the input survives whole while it fits
    ids, _ = render_row(row, tok, max_len=300)
    text = tok.decode(ids)
    assert row["input"] in text and "END_OF_INSTRUCTION" in text and text.count("alpha") < row["instruction"].count(
        "alpha")
    stats = RenderStats()
    assert render_row(row, tok, max_len=fixed + n_target - 1, stats=stats) is None
    assert stats.dropped == 1 and stats.rendered == 0


def test_render_rows_matches_per_row_template(tok, rows):
    odd = dict(rows[0], instruction="  leading and trailing space \n", input="\nUser: x  ")
    out, stats = render_rows(rows + [odd], tok)
    assert out == [render_row(r, tok) for r in rows + [odd]] and stats.rendered == len(rows) + 1


def test_render_rows_counts_drops(tok, rows):
    long = dict(rows[0], output="word " * 400, meta={"id": "too-long"})
    out, stats = render_rows(rows + [long], tok, max_len=256)
    assert len(out) + stats.dropped == len(rows) + 1 and "too-long" in stats.dropped_ids
    assert all(len(x) <= 256 for x, _ in out)
