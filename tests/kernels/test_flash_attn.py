"""Flash attention against an fp64 plain-torch reference: forward and dq/dk/dv, padded and packed layouts, GQA,
causal and not, decode over a KV cache, and the CPU SDPA path.

Error rule (as in the flash-attention tests): the kernel's max abs error against the fp64 reference is at most
twice PyTorch's own error computing the same reference in the same low precision, plus a floor of a few fp32
ulps of the largest reference value (the kernels accumulate in fp32), so that values that torch gets exactly
(dq of a length-1 sequence is 0) compare on rounding noise rather than on zero. On CPU the Triton kernels run
in the interpreter (fp16/fp32); on a GPU the same cases run with fp32 replaced by bf16 (half types only there).
"""

import pytest
import torch

from coalm_kernels.flash_attn import flash_attention, flash_attention_decode, flash_attention_ref

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
DTYPES = {"fp16": torch.float16, "fp32": torch.bfloat16 if ON_GPU else torch.float32, "bf16": torch.bfloat16}


def _randn(*shape, dtype, gen, scale=1.0, device=DEVICE):
    return (torch.randn(*shape, generator=gen, dtype=torch.float32) * scale).to(device, dtype)


def _run(fn, inputs, do, **kw):
    """Output and (dq, dk, dv) of fn on fresh leaf copies of the inputs."""
    q, k, v = (x.detach().clone().requires_grad_() for x in inputs)
    o = fn(q, k, v, **kw)
    return [o.detach(), *torch.autograd.grad(o, (q, k, v), do)]


def _assert_within_torch_error(ours, inputs, do, **kw):
    """ours = [out, dq, dk, dv]; compared with the fp64 reference, bounded by the low-precision reference's error."""
    ref = _run(flash_attention_ref, [x.double() for x in inputs], do.double(), **kw)
    low = _run(flash_attention_ref, inputs, do, **kw)
    # floor: fp32 rounding noise (the kernels accumulate in fp32) at the problem's largest value
    floor = 4 * torch.finfo(torch.float32).eps * max(r.abs().max().item() for r in ref)
    for name, a, lo, r in zip(("out", "dq", "dk", "dv"), ours, low, ref):
        assert a.shape == r.shape and a.dtype == inputs[0].dtype, name
        err = (a.double() - r).abs().max().item()
        torch_err = (lo.double() - r).abs().max().item()
        bound = 2 * torch_err + floor
        assert err <= bound, f"{name}: error {err:.3g} > 2 x torch's {torch_err:.3g} (+floor) = {bound:.3g}"


# (T, group, Hkv, D, causal, dtype, batch): a pairwise cover of lengths 1/97/200/257, GQA 1/3/4, D 64/128.
PADDED = [
    (1, 1, 1, 64, True, "fp16", 2),
    (1, 4, 1, 128, False, "fp32", 1),
    (97, 3, 1, 64, True, "fp32", 2),
    (97, 1, 2, 128, False, "fp16", 1),
    (97, 4, 1, 128, True, "fp16", 1),
    (200, 4, 1, 64, False, "fp16", 1),
    (200, 1, 2, 128, True, "fp32", 1),
    (200, 3, 1, 128, True, "fp16", 1),
    (257, 3, 1, 128, False, "fp32", 1),
    (257, 4, 1, 64, True, "fp16", 1),
    (257, 1, 1, 64, True, "fp16", 1),
]


@pytest.mark.parametrize("T,group,hkv,D,causal,dtype,B", PADDED)
def test_padded_forward_backward(T, group, hkv, D, causal, dtype, B):
    gen = torch.Generator().manual_seed(T * 1000 + group * 10 + D)
    dt = DTYPES[dtype]
    hq = group * hkv
    inputs = [_randn(B, T, h, D, dtype=dt, gen=gen) for h in (hq, hkv, hkv)]
    do = _randn(B, T, hq, D, dtype=dt, gen=gen)
    ours = _run(flash_attention, inputs, do, causal=causal)
    _assert_within_torch_error(ours, inputs, do, causal=causal)


def test_strided_inputs_and_scale():
    """q/k/v as head slices of one fused (B, T, Hq + 2 Hkv, D) projection, with a non-default softmax scale."""
    gen = torch.Generator().manual_seed(7)
    qkv = _randn(2, 97, 6 + 2 * 2, 64, dtype=torch.float16, gen=gen)
    inputs = [qkv[:, :, :6], qkv[:, :, 6:8], qkv[:, :, 8:]]
    do = _randn(2, 97, 6, 64, dtype=torch.float16, gen=gen)
    ours = _run(flash_attention, inputs, do, causal=True, softmax_scale=0.3)
    _assert_within_torch_error(ours, inputs, do, causal=True, softmax_scale=0.3)


# (lengths, group, Hkv, D, causal, dtype)
PACKED = [
    ([97, 1, 200, 33], 2, 2, 64, True, "fp16"),
    ([257, 64, 5], 3, 1, 128, False, "fp32"),
    ([130, 1, 97], 4, 1, 128, True, "fp32"),
]


@pytest.mark.parametrize("lengths,group,hkv,D,causal,dtype", PACKED)
def test_packed_equals_each_sequence_alone(lengths, group, hkv, D, causal, dtype):
    gen = torch.Generator().manual_seed(sum(lengths) + D)
    dt = DTYPES[dtype]
    hq, total = group * hkv, sum(lengths)
    cu = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0).to(torch.int32).to(DEVICE)
    inputs = [_randn(total, h, D, dtype=dt, gen=gen) for h in (hq, hkv, hkv)]
    do = _randn(total, hq, D, dtype=dt, gen=gen)
    kw = {"causal": causal, "cu_seqlens": cu, "max_seqlen": max(lengths)}
    ours = _run(flash_attention, inputs, do, **kw)
    _assert_within_torch_error(ours, inputs, do, causal=causal, cu_seqlens=cu)
    # each sequence through the padded path alone (batch of one) gives the same output and gradients
    start = 0
    for n in lengths:
        sl = slice(start, start + n)
        alone = _run(flash_attention, [x[sl][None] for x in inputs], do[sl][None], causal=causal)
        for name, a, b in zip(("out", "dq", "dk", "dv"), ours, alone):
            torch.testing.assert_close(a[sl], b[0], msg=lambda m, name=name, n=n: f"{name}, length {n}: {m}")
        start += n


# (lengths, Tq, group, Hkv, D, dtype)
DECODE = [
    ([5, 97, 200], 1, 4, 1, 64, "fp16"),
    ([19, 160, 33], 5, 3, 1, 128, "fp32"),
    ([200, 40], 19, 4, 2, 64, "fp16"),  # 76 rows per kv head: the multi-block path
]


def _decode_case(lengths, tq, group, hkv, D, dt, gen, device):
    """Caches whose slots past each length hold large stale values, and for every sequence the full-length query
    block whose last Tq rows are the decode queries."""
    B, hq, tmax = len(lengths), group * hkv, max(lengths) + 24
    k_cache = _randn(B, tmax, hkv, D, dtype=dt, gen=gen, scale=30.0, device=device)
    v_cache = _randn(B, tmax, hkv, D, dtype=dt, gen=gen, scale=30.0, device=device)
    q_full = [_randn(n, hq, D, dtype=dt, gen=gen, device=device) for n in lengths]
    for b, n in enumerate(lengths):  # valid cache entries at the normal scale
        k_cache[b, :n] = _randn(n, hkv, D, dtype=dt, gen=gen, device=device)
        v_cache[b, :n] = _randn(n, hkv, D, dtype=dt, gen=gen, device=device)
    q = torch.stack([qf[-tq:] for qf in q_full])  # (B, Tq, Hq, D)
    return q, k_cache, v_cache, q_full, torch.tensor(lengths, dtype=torch.int32, device=device)


def _assert_decode(fn, lengths, tq, group, hkv, D, dt, gen, device=DEVICE):
    q, k_cache, v_cache, q_full, seqlens = _decode_case(lengths, tq, group, hkv, D, dt, gen, device)
    out = fn(q, k_cache, v_cache, seqlens)
    assert out.shape == q.shape and out.dtype == dt
    for b, n in enumerate(lengths):
        # full causal attention of the whole sequence over its valid cache; keep the last Tq rows
        args = (q_full[b][None], k_cache[b, :n][None], v_cache[b, :n][None])
        ref = flash_attention_ref(*(x.double() for x in args), causal=True)[0, -tq:]
        low = flash_attention_ref(*args, causal=True)[0, -tq:]
        err = (out[b].double() - ref).abs().max().item()
        torch_err = (low.double() - ref).abs().max().item()
        bound = 2 * torch_err + 4 * torch.finfo(torch.float32).eps * ref.abs().max().item()
        assert err <= bound, f"sequence {b} (length {n}): error {err:.3g} > {bound:.3g} (torch {torch_err:.3g})"


@pytest.mark.parametrize("lengths,tq,group,hkv,D,dtype", DECODE)
def test_decode_matches_full_attention(lengths, tq, group, hkv, D, dtype):
    gen = torch.Generator().manual_seed(tq * 100 + D)
    _assert_decode(flash_attention_decode, lengths, tq, group, hkv, D, DTYPES[dtype], gen)


# ---- the CPU path (torch SDPA), as the engine runs it without TRITON_INTERPRET ------------------------------


@pytest.fixture
def sdpa_path(monkeypatch):
    """CPU tensors without TRITON_INTERPRET take the SDPA path (on a GPU machine too)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("causal", [True, False])
def test_sdpa_path_padded(sdpa_path, dtype, causal):
    gen = torch.Generator().manual_seed(3)
    inputs = [_randn(2, 97, h, 80, dtype=dtype, gen=gen, device="cpu") for h in (6, 2, 2)]  # any head dim here
    do = _randn(2, 97, 6, 80, dtype=dtype, gen=gen, device="cpu")
    ours = _run(flash_attention, inputs, do, causal=causal)
    if dtype == torch.float64:  # the reference itself is fp64: no low-precision baseline, compare directly
        ref = _run(flash_attention_ref, inputs, do, causal=causal)
        for name, a, r in zip(("out", "dq", "dk", "dv"), ours, ref):
            torch.testing.assert_close(a, r, msg=lambda m, name=name: f"{name}: {m}")
    else:
        _assert_within_torch_error(ours, inputs, do, causal=causal)


@pytest.mark.parametrize("causal", [True, False])
def test_sdpa_path_packed(sdpa_path, causal):
    gen = torch.Generator().manual_seed(4)
    lengths = [130, 1, 257, 40]
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32)
    inputs = [_randn(sum(lengths), h, 64, dtype=torch.float32, gen=gen, device="cpu") for h in (4, 1, 1)]
    do = _randn(sum(lengths), 4, 64, dtype=torch.float32, gen=gen, device="cpu")
    ours = _run(flash_attention, inputs, do, causal=causal, cu_seqlens=cu)
    _assert_within_torch_error(ours, inputs, do, causal=causal, cu_seqlens=cu)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("lengths,tq", [([5, 97, 200], 3), ([5, 97, 200], 1), ([64, 64], 1), ([64, 64], 4), ([1], 1),
                                        ([40, 33], 17)])
def test_sdpa_path_decode(sdpa_path, lengths, tq, dtype):
    """Mixed lengths (masked), equal lengths with one new token (the unmasked branch), several new tokens (17: past
    the bf16/fp16 upcast limit); the cache always has a stale tail past the longest length, which must not be read."""
    gen = torch.Generator().manual_seed(5 + tq)
    _assert_decode(flash_attention_decode, lengths, tq, 4, 1, 96, dtype, gen, device="cpu")


# ---- bad input ---------------------------------------------------------------------------------------------


def test_errors():
    t = torch.zeros(1, 16, 2, 96, device=DEVICE, dtype=torch.float16)
    with pytest.raises(ValueError, match="head dim 96"):
        flash_attention(t, t, t)
    q, kv = torch.zeros(1, 16, 3, 64, dtype=torch.float16), torch.zeros(1, 16, 2, 64, dtype=torch.float16)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        flash_attention(q, kv, kv)
    p = torch.zeros(16, 2, 64, dtype=torch.float16)
    with pytest.raises(ValueError, match="int32"):
        flash_attention(p, p, p, cu_seqlens=torch.tensor([0, 16]))
    with pytest.raises(ValueError, match=r"\(B, T, H, D\)"):
        flash_attention(p, p, p)
    with pytest.raises(ValueError, match="cache_seqlens"):
        flash_attention_decode(q[:, :1, :2], kv, kv, torch.tensor([4]))


# ---- bf16 on a GPU (the interpreter mishandles bf16 dots) ---------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [True, False])
def test_bf16_gpu(causal):
    gen = torch.Generator().manual_seed(11)
    inputs = [_randn(2, 1025, h, 128, dtype=torch.bfloat16, gen=gen) for h in (8, 2, 2)]
    do = _randn(2, 1025, 8, 128, dtype=torch.bfloat16, gen=gen)
    _assert_within_torch_error(_run(flash_attention, inputs, do, causal=causal), inputs, do, causal=causal)
    lengths = [700, 1, 1025, 97]
    cu = torch.tensor([0] + lengths).cumsum(0).to(torch.int32).to(DEVICE)
    inputs = [_randn(sum(lengths), h, 64, dtype=torch.bfloat16, gen=gen) for h in (8, 2, 2)]
    do = _randn(sum(lengths), 8, 64, dtype=torch.bfloat16, gen=gen)
    ours = _run(flash_attention, inputs, do, causal=causal, cu_seqlens=cu)
    _assert_within_torch_error(ours, inputs, do, causal=causal, cu_seqlens=cu)
    _assert_decode(flash_attention_decode, [1000, 3, 517], 2, 4, 2, 128, torch.bfloat16, gen)
