"""The kernels' accuracy rule (STYLE.md): the error against an fp64 reference is at most twice PyTorch's own error
computing the same thing in the same precision. PyTorch's error is counted as at least half an ulp of the largest
reference value (what rounding the exact result costs): below that, the ratio of two tiny maxima is noise."""

import torch


def max_err(t: torch.Tensor, ref64: torch.Tensor) -> float:
    return (t.double() - ref64).abs().max().item()


def assert_within_torch_error(name: str, ours: torch.Tensor, peer: torch.Tensor, ref64: torch.Tensor):
    e_ours = max_err(ours, ref64)
    e_torch = max(max_err(peer, ref64), torch.finfo(peer.dtype).eps / 2 * ref64.abs().max().item())
    assert e_ours <= 2 * e_torch, f"{name}: max error {e_ours:.3g} vs PyTorch's {e_torch:.3g}"
