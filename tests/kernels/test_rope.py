"""RoPE kernel (Triton, interpreted on CPU) and its torch reference against transformers' Llama RoPE.

The rotation is checked against HF's `apply_rotary_pos_emb` run in fp64 (the reference) and in the test
dtype (PyTorch's own error): forward and gradient within 2x PyTorch's error, which is counted as at least
half an ulp of the largest output. Frequencies and cos/sin are checked against transformers' Llama 3.1
rope code exactly.
"""

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from coalm_kernels.rope import apply_rope, apply_rope_ref, rope_cos_sin, rope_frequencies
from tests.kernels.error_bound import assert_within_torch_error

LLAMA31 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
DTYPES = [
    (torch.float32, "cpu"),
    (torch.float16, "cpu"),
    pytest.param(torch.bfloat16, "cuda", marks=pytest.mark.gpu),
]
# (leading dims, T, H, D, per-sequence positions)
CASES = [((1,), 97, 3, 64, False), ((1,), 1, 4, 128, False), ((2, 3), 17, 2, 64, False), ((2,), 41, 5, 128, True)]
IMPLS = {"triton": apply_rope, "ref": apply_rope_ref}


def _hf_rope(x, cos, sin):
    """HF's rotation on our (..., T, H, D) layout; HF's cos/sin are (..., T, D) in x's dtype."""
    cos_full = torch.cat((cos, cos), dim=-1).to(x.dtype)
    sin_full = torch.cat((sin, sin), dim=-1).to(x.dtype)
    return apply_rotary_pos_emb(x, x, cos_full, sin_full, unsqueeze_dim=-2)[0]


def _run(fn, x, dy):
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    y.backward(dy.to(y.dtype))
    return y, x.grad


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype,device", DTYPES)
def test_apply_rope_matches_hf_within_torch_error(impl, case, dtype, device):
    lead, T, H, D, per_sequence = case
    g = torch.Generator().manual_seed(T * D + H)
    x = torch.randn(*lead, T, H, D, generator=g).to(device=device, dtype=dtype)
    dy = torch.randn(x.shape, generator=g).to(device=device, dtype=dtype)
    positions = torch.randint(0, 8000, (lead[0], T) if per_sequence else (T,), generator=g).to(device)
    cos, sin = rope_cos_sin(positions, rope_frequencies(D, 500000.0, LLAMA31))

    ours = _run(lambda a: IMPLS[impl](a, cos, sin), x, dy)
    peer = _run(lambda a: _hf_rope(a, cos, sin), x, dy)
    ref = _run(lambda a: _hf_rope(a.double(), cos.double(), sin.double()), x, dy)
    assert ours[0].dtype == dtype and ours[0].shape == x.shape
    for name, o, p, r in zip(("y", "dx"), ours, peer, ref):
        assert_within_torch_error(name, o, p, r)


def test_apply_rope_broadcasts_single_sequence_cos_and_strided_input():
    qkv = torch.randn(2, 9, 3, 4, 64)  # (B, T, 3, H, D): q is a strided view, as after a fused projection
    q = qkv[:, :, 0]
    cos, sin = rope_cos_sin(torch.arange(9)[None], rope_frequencies(64, 10000.0))  # (1, T, D/2)
    torch.testing.assert_close(apply_rope(q, cos, sin), apply_rope_ref(q.contiguous(), cos[0], sin[0]))


@pytest.mark.parametrize("scaling", [None, LLAMA31], ids=["default", "llama3"])
@pytest.mark.parametrize("head_dim,theta", [(64, 10000.0), (128, 500000.0)])
def test_frequencies_and_cos_sin_match_transformers(scaling, head_dim, theta):
    params = {"rope_type": "llama3", "rope_theta": theta, **scaling} if scaling else {"rope_type": "default",
                                                                                         "rope_theta": theta}
    config = LlamaConfig(head_dim=head_dim, hidden_size=4 * head_dim, num_attention_heads=4,
                         max_position_embeddings=131072, rope_parameters=params)
    hf = LlamaRotaryEmbedding(config)
    inv_freq = rope_frequencies(head_dim, theta, scaling)
    assert torch.equal(inv_freq, hf.inv_freq)

    positions = torch.randint(0, 100000, (2, 33), generator=torch.Generator().manual_seed(head_dim))
    cos_hf, sin_hf = hf(torch.zeros(1), positions)  # (B, T, D), halves repeated
    cos, sin = rope_cos_sin(positions, inv_freq)
    torch.testing.assert_close(cos, cos_hf[..., : head_dim // 2])
    torch.testing.assert_close(sin, sin_hf[..., : head_dim // 2])
    cos1, _ = rope_cos_sin(positions[0], inv_freq)
    assert cos1.shape == (33, head_dim // 2) and torch.equal(cos1, cos[0])


def test_bad_inputs_raise():
    cos, sin = rope_cos_sin(torch.arange(5), rope_frequencies(64, 10000.0))
    with pytest.raises(ValueError, match="cos/sin must be"):
        apply_rope(torch.randn(2, 6, 3, 64), cos, sin)
    with pytest.raises(ValueError, match="D even"):
        apply_rope(torch.randn(2, 5, 3, 63), cos, sin)
    with pytest.raises(ValueError, match="unknown \\['beta'\\]"):
        rope_frequencies(64, 10000.0, {**LLAMA31, "beta": 1.0})
    with pytest.raises(ValueError, match="unsupported rope scaling"):
        rope_frequencies(64, 10000.0, {"rope_type": "yarn", **LLAMA31})
