"""The memory plan: the traced step (`engine.memory.trace`) per checkpointing policy, the parts no single-device
trace can see added analytically, the largest micro-batch and the longest sequence that fit a budget, and the
policy `--activation-checkpointing auto` picks.

    python -m engine.train --size 8b --qlora --plan --device-memory 80GB
    python -m engine.train --size 70b --qlora --tp 8 --plan

Traced (the code's own allocations, frees and saved tensors): frozen weights (NF4 codes, absmaxes and double-quant
statistics), trainable parameters, gradients, AdamW moments, activations under each policy (the LM-head chunk, the
loss and the attention workspace included: they are reported as "of which", computed from the same shapes).
Analytic, and why:
- FSDP2 sharding (--full on several GPUs): parameters, gradients and moments divided by dp, plus the unsharded
  all-gather of two blocks (the one running and the one prefetched) and one block's reduce-scatter; tracing FSDP2
  needs DTensor over a fake process group, which the single-process trace does not build.
- communication buckets: DP's gradient all-reduce bucket (engine.parallel.data_parallel.BUCKET_BYTES, capped at the
  trainable size); TP's all-reduces are in place.
- runtime and allocator margin: the CUDA context, cuBLAS/Triton workspaces (RUNTIME_BYTES) and the caching
  allocator's fragmentation (ALLOCATOR_MARGIN of the traced peak); on a CPU, torch and Python's resident libraries.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import torch

from .policy import policies_for
from .trace import Spec, Trace, estimate

GiB = 2**30
RUNTIME_BYTES = {"cuda": int(0.75 * GiB), "cpu": int(0.5 * GiB)}  # CUDA context + workspaces; CPU: libraries
ALLOCATOR_MARGIN = {"cuda": 0.05, "cpu": 0.10}  # caching allocator (GPU) / malloc arenas (CPU) over the live peak
CPU_HEADROOM = 0.10
MAX_TOKENS = 1 << 22  # the largest micro-batch max_fit reports (4M tokens; a plan at that size traces in seconds)  # the default CPU budget keeps this share of the available RAM free


def parse_bytes(text, flag: str = "--memory-budget") -> int:
    """'80GB', '80GiB', '512MB', '1.5T' or a byte count -> bytes (GB = GiB: GPU memory is sold in binary units)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b?)\s*", str(text).lower())
    if not m:
        raise ValueError(f"{flag}: {text!r} is not a size (examples: 80GB, 24GiB, 512MB)")
    value = float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " ")
    if value <= 0 or not math.isfinite(value):
        raise ValueError(f"{flag}: {text!r} must be a positive size (examples: 80GB, 24GiB, 512MB)")
    return int(value)


def default_budget(device: str) -> int:
    """The GPU's free memory, or on a CPU the available RAM less CPU_HEADROOM."""
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0]
    import psutil

    return int(psutil.virtual_memory().available * (1 - CPU_HEADROOM))


@dataclass
class Row:
    """One policy's plan, in bytes per device."""

    policy: str
    frozen: int
    trainable: int
    grads: int
    moments: int
    activations: int
    saved: int
    lm_head: int
    attention: int
    comm: int
    runtime: int

    @property
    def total(self) -> int:
        return (self.frozen + self.trainable + self.grads + self.moments + self.activations + self.comm
                + self.runtime)


def lm_head_bytes(spec: Spec, vocab: int) -> int:
    """The fused cross-entropy's live chunk: logits (fp32) and their gradient for `_auto_chunk` rows (its own rule)."""
    from coalm_kernels.cross_entropy import _auto_chunk

    rows = _auto_chunk(spec.tokens, vocab, spec.dtype)
    grad = 0 if spec.dtype == torch.float32 else torch.finfo(spec.dtype).bits // 8
    return rows * vocab * (4 + grad) + spec.tokens * spec.args.dim * spec.dtype.itemsize  # + grad of the hidden


def attention_bytes(spec: Spec, heads: int, kv_heads: int) -> int:
    """Backward workspace of one attention call: dq, dk, dv and (GPU) the fp32 row statistics lse and delta."""
    d, t, size = spec.args.head_dim, spec.tokens, spec.dtype.itemsize
    return t * d * (heads + 2 * kv_heads) * size + (2 * heads * t * 4 if spec.device == "cuda" else 0)


def row(spec: Spec, trace: Trace, dp: int = 1, fsdp: bool = False) -> Row:
    k = trace.by_kind
    grads, moments = k.get("Gradient", 0), k.get("Optstate", 0)
    acts = max(0, trace.peak - trace.frozen - trace.trainable - grads - moments)
    frozen, trainable = trace.frozen, trace.trainable
    comm = 0
    if fsdp:  # analytic: see the module docstring
        block = trainable // max(1, spec.args.n_layers)  # one block's parameters (embeddings aside: an upper bound)
        frozen, trainable, grads, moments = frozen // dp, trainable // dp, grads // dp, moments // dp
        comm = 2 * block + block  # all-gather of the running and the prefetched block + one reduce-scatter
    elif dp > 1:
        from ..parallel.data_parallel import BUCKET_BYTES

        comm = min(BUCKET_BYTES, trace.trainable)
    local = spec.args if spec.tp == 1 else replace(spec.args, n_heads=spec.args.n_heads // spec.tp)
    margin = int(ALLOCATOR_MARGIN[spec.device] * (trace.peak))
    return Row(spec.policy, frozen, trainable, grads, moments, acts, trace.saved,
               lm_head_bytes(spec, spec.args.vocab_size // spec.tp),
               attention_bytes(spec, local.n_heads, max(1, spec.args.n_kv_heads // spec.tp)), comm,
               RUNTIME_BYTES[spec.device] + margin)


def plan_row(spec: Spec, dp: int = 1, fsdp: bool = False) -> Row:
    return row(spec, estimate(spec), dp, fsdp)


def policy_rows(spec: Spec, dp: int = 1, fsdp: bool = False, policies=None) -> list[Row]:
    return [plan_row(replace(spec, policy=p), dp, fsdp) for p in (policies or policies_for(spec.device))]


def max_fit(spec: Spec, budget: int, plan=None, batch1: bool = False, line=None) -> int:
    """The most tokens per micro-batch (sequences of spec.seq_len) or, with batch1, the longest single sequence,
    that fit `budget` under spec.policy. Memory is affine in the tokens (flash attention keeps O(T) per layer), so a
    line through two traces (`line`: (tokens, total, slope), reused between calls) gives the answer, which one more
    trace at that point checks and, if needed, corrects. `plan(spec) -> Row` (default plan_row)."""
    plan = plan or plan_row

    def total(t):
        return plan(replace(spec, tokens=t, seq_len=t if batch1 else min(spec.seq_len, t))).total

    t0, total0, slope = line or fit_line(spec, plan)
    if total0 > budget:  # below the line's first point the fixed costs (the loss chunk) bend it: halve instead
        t = t0 // 2
        while t >= 16 and total(t) > budget:
            t //= 2
        return t if t >= 16 else 0
    guess = min(MAX_TOKENS, int(t0 + (budget - total0) / slope))  # a flat line (peak not in the activations) caps
    if guess < 1:
        return 0
    over = total(guess) - budget
    if over > 0:  # the check says less: step back along the line, with 1% to spare
        guess = int((guess - over / slope) * 0.99)
    return max(0, guess)


def fit_line(spec: Spec, plan=None) -> tuple[int, int, float]:
    plan = plan or plan_row
    a, b = spec.seq_len, 2 * spec.seq_len
    ta, tb = (plan(replace(spec, tokens=t)).total for t in (a, b))
    return a, ta, max(1e-9, (tb - ta) / (b - a))


def fmt(n: int) -> str:
    return f"{n / GiB:6.2f} GiB" if n >= GiB // 10 else f"{n / 2**20:6.1f} MiB"


def table(rows: list[Row], budget: int | None) -> str:
    lines = [f"{'':42}" + "".join(f"{r.policy:>13}" for r in rows)]
    fields = [
        ("frozen weights", "frozen"), ("trainable parameters", "trainable"), ("gradients (at the peak)", "grads"),
        ("AdamW moments", "moments"), ("activations (at the peak)", "activations"),
        ("  of which saved at the end of forward", "saved"), ("  of which LM-head chunk + loss", "lm_head"),
        ("  of which attention workspace", "attention"), ("communication buckets (analytic)", "comm"),
        ("runtime + allocator margin (analytic)", "runtime"), ("total", "total"),
    ]
    for label, attr in fields:
        lines.append(f"{label:42}" + "".join(f"{fmt(getattr(r, attr)):>13}" for r in rows))
    if budget is not None:
        lines.append(f"{'fits ' + fmt(budget).strip():42}" + "".join(
            f"{'yes' if r.total <= budget else 'no':>13}" for r in rows))
    return "\n".join(lines)


def choose(rows: list[Row], budget: int) -> Row | None:
    """The cheapest policy (least recompute: rows come in POLICIES order) whose total fits."""
    return next((r for r in rows if r.total <= budget), None)
