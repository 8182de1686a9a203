"""Generation: KV-cache decoding equals full recomputation, a batch of uneven prompts equals each prompt alone,
sampling is seeded, stop tokens/strings end a sequence; the CLI answers and fails cleanly."""

import subprocess
import sys

import pytest
import torch

import engine
from coalm_kernels.flash_attn_cpu import cache_attention, reference
from engine.quantize import Q8Head
from engine.serving.offline import generate_ids, main
from engine.serving.sampling import Params, RequestError, SamplingError, sample


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
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, -3.0])

    def draw(top_p, seed=0, n=4000):
        g, p = torch.Generator().manual_seed(seed), Params(1, temperature=1.0, top_p=top_p)
        return torch.tensor([sample(logits, p, g) for _ in range(n)])

    a = draw(1.0)
    assert torch.equal(a, draw(1.0)) and not torch.equal(a, draw(1.0, seed=1))
    freq = torch.bincount(a, minlength=5).double() / len(a)
    assert torch.allclose(freq, torch.softmax(logits.double(), -1), atol=0.03)
    # top-p 0.6: softmax mass is 0.61 for the first token alone -> only token 0 survives
    assert set(draw(0.6, n=300).tolist()) == {0}
    assert set(draw(0.8, n=300).tolist()) == {0, 1}  # first two tokens: 0.61 + 0.22
    for tiny in (0.0, 5e-324, 1e-300):  # any top_p keeps the top token
        assert set(draw(tiny, n=50).tolist()) == {0}


@pytest.mark.parametrize("t", [0.0, 5e-324, 1e-300, 9.9e-6])
def test_tiny_temperature_is_greedy(t):
    p = Params(4, temperature=t, top_p=1e-300)
    assert p.greedy and p.temperature == 0.0
    logits = torch.randn(49152, generator=torch.Generator().manual_seed(2)) * 30
    assert sample(logits, p) == int(logits.argmax())


def test_sampling_is_finite_at_extremes():
    """Temperature just above the greedy threshold and huge logits (float32's range): float64 log space, no NaN;
    a huge temperature is uniform; NaN / +inf logits fail (that sequence), -inf (masked) tokens are never drawn."""
    g = torch.Generator().manual_seed(3)
    big = torch.tensor([3e38, -3e38, 3.0e38 - 1e32, 0.0])
    assert {sample(big, Params(1, temperature=1.1e-5), g) for _ in range(20)} == {0}
    logits = torch.randn(1000, generator=g) * 50
    logits[::2] = float("-inf")
    drawn = [sample(logits, Params(1, temperature=1e300), g) for _ in range(2000)]
    assert all(t % 2 == 1 for t in drawn) and len(set(drawn)) > 400  # uniform over the 500 unmasked tokens
    for bad in (float("nan"), float("inf")):
        x = logits.clone()
        x[1] = bad
        with pytest.raises(SamplingError):
            sample(x, Params(1, temperature=1.0), g)
    with pytest.raises(SamplingError):
        sample(torch.full((5,), float("-inf")), Params(1, temperature=1.0), g)


@pytest.mark.parametrize("kw", [{"max_tokens": 0}, {"max_tokens": True}, {"temperature": float("nan")},
                                {"temperature": -1e-300}, {"temperature": float("inf")}, {"top_p": 1.0000001},
                                {"top_p": float("nan")}, {"top_p": -0.0001}, {"seed": 2**64},
                                {"seed": -(2**63) - 1}, {"seed": 1.5}, {"temperature": "1"}, {"stop": "x"}])
def test_invalid_params_are_request_errors(kw):
    with pytest.raises(RequestError):
        Params(**{"max_tokens": 3, **kw})


def test_cache_attention_matches_fp64_reference():
    """The cache's attention (one sequence, head-major K/V, bottom-right causal) against plain fp64 softmax attention,
    at decode (Tq 1), a first chunk (Tq = L) and a later chunk (Tq < L), with GQA and odd lengths."""
    g = torch.Generator().manual_seed(4)
    for tq, tk, hq, hkv, d in [(1, 1, 4, 2, 8), (1, 97, 9, 3, 64), (33, 33, 6, 2, 16), (17, 200, 8, 8, 32),
                               (5, 1025, 4, 1, 96)]:
        q, k, v = (torch.randn(n, h, d, generator=g) for n, h in ((tq, hq), (tk, hkv), (tk, hkv)))
        got = cache_attention(q, k.transpose(0, 1), v.transpose(0, 1), d ** -0.5)
        want = reference(q.double()[None], k.double()[None], v.double()[None], True, None, d ** -0.5)[0]
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_cli_tiny_temperature_does_not_crash(capsys):
    argv = ["--model", "debug", "--random-init", "--prompt", "hi", "--max-new-tokens", "3", "--raw"]
    assert main(argv + ["--temperature", "1e-300", "--top-p", "1e-300"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(argv + ["--temperature", "nan"]) == 2
    assert capsys.readouterr().err.startswith("error: temperature must be a finite number >= 0, got nan")


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


@pytest.mark.parametrize("k", [208, 203])  # 203: not a multiple of 16, the native op's constraint (dequantized)
def test_q8_head_within_its_rounding_bound(k):
    """The NF4 models' 8-bit LM head against the fp64 product with the fp32 weight: each logit's error stays within
    what the format allows (scale/2 * ||x||_1 from the int8 codes, bf16 rounding of x, of the scales and of the
    result: unit roundoff 2^-8 each), on weights with outlier columns and an awkward shape; the bound itself is a
    small fraction of the logits' spread, so the check is not vacuous."""
    g = torch.Generator().manual_seed(6)
    w = torch.randn(k, 1037, generator=g).T * 0.05  # a transposed view, as GGUF-loaded weights can be
    w[::7, 3] *= 40  # outliers: the row's scale grows, its other codes get coarser
    x = torch.randn(2, 5, k, generator=g) * 3
    head = Q8Head(w)
    got = head(x).double()
    ref = x.double() @ w.double().T
    u = 2.0**-8
    deq = head.codes.double().abs() * head.scale.double()[:, None]  # |q| * s
    bound = (head.scale.double() / 2 * x.double().abs().sum(-1, keepdim=True) + 3 * u * (x.double().abs() @ deq.T)
             + u * ref.abs()) * (1 + 4 * u)
    assert ((got - ref).abs() <= bound).all()
    # and typical, not only worst-case: rounding W is uniform in +-s/2, so a logit's error has std s/sqrt(12) *
    # ||x||_2; bf16 rounding of x and of the result adds about a third of that here (3 * 2^-8 / sqrt(3) relative)
    typical = head.scale.double() / 12**0.5 * x.double().norm(dim=-1, keepdim=True)
    assert ((got - ref) / typical).pow(2).mean().sqrt() < 1.25
    assert got.shape == (2, 5, 1037) and got.dtype == torch.float64
