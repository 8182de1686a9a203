"""NF4 inference: the base linear weights stored 4-bit exactly as QLoRA stores them, an adapter applied unmerged.

    model, tok = engine.load("smollm2-135m", quantize="nf4")                     # base model, NF4 linears
    model, tok = engine.load("smollm2-135m", adapter="runs/x/adapter", quantize="nf4")
    python -m engine.generate --quantize nf4 --prompt "..."

Every linear layer inside the transformer blocks (q/k/v/o, gate/up/down) becomes 4-bit: `quantize_nf4` of the
loaded weight, the same codes and statistics as bitsandbytes `quantize_4bit(quant_type="nf4")` and as
`engine.lora.LoRALinear(quantize=True)` makes for QLoRA training. The embeddings, norms and lm_head stay in the
model dtype. The LM head, the largest single weight read per decoded token (SmolLM2: 113 MB in fp32 against 60 MB
for all NF4 linears), becomes an 8-bit `Q8Head` (below). With an adapter, its target layers are
the QLoRA training layers themselves (`LoRALinear` with an NF4 base, unmerged), so the logits are those of the
training forward; the remaining block linears are NF4 without an update.

CPU: `coalm_kernels.native.nf4_linear` (decode inside the matmul, AVX-512 / AVX2, see docs/native.md). CUDA: the fused
Triton QLoRA kernel (`coalm_kernels.lora_matmul.lora_linear`) with a zero rank-1 update; that path is not tested on a GPU.
"""

from __future__ import annotations

import ctypes
import gc

import torch
from torch import nn

from coalm_kernels import native
from coalm_kernels.lora_matmul import lora_linear
from coalm_kernels.nf4 import NF4Weight, dequantize_nf4, quantize_nf4

QUANTIZE = ("nf4",)


class Q8Head(nn.Module):
    """The LM head in 8 bits: symmetric int8 codes with one scale per output row (a Q8_0 block that spans the whole
    row), run by torch's native weight-only int8 matmul on CPU (`torch._weight_int8pack_mm`, AVX-512 there).

    That op is fast only with bf16 activations (fp32 ones take a scalar path, measured 6x slower than bf16 on the
    AVX-512 EPYC), so x and the logits pass through bf16. Error per logit n, against the fp32 head on the same x:
    at most scale_n / 2 * ||x||_1 from rounding W (|w - q * scale| <= scale / 2), plus bf16 rounding of x and of the
    result (2^-9 relative each). tests/engine/test_generate.py checks exactly that bound against fp64."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        w = weight.detach().float()
        scale = w.abs().amax(1).clamp_min(torch.finfo(torch.float32).tiny) / 127
        codes = torch.round(w / scale[:, None]).to(torch.int8).contiguous()  # GGUF weights can be transposed views
        self.register_buffer("codes", codes, persistent=False)
        self.register_buffer("scale", scale, persistent=False)
        self.out_features, self.in_features = w.shape

    def forward(self, x):
        flat = x.reshape(-1, self.in_features)
        if x.device.type == "cpu" and self.in_features % 16 == 0:  # the op reads garbage (or crashes) otherwise
            y = torch._weight_int8pack_mm(flat.to(torch.bfloat16), self.codes, self.scale.to(torch.bfloat16))
        else:  # no fused int8 path: dequantize (every Llama width is a multiple of 16, so only tests come here)
            y = flat.float() @ (self.codes.float() * self.scale.float()[:, None]).T
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self):
        return f"in={self.in_features}, out={self.out_features}, int8 per-row scales"


class NF4Linear(nn.Module):
    """A frozen linear layer whose weight is an NF4Weight (no bias, as every Llama linear)."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        if base.bias is not None:
            raise ValueError("NF4Linear: linear layers with a bias are not supported")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.nf4: NF4Weight = quantize_nf4(base.weight.detach())

    def forward(self, x):
        q = self.nf4
        if x.device.type == "cpu":
            return native.nf4_linear(x, q) if x.dtype == torch.float32 else native.nf4_linear(x.float(), q).to(x.dtype)
        # CUDA: the Triton kernel dequantizes W tiles in registers; a zero update keeps it to the base product
        a = x.new_zeros(1, self.in_features)
        b = x.new_zeros(self.out_features, 1)
        return lora_linear(x, q, a, b, 0.0)

    def dequantized(self, dtype=torch.float32) -> torch.Tensor:
        return dequantize_nf4(self.nf4, dtype)

    def _apply(self, fn, recurse=True):  # keep the NF4 tensors on the module's device through .to()/.cuda()
        super()._apply(fn, recurse)
        probe = fn(torch.empty(0, device=self.nf4.packed.device))
        self.nf4 = self.nf4.to(probe.device)
        return self

    def extra_repr(self):
        return f"in={self.in_features}, out={self.out_features}, nf4 blocksize={self.nf4.blocksize}"


def check_quantize(method: str | None) -> str | None:
    if method is not None and method not in QUANTIZE:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE)} (or None), got {method!r}")
    return method


@torch.no_grad()
def quantize_model(model, method: str = "nf4", adapter=None):
    """Quantize the block linears of a loaded model in place; apply `adapter` (a PEFT directory) on the NF4 base."""
    check_quantize(method)
    if adapter is not None:
        from .lora import load_adapter

        load_adapter(model, adapter, quantize=True)  # its targets become QLoRA layers (NF4 base + LoRA)
    for block in model.layers:
        for module in list(block.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(module, name, NF4Linear(child))
    if isinstance(model.lm_head, nn.Linear):  # (a vocab-parallel head under TP keeps its own layout)
        model.lm_head = Q8Head(model.lm_head.weight)
    _release_freed_memory()
    return model.eval().requires_grad_(False)


def _release_freed_memory():
    """Hand the freed full-precision weights back to the OS. They were few-MB blocks of glibc's heap, which free()
    keeps for reuse: without this, RSS after quantizing SmolLM2 stayed at the fp32 model's (measured: 1078 MB before,
    620 MB after the trim)."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)  # glibc only
    except (OSError, AttributeError):
        pass
