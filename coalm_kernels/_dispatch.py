"""Where an op runs: compiled Triton on CUDA tensors, Triton's interpreter on CPU tensors when
TRITON_INTERPRET=1 (tests), and the plain-torch reference on CPU otherwise."""

import os

import torch

try:  # triton ships for Linux only; elsewhere every op takes its reference path
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover
    HAS_TRITON = False


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when the Triton kernels should run for these tensors (all on one device)."""
    if not HAS_TRITON:
        return False
    t = tensors[0]
    if t.is_cuda:
        return True
    return t.device.type == "cpu" and interpreting()
