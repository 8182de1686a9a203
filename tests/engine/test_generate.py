"""Generation: KV-cache decoding equals full recomputation, a batch of uneven prompts equals each prompt alone,
sampling is seeded, stop tokens/strings end a sequence; the CLI answers and fails cleanly."""

import subprocess
import sys

import pytest
import torch

import engine
from engine.generation import _sample, generate_ids


@pytest.fixture(scope="module")
def debug_model():
    model, tok = engine.load("debug", random_init=True, dtype=torch.float32, device="cpu", seed=3)
    with torch.no_grad():  # spread the logits so greedy choices are far from ties
        model.lm_head.weight.mul_(20)
    return model, tok


def _greedy_by_recompute(model, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        with torch.no_grad():
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt) :]


def test_cache_decoding_equals_recompute(debug_model):
    model, _ = debug_model
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 49152, (37,), generator=g).tolist()
    assert generate_ids(model, [prompt], max_new_tokens=12) == [_greedy_by_recompute(model, prompt, 12)]


def test_uneven_batch_equals_singles(debug_model):
    model, _ = debug_model
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 49152, (n,), generator=g).tolist() for n in (1, 23, 9, 64)]
    batched = generate_ids(model, prompts, max_new_tokens=10)
    assert batched == [generate_ids(model, [p], max_new_tokens=10)[0] for p in prompts]


def test_stop_ids_end_each_sequence(debug_model):
    model, _ = debug_model
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12]]
    free = generate_ids(model, prompts, max_new_tokens=8)
    stop = free[0][3]
    cut = generate_ids(model, prompts, max_new_tokens=8, stop_ids={stop})
    for f, c in zip(free, cut):
        assert c == (f[: f.index(stop)] if stop in f else f)


def test_sampling_seeded_and_top_p():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]]).repeat(4000, 1)
    a = _sample(logits, 1.0, 1.0, torch.Generator().manual_seed(0))
    b = _sample(logits, 1.0, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    freq = torch.bincount(a, minlength=5).float() / len(a)
    assert torch.allclose(freq, torch.softmax(logits[0], -1), atol=0.03)
    # top-p 0.6: softmax mass is 0.61 for the first token alone -> only token 0 survives
    c = _sample(logits, 1.0, 0.6, torch.Generator().manual_seed(0))
    assert set(c.tolist()) == {0}
    d = _sample(logits, 1.0, 0.8, torch.Generator().manual_seed(0))  # first two tokens: 0.61 + 0.22
    assert set(d.tolist()) == {0, 1}


def test_stop_strings_and_text(smol):
    model, tok = smol
    msgs = [{"role": "user", "content": "Count from one to ten in words, separated by commas."}]
    full = engine.generate(model, tok, msgs, max_new_tokens=30)
    assert len(full) > 8
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = engine.generate(model, tok, msgs, max_new_tokens=30, stop=[stop])
    assert cut == full[: full.index(stop)]


def test_cli_answers_paris():
    r = subprocess.run(  # noqa: PLW1510 (the return code is asserted)
        [
            sys.executable,
            "-m",
            "engine.generate",
            "--model",
            "smollm2-135m",
            "--prompt",
            "What is the capital of France?",
            "--max-new-tokens",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


def test_cli_user_error_is_one_line():
    r = subprocess.run(  # noqa: PLW1510 (the return code is asserted)
        [sys.executable, "-m", "engine.generate", "--model", "llama-9b", "--prompt", "x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: unknown model preset") and "Traceback" not in r.stderr
