"""Fused linear + cross-entropy: mean over labelled tokens of CE(hidden @ weight.T, labels), chunked.

Math, per token with logits z = h W^T (V entries), label y, lse = log sum_j exp(z_j):
    loss      = sum_tokens (lse - z_y) / n,  n = number of tokens with label != ignore_index
    dL/dz_j   = (softmax(z)_j - [j == y]) / n
    dL/dh     = dL/dz @ W        dL/dW = sum_tokens dL/dz^T h
The full (tokens x vocab) logits never exist. Ignored tokens are dropped first (they add nothing and get zero
gradient); the remaining ones are walked in chunks: chunk logits by one matmul, then a Triton kernel does an
online log-sum-exp over the vocab and, in a second sweep of the same row, writes dL/dz; the chunk's dL/dh
and the dL/dW accumulation follow as two more matmuls. So the backward work happens inside forward (the
Liger-Kernel approach); backward only multiplies the stored gradients by grad_output.

Layout and limits:
  hidden (..., D), labels (...) integer, weight (V, D) of hidden's dtype. Returns an fp32 scalar.
  Chunk logits are fp32 where the device's matmul can write fp32 from half inputs (torch.mm out_dtype, CUDA),
  else the matmul's dtype; the softmax arithmetic is fp32 in every case. The torch path (CPU) runs the same
  chunk loop with log_softmax in place of the kernel. dL/dz is stored in the input dtype (the matmuls need
  it so); dL/dW accumulates in weight.dtype across chunks (addmm, fp32 accumulate inside each chunk).
  `chunk_size=None` keeps a chunk's logits (+ its gradient buffer) near 256 MB.
  A batch with no labelled token gives loss 0 and zero gradients (F.cross_entropy gives NaN there).
  Labels outside [0, V) other than ignore_index raise ValueError (one host sync per call checks this).
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from coalm_kernels._dispatch import use_triton
from coalm_kernels.plan import Config, Launch, arch_of, family, need, run

CHUNK_BYTES = 256 << 20
_MM_FP32_OUT: dict[str, bool] = {}  # device type -> whether torch.mm(..., out_dtype=float32) works there


@triton.jit
def _ce_loss_grad_kernel(logits_ptr, stride_l, grad_ptr, stride_g, labels_ptr, loss_ptr, V, scale,
                         COMPUTE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    lrow = logits_ptr + row * stride_l
    label = tl.load(labels_ptr + row).to(tl.int64)
    m = float("-inf")
    d = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        z = tl.load(lrow + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
    lse = m + tl.log(d)
    tl.store(loss_ptr + row, lse - tl.load(lrow + label).to(tl.float32))
    if COMPUTE_GRAD:
        # grad may alias logits (same dtype): every element is read before it is overwritten by this program
        grow = grad_ptr + row * stride_g
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            z = tl.load(lrow + cols, mask=cols < V, other=0.0).to(tl.float32)
            p = tl.exp(z - lse)
            p = tl.where(cols == label, p - 1.0, p) * scale
            tl.store(grow + cols, p.to(grad_ptr.dtype.element_ty), mask=cols < V)


def launch_plan(rows: int, V: int, logits_dtype: torch.dtype, grad_dtype: torch.dtype, compute_grad: bool,
                arch: int | None) -> Launch:
    """The per-row loss (and dL/dlogits) launch over a chunk of (rows, V) contiguous logits."""
    name = "cross_entropy.loss_grad"
    need(rows >= 1 and V >= 1, name, f"logits ({rows}, {V}) empty")
    need(logits_dtype.is_floating_point and grad_dtype.is_floating_point, name,
         f"dtypes {logits_dtype}, {grad_dtype} not float")
    family(arch, name)
    args = (logits_dtype, V, grad_dtype, V, torch.int64, torch.float32, V, 1.0)
    return Launch(name, _ce_loss_grad_kernel, args,
                  {"COMPUTE_GRAD": compute_grad, "BLOCK_V": min(triton.next_power_of_2(V), 4096)},
                  (Config.of(8, 3),))


def _loss_grad_triton(logits, labels, losses, scale, compute_grad, grad_dtype):
    """Per-row loss into `losses`; returns dL/dlogits in grad_dtype (written over the logits when they match)."""
    rows, V = logits.shape
    grad = logits if (logits.dtype == grad_dtype or not compute_grad) else torch.empty(
        logits.shape, dtype=grad_dtype, device=logits.device)
    plan = launch_plan(rows, V, logits.dtype, grad.dtype, compute_grad, arch_of(logits))
    run(plan, (rows,), logits, logits.stride(0), grad, grad.stride(0), labels, losses, V, scale)
    return grad


def _loss_grad_torch(logits, labels, losses, scale, compute_grad, grad_dtype):
    logp = torch.log_softmax(logits.float(), dim=1)  # one fused pass; fp32 even for half logits
    del logits
    torch.neg(logp.gather(1, labels[:, None]).squeeze(1), out=losses)
    if not compute_grad:
        return None
    grad = logp.exp_().mul_(scale)  # softmax / n
    grad.scatter_add_(1, labels[:, None], grad.new_full((grad.shape[0], 1), -scale))
    return grad.to(grad_dtype)


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(rows, V) logits, fp32 when the device can write them from half inputs without a full copy of W."""
    if h.dtype in (torch.float16, torch.bfloat16) and _MM_FP32_OUT.get(h.device.type, True):
        try:
            out = torch.mm(h, weight.t(), out_dtype=torch.float32)
            _MM_FP32_OUT[h.device.type] = True
            return out
        except torch.OutOfMemoryError:
            raise
        except (TypeError, RuntimeError):  # older torch (no out_dtype), or no such kernel on this device (CPU)
            _MM_FP32_OUT[h.device.type] = False
    return torch.mm(h, weight.t())


def _auto_chunk(rows: int, vocab: int, dtype: torch.dtype) -> int:
    per_row = vocab * (4 + (0 if dtype == torch.float32 else torch.finfo(dtype).bits // 8))
    chunk = max(1, CHUNK_BYTES // per_row)
    if chunk > 64:  # whole tiles of 64 rows keep the three matmuls efficient
        chunk -= chunk % 64
    return min(rows, chunk)


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index, chunk_size, need_grad, loss_grad_fn):
        N, D = hidden.shape
        V = weight.shape[0]
        valid = labels != ignore_index
        bad = valid & ((labels < 0) | (labels >= V))
        n_valid, n_bad = torch.stack((valid.sum(), bad.sum())).tolist()
        if n_bad:
            first = int(bad.nonzero()[0, 0])
            raise ValueError(f"fused_linear_cross_entropy: {n_bad} labels outside [0, {V}) and != ignore_index "
                             f"({ignore_index}); first at flat token {first}: {int(labels[first])}")
        need_gh = need_grad and ctx.needs_input_grad[0]
        need_gw = need_grad and ctx.needs_input_grad[1]
        compute_grad = need_gh or need_gw
        all_valid = n_valid == N
        if need_gh:  # ignored tokens keep a zero gradient
            grad_h = (torch.empty if all_valid else torch.zeros)(N, D, dtype=hidden.dtype, device=hidden.device)
        else:
            grad_h = None
        grad_w = torch.zeros_like(weight) if need_gw else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        if n_valid:
            idx = None if all_valid else valid.nonzero().squeeze(1)
            h = hidden if all_valid else hidden.index_select(0, idx)
            y = labels if all_valid else labels.index_select(0, idx)
            gh = grad_h if (all_valid or not need_gh) else torch.empty(h.shape, dtype=h.dtype, device=h.device)
            losses = torch.empty(n_valid, dtype=torch.float32, device=hidden.device)
            chunk = chunk_size or _auto_chunk(n_valid, V, hidden.dtype)
            for s in range(0, n_valid, chunk):
                e = min(s + chunk, n_valid)
                # the chunk's logits (rows, V) are passed without a name here so the torch path can free them
                dz = loss_grad_fn(_chunk_logits(h[s:e], weight), y[s:e], losses[s:e], 1.0 / n_valid, compute_grad,
                                  h.dtype)
                if need_gh:
                    torch.mm(dz, weight, out=gh[s:e])
                if need_gw:
                    grad_w.addmm_(dz.t(), h[s:e])
                del dz  # free the chunk before the next one is allocated
            if need_gh and not all_valid:
                grad_h.index_copy_(0, idx, gh)
            loss = losses.sum() / n_valid
        ctx.save_for_backward(grad_h, grad_w)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        if not torch.equal(grad_loss, torch.ones_like(grad_loss)):
            grad_h = None if grad_h is None else grad_h * grad_loss.to(grad_h.dtype)
            grad_w = None if grad_w is None else grad_w * grad_loss.to(grad_w.dtype)
        return grad_h, grad_w, None, None, None, None, None


def _apply(hidden, weight, labels, ignore_index, chunk_size, loss_grad_fn):
    D = hidden.shape[-1]
    if weight.dim() != 2 or weight.shape[1] != D:
        raise ValueError(f"fused_linear_cross_entropy: weight must be (vocab, {D}), got {tuple(weight.shape)}")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"fused_linear_cross_entropy: hidden and weight dtypes differ ({hidden.dtype} vs "
                        f"{weight.dtype})")
    if labels.shape != hidden.shape[:-1] or labels.is_floating_point():
        raise ValueError(f"fused_linear_cross_entropy: labels must be integers of shape {tuple(hidden.shape[:-1])}, "
                         f"got {labels.dtype} {tuple(labels.shape)}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"fused_linear_cross_entropy: chunk_size must be >= 1 or None, got {chunk_size}")
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _FusedLinearCrossEntropy.apply(hidden.reshape(-1, D), weight, labels.reshape(-1).long(), ignore_index,
                                          chunk_size, need_grad, loss_grad_fn)


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                               ignore_index: int = -100, chunk_size: int | None = None) -> torch.Tensor:
    """Mean CE of `hidden @ weight.T` against `labels` without materialising the logits (differentiable)."""
    fn = _loss_grad_triton if use_triton(hidden) else _loss_grad_torch
    return _apply(hidden, weight, labels, ignore_index, chunk_size, fn)


def fused_linear_cross_entropy_ref(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                                   ignore_index: int = -100, chunk_size: int | None = None) -> torch.Tensor:
    """The same chunked algorithm with the per-chunk loss and gradient in plain torch (the CPU path)."""
    return _apply(hidden, weight, labels, ignore_index, chunk_size, _loss_grad_torch)


def cross_entropy_ref(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                      ignore_index: int = -100) -> torch.Tensor:
    """Unfused: F.cross_entropy over the full logits (for tests and as the benchmark peer)."""
    logits = hidden @ weight.t()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=ignore_index)
