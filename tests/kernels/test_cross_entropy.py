"""Fused linear cross-entropy (Triton kernel interpreted on CPU, and the chunked torch path) against fp64.

Reference: F.cross_entropy(hidden @ weight.T) in fp64 from the same inputs; PyTorch's own error is the same
unfused expression in the test dtype. Loss, d hidden and d weight must be within 2x PyTorch's error (counted
as at least half an ulp of the largest value), over vocab sizes that are not a multiple of the kernel's block,
ignored rows, several chunks with a ragged last one, and extra leading dims.
"""

import pytest
import torch

from coalm_kernels.cross_entropy import cross_entropy_ref, fused_linear_cross_entropy, fused_linear_cross_entropy_ref
from tests.kernels.error_bound import assert_within_torch_error

DTYPES = [
    (torch.float32, "cpu"),
    (torch.float16, "cpu"),
    pytest.param(torch.bfloat16, "cuda", marks=pytest.mark.gpu),
]
# (leading dims of hidden, hidden size, vocab, chunk_size, every k-th token ignored (0: none))
CASES = [((37,), 100, 1000, None, 5), ((37,), 64, 4099, 16, 3), ((2, 19), 96, 4099, 8, 4), ((1,), 100, 1000, None, 0)]
IMPLS = {"triton": fused_linear_cross_entropy, "ref": fused_linear_cross_entropy_ref}


def _inputs(lead, D, V, ignore_every, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed + D + V)
    hidden = torch.randn(*lead, D, generator=g)
    weight = torch.randn(V, D, generator=g) * (3 / D**0.5)  # logits of std ~3
    labels = torch.randint(0, V, lead, generator=g)
    if ignore_every:
        labels.view(-1)[::ignore_every] = -100
    return hidden.to(device=device, dtype=dtype), weight.to(device=device, dtype=dtype), labels.to(device)


def _run(fn, hidden, weight, grad_weight=True):
    hidden = hidden.detach().clone().requires_grad_()
    weight = weight.detach().clone().requires_grad_(grad_weight)
    loss = fn(hidden, weight)
    loss.backward()
    return loss, hidden.grad, weight.grad


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype,device", DTYPES)
def test_fused_ce_matches_fp64_within_torch_error(impl, case, dtype, device):
    lead, D, V, chunk, ignore_every = case
    hidden, weight, labels = _inputs(lead, D, V, ignore_every, dtype, device)
    ours = _run(lambda h, w: IMPLS[impl](h, w, labels, chunk_size=chunk), hidden, weight)
    peer = _run(lambda h, w: cross_entropy_ref(h, w, labels), hidden, weight)
    ref = _run(lambda h, w: cross_entropy_ref(h.double(), w.double(), labels), hidden, weight)
    assert ours[0].dtype == torch.float32 and ours[0].shape == ()
    assert ours[1].dtype == dtype and ours[2].dtype == dtype
    for name, o, p, r in zip(("loss", "d_hidden", "d_weight"), ours, peer, ref):
        assert_within_torch_error(name, o, p, r)


@pytest.mark.parametrize("impl", IMPLS)
def test_all_ignored_gives_zero_loss_and_grads(impl):
    hidden, weight, labels = _inputs((2, 5), 32, 300, 0, torch.float32, "cpu")
    loss, d_hidden, d_weight = _run(lambda h, w: IMPLS[impl](h, w, torch.full_like(labels, -100)), hidden, weight)
    assert loss.item() == 0.0
    assert torch.count_nonzero(d_hidden) == 0 and torch.count_nonzero(d_weight) == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_frozen_weight_scaled_grad_no_grad_and_custom_ignore_index(impl):
    hidden, weight, labels = _inputs((23,), 48, 777, 0, torch.float32, "cpu", seed=1)
    labels[::4] = 7  # used as the ignore index below
    fn = IMPLS[impl]
    loss, d_hidden, d_weight = _run(lambda h, w: fn(h, w, labels, ignore_index=7, chunk_size=5), hidden, weight)

    h = hidden.clone().requires_grad_()
    frozen = fn(h, weight, labels.int(), ignore_index=7)  # weight without grad, int32 labels, one chunk
    (frozen * 0.5).backward()
    torch.testing.assert_close(frozen, loss)
    torch.testing.assert_close(h.grad, d_hidden * 0.5)

    with torch.no_grad():
        torch.testing.assert_close(fn(hidden, weight, labels, ignore_index=7), loss)
    ref_loss, ref_dh, ref_dw = _run(
        lambda h, w: torch.nn.functional.cross_entropy(h.double() @ w.double().t(), labels, ignore_index=7),
        hidden, weight)
    for ours, ref in ((loss, ref_loss), (d_hidden, ref_dh), (d_weight, ref_dw)):
        torch.testing.assert_close(ours, ref.float())  # fp32 default tolerances against the fp64 result


def test_bad_inputs_raise():
    hidden, weight, labels = _inputs((6,), 16, 50, 0, torch.float32, "cpu")
    labels[3] = 50
    with pytest.raises(ValueError, match="outside \\[0, 50\\).*token 3"):
        fused_linear_cross_entropy(hidden, weight, labels)
    with pytest.raises(ValueError, match="labels must be"):
        fused_linear_cross_entropy(hidden, weight, labels[:5])
    with pytest.raises(TypeError, match="dtypes differ"):
        fused_linear_cross_entropy(hidden, weight.double(), labels)
