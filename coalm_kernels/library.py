"""torch.library registrations that let the engine's Triton kernels run under FakeTensorMode (memory planning of a
GPU step on a machine without one, `engine.memory.trace`) and be seen as single ops by torch.compile.

Two pieces:
- `fake_launches()`: while active, a Triton launch whose arguments include a FakeTensor does nothing. Every kernel
  of this package writes into outputs its host code allocates with torch (`torch.empty`, `empty_like`), so under
  FakeTensorMode the allocations, the saved tensors and the frees are exactly the real code's; only the launch,
  which would read fake pointers, is skipped. This keeps the memory model from drifting from the host code.
- `coalm::flash_attn_fwd` / `coalm::flash_attn_bwd`: custom ops over the attention launchers with fake
  (meta) implementations giving the output shapes (O like q, the fp32 log-sum-exp, dq/dk/dv). `flash_attn.py`
  can route `_FlashAttention` through them (the hook is a two-line change owned by the kernels' file) so that
  torch.compile traces attention as one opaque op instead of graph-breaking on the Triton launch.
"""

from __future__ import annotations

import contextlib

import torch
from torch._subclasses.fake_tensor import FakeTensor


def _has_fake(args, kwargs) -> bool:
    return any(isinstance(a, FakeTensor) for a in (*args, *kwargs.values()))


@contextlib.contextmanager
def fake_launches():
    """Skip Triton launches on fake tensors (JIT functions, autotuners and heuristics), restoring them on exit."""
    try:
        from triton.runtime.autotuner import Autotuner, Heuristics
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction
    except ImportError:  # no Triton: the CPU paths are plain torch and trace as they are
        yield
        return
    originals = {cls: cls.run for cls in (JITFunction, Autotuner, Heuristics, InterpretedFunction)}

    def wrap(orig):
        def run(self, *args, **kwargs):
            if _has_fake(args, kwargs):
                return None
            return orig(self, *args, **kwargs)

        return run

    for cls, orig in originals.items():
        cls.run = wrap(orig)
    try:
        yield
    finally:
        for cls, orig in originals.items():
            cls.run = orig


# ---------------------------------------------------------------------------------------- the native CPU ops
def _register_native_fakes():
    """coalm::nf4_quantize (csrc/) has no Meta kernel (its dequantize/linear siblings do): its output shapes."""
    from coalm_kernels import native

    if not native.available():
        return

    @torch.library.register_fake("coalm::nf4_quantize")
    def _(w, mids, blocksize):
        n = w.numel()
        return w.new_empty(((n + 1) // 2,), dtype=torch.uint8), w.new_empty((-(-n // blocksize),), dtype=torch.float32)


_register_native_fakes()  # also loads the extension first: its TORCH_LIBRARY(coalm) defines the namespace


# ---------------------------------------------------------------------------------------- flash attention as ops
@torch.library.custom_op("coalm::flash_attn_fwd", mutates_args=())
def flash_attn_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, cu_seqlens: torch.Tensor | None,
                   max_seqlen: int | None, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(O, lse): the Triton forward (`coalm_kernels.flash_attn._forward`)."""
    from coalm_kernels.flash_attn import _forward

    o, lse, _, _ = _forward(q, k, v, causal, cu_seqlens, max_seqlen, scale)
    return o, lse


@flash_attn_fwd.register_fake
def _(q, k, v, causal, cu_seqlens, max_seqlen, scale):
    if cu_seqlens is not None:  # packed (total, Hq, D): lse (Hq, total)
        return torch.empty_like(q), q.new_empty((q.shape[-2], q.shape[0]), dtype=torch.float32)
    return torch.empty_like(q), q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)


@torch.library.custom_op("coalm::flash_attn_bwd", mutates_args=())
def flash_attn_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                   lse: torch.Tensor, causal: bool, cu_seqlens: torch.Tensor | None, max_seqlen: int | None,
                   scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv): the Triton backward (`coalm_kernels.flash_attn._backward`)."""
    from coalm_kernels.flash_attn import _backward

    packed = cu_seqlens is not None
    slb, slh = (0, lse.stride(0)) if packed else (lse.stride(0), lse.stride(1))
    return _backward(do, q, k, v, o, lse, slb, slh, causal, cu_seqlens, max_seqlen, scale)


@flash_attn_bwd.register_fake
def _(do, q, k, v, o, lse, causal, cu_seqlens, max_seqlen, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
