"""SmolLM2-135M from the same GGUF: our logits, greedy tokens and chat-template ids against transformers'."""

import pytest
import torch

PROMPTS = [
    (
        "The history of the Roman Empire spans many centuries, beginning with the founding of the city and the "
        "slow growth of its influence over the Italian peninsula, then across the Mediterranean world, where "
        "legions, roads, aqueducts and a common law bound together peoples of many languages and faiths, until"
    ),
    (
        "def fibonacci(n):\n    '''Return the n-th Fibonacci number, computed iteratively so that large inputs do not "
        "overflow the recursion limit of the interpreter.'''\n    a, b = 0, 1\n    for _ in range(n):\n"
    ),
    (
        "Dear hotel staff, I would like to book a double room for three nights starting on Friday the 14th, with "
        "breakfast included and, if possible, a view of the old harbour. Could you also tell me whether the "
        "parking garage is open at night, and how far it is to walk from the station to the museum? Thanks, Ana."
    ),
]


def _ids(hf_tok, text):
    return hf_tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_match(smol, smol_hf, prompt):
    model, tok = smol
    hf, hf_tok = smol_hf
    ids = tok.encode(prompt)
    assert ids == _ids(hf_tok, prompt)
    assert len(ids) >= 50
    x = torch.tensor([ids])
    with torch.no_grad():
        ours, ref = model(x), hf(x).logits
    assert (ours - ref).abs().max() / ref.abs().max() < 1e-4


def test_batched_rows_match(smol, smol_hf):
    """Two rows of one (B, T) batch give each row's own logits."""
    model, tok = smol
    hf, _hf_tok = smol_hf
    ids = [tok.encode(p)[:50] for p in PROMPTS[:2]]
    x = torch.tensor(ids)
    with torch.no_grad():
        ours, ref = model(x), hf(x).logits
    assert (ours - ref).abs().max() / ref.abs().max() < 1e-4


def test_greedy_tokens_match(smol, smol_hf):
    from engine.serving.offline import generate_ids

    model, tok = smol
    hf, _ = smol_hf
    for prompt in PROMPTS[1:2]:
        ids = tok.encode(prompt)
        ours = generate_ids(model, [ids], max_new_tokens=32)[0]
        with torch.no_grad():
            ref = hf.generate(
                torch.tensor([ids]),
                max_new_tokens=32,
                do_sample=False,
                min_new_tokens=32,
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            )[0, len(ids) :].tolist()
        assert ours == ref[: len(ours)] and len(ours) == 32


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "What is the capital of France?"}],
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Name a prime > 10 ünïcödé 🚀"},
        ],
    ],
)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_ids_match(smol, smol_hf, messages, add_generation_prompt):
    _, tok = smol
    _, hf_tok = smol_hf
    ref = hf_tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    ref = ref["input_ids"] if not isinstance(ref, list) else ref
    ours = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt))
    assert ours == list(ref)


def test_tokenizer_roundtrip_matches_hf(smol, smol_hf):
    _, tok = smol
    _, hf_tok = smol_hf
    texts = [
        "  leading spaces\n\n\ttabs",
        "naïve café — 日本語のテキスト",
        "x = [1, 2, 3]  # comment",
        "<|im_start|>user",
    ]
    for t in texts:
        assert tok.encode(t) == _ids(hf_tok, t)
        assert tok.decode(tok.encode(t)) == t
