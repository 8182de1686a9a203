"""The memory model: one real training step of the engine's own code, traced under FakeTensorMode with PyTorch's
MemTracker (as torchtitan's scripts/estimate/estimation.py does), so the estimate is the code's peak and cannot drift
from it. No storage is allocated: an 8B or 70B step traces on a laptop CPU in seconds.

    r = trace_step(Spec(args=get_config("8b"), mode="qlora", device="cuda", tokens=2048, seq_len=2048))
    r.peak, r.by_kind        # bytes: the peak, and at that moment parameters / gradients / optimizer / activations

What runs is `engine.model`, `engine.lora` (NF4 quantization included), `coalm_kernels` host code, AdamW and the
trainer's gradient clipping, two optimizer steps (the second has the moments alive through forward and backward).
Planning a GPU step on a CPU-only torch (which cannot run autograd on fake CUDA tensors) traces fake CPU tensors
through the GPU code path: `TRITON_INTERPRET=1` routes every op to its Triton host code (the same allocations and
saved tensors as on CUDA), `coalm_kernels.library.fake_launches` skips the launches, the LoRA factors take the base
dtype as `LoRALinear` does on CUDA, and each allocation is rounded up to the CUDA caching allocator's 512 bytes.
Under tensor parallelism the traced model is one rank's: heads, KV heads, MLP width and vocabulary divided by tp.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field, replace

import torch

from ..config import ModelArgs
from .offload import HostStore
from .policy import set_policy

_ROUND = 512  # the CUDA caching allocator's smallest block


@dataclass
class Spec:
    args: ModelArgs
    mode: str = "qlora"  # qlora | lora | full
    device: str = "cuda"  # the device planned for ("cuda" or "cpu"); tracing itself always runs on the CPU
    dtype: torch.dtype = torch.bfloat16
    tokens: int = 2048  # tokens in one micro-batch (packed)
    seq_len: int = 2048  # the longest sequence in it
    policy: str = "none"
    lora_rank: int = 16
    lora_alpha: float = 32.0
    tp: int = 1


@dataclass
class Trace:
    peak: int  # bytes at the peak of the step (the tracker's total)
    by_kind: dict[str, int]  # MemTracker's categories at that moment
    frozen: int  # frozen weights (NF4 packed + absmax + double-quant statistics, or dense), norms, embeddings
    trainable: int  # trainable parameters
    saved: int  # activation bytes alive at the end of the first forward (what the policy keeps for backward)
    saved_tensors: list = field(default_factory=list)  # (shape, dtype) saved for backward outside checkpoints


def local_args(args: ModelArgs, tp: int) -> ModelArgs:
    """One tensor-parallel rank's shapes (engine.parallel.tp: heads, KV heads, MLP and vocab split over tp)."""
    if tp == 1:
        return args
    from ..parallel.tp import check_tp

    check_tp(args, tp)
    return replace(args, n_heads=args.n_heads // tp, n_kv_heads=args.n_kv_heads // tp, ffn_dim=args.ffn_dim // tp,
                   vocab_size=args.vocab_size // tp, head_dim=args.head_dim,
                   rope_scaling=None if args.rope_scaling is None else dict(args.rope_scaling))


@contextlib.contextmanager
def _private_caches():
    """Module-level caches of coalm_kernels (NF4 lookup tables, the fp32-output matmul probe) must neither serve real
    tensors to the fake step nor keep fake ones after it: each trace starts them empty and puts the real ones back."""
    from coalm_kernels import cross_entropy, nf4

    saved = [(mod, name, getattr(mod, name)) for mod, name in ((nf4, "_LUTS"), (cross_entropy, "_MM_FP32_OUT"))]
    for mod, name, value in saved:
        setattr(mod, name, type(value)())
    try:
        yield
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)


@contextlib.contextmanager
def _gpu_path(on: bool):
    """Route coalm_kernels to its Triton host code on CPU tensors (launches skipped) while planning for a GPU."""
    if not on:
        yield
        return
    from coalm_kernels.library import fake_launches

    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        with fake_launches():
            yield
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old


def build(spec: Spec):
    """The model as engine.train builds it (random init, then LoRA/QLoRA or all trainable), on the current device."""
    from ..lora import apply_lora, lora_modules
    from ..model import Transformer

    args = local_args(spec.args, spec.tp)
    # built straight onto the (fake) CPU device in the planned dtype: under FakeTensorMode, Module._apply (to_empty,
    # .to(dtype)) must swap tensors, which it cannot do for the weakly-referenced fake parameters
    old = torch.get_default_dtype()
    torch.set_default_dtype(spec.dtype)
    try:
        with torch.device("cpu"):
            model = Transformer(args)
    finally:
        torch.set_default_dtype(old)
    if args.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.init_weights()
    if spec.device == "cpu":
        from ..loader import column_major_linears

        column_major_linears(model)
    model.eval().requires_grad_(False)
    if spec.mode == "full":
        model.requires_grad_(True)
    else:
        apply_lora(model, spec.lora_rank, spec.lora_alpha, quantize=spec.mode == "qlora")
        if spec.device == "cuda":  # LoRALinear keeps the factors in the base dtype on CUDA (fp32 on CPU)
            for m in lora_modules(model).values():
                m.lora_A = torch.nn.Parameter(m.lora_A.detach().to(spec.dtype))
                m.lora_B = torch.nn.Parameter(m.lora_B.detach().to(spec.dtype))
    return model.train()


def batch(spec: Spec, vocab: int):
    """A packed micro-batch of `tokens` tokens in sequences of `seq_len` (the last one shorter), every token a target
    (the worst case for the loss: masked prompts only shrink it)."""
    n_full, rest = divmod(spec.tokens, spec.seq_len)
    lens = [spec.seq_len] * n_full + ([rest] if rest else [])
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (1, spec.tokens), generator=g)
    positions = torch.cat([torch.arange(n) for n in lens])[None]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    return tokens, tokens.clone(), positions, cu, max(lens)


def train_step(model, opt, named, inputs, loss_scale: float = 1.0, grad_clip: float = 1.0):
    """The trainer's step: weighted loss backward, clip the gradient norm, AdamW, zero the gradients."""
    from ..parallel.data_parallel import clip_grad_norm
    from ..parallel.mesh import Mesh

    loss = model.loss(*inputs)
    (loss * loss_scale).backward()
    clip_grad_norm(named, grad_clip, Mesh())
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def _nf4_tensors(model):
    from ..lora import lora_modules

    out = []
    for m in lora_modules(model).values():
        if m.nf4 is not None:
            q = m.nf4
            out += [t for t in (q.packed, q.absmax, q.code, q.absmax2, q.code2, q.offset) if torch.is_tensor(t)]
    return out


def tensor_bytes(tensors, device: str) -> int:
    seen, total = set(), 0
    for t in tensors:
        st = t.untyped_storage()
        if id(st) in seen:
            continue
        seen.add(id(st))
        n = st.nbytes()
        total += math.ceil(n / _ROUND) * _ROUND if device == "cuda" else n
    return total


def trace_step(spec: Spec) -> Trace:
    """Trace one steady-state training step (AdamW's moments already exist, as from the second step on) under
    FakeTensorMode + MemTracker, at the model's full depth: the peak and its breakdown."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    import coalm_kernels.library  # noqa: F401 - fake implementations of the native ops

    from ..parallel.data_parallel import clip_grad_norm
    from ..parallel.mesh import Mesh
    from .shadows import Shadows

    fake = FakeTensorMode(allow_non_fake_inputs=False)
    shadows = Shadows(fake)
    args = local_args(spec.args, spec.tp)
    real = batch(spec, args.vocab_size)
    with _private_caches(), _gpu_path(spec.device == "cuda"), fake, shadows:
        model = build(spec)
        set_policy(model, spec.policy, _TracedHost() if spec.policy == "offload" else None)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        opt = torch.optim.AdamW([p for _, p in named], lr=1e-4, weight_decay=0.0, fused=spec.device == "cuda")
        for _, p in named:  # AdamW creates its moments at the first step: make them, as every later step has them
            p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)
        inputs = [shadows.track(fake.from_tensor(t), t) if torch.is_tensor(t) else t for t in real]
        nf4 = _nf4_tensors(model)
        trainable = tensor_bytes([p for _, p in named], spec.device)
        frozen = tensor_bytes([p for p in model.parameters() if not p.requires_grad] + nf4, spec.device)
        tracker = _Tracker()
        tracker.track_external(model, opt, *nf4)
        recorder = _SavedRecorder()
        with tracker:
            with recorder:
                loss = model.loss(*inputs)
            saved = _act_bytes(tracker)
            (loss * 1.0).backward()  # the trainer weights each micro-batch's loss by its share of the step's targets
            clip_grad_norm(named, 1.0, Mesh())
            opt.step()
            opt.zero_grad(set_to_none=True)
            del loss
        snap = tracker.get_tracker_snapshot("peak")
    dev = next(d for d in snap if d.type == "cpu")  # the (stand-in) device; "meta" holds what went to the host
    by_kind = {str(getattr(k, "value", k)): v for k, v in snap[dev].items()}
    peak = by_kind.pop("Total")
    return Trace(peak=peak, by_kind=by_kind, frozen=frozen, trainable=trainable, saved=saved,
                 saved_tensors=recorder.saved)


def estimate(spec: Spec, depths: tuple[int, int] = (1, 2)) -> Trace:
    """trace_step at the full depth, from two shallow traces: every block is the same code with the same shapes, so
    each quantity is affine in the number of blocks (a + b * n_layers); tracing 2 blocks instead of 80 keeps a 70B
    plan to seconds. Exact for the model's shapes; checked against full-depth traces and measured peaks in
    tests/engine/test_memory*.py."""
    n = spec.args.n_layers
    if n <= max(depths):
        return trace_step(spec)
    lo, hi = (trace_step(replace(spec, args=replace(spec.args, n_layers=d))) for d in depths)

    def ext(a, b):
        return a + (b - a) * (n - depths[0]) // (depths[1] - depths[0])

    kinds = {k: ext(lo.by_kind.get(k, 0), hi.by_kind.get(k, 0)) for k in set(lo.by_kind) | set(hi.by_kind)}
    saved_tensors = _repeat_blocks(lo.saved_tensors, hi.saved_tensors, n, depths)
    return Trace(peak=ext(lo.peak, hi.peak), by_kind=kinds, frozen=ext(lo.frozen, hi.frozen),
                 trainable=ext(lo.trainable, hi.trainable), saved=ext(lo.saved, hi.saved), saved_tensors=saved_tensors)


def _repeat_blocks(lo: list, hi: list, n: int, depths: tuple[int, int]) -> list:
    """The saved-tensor list of n blocks from those of depths[0] and depths[1] blocks. The first block may save less
    than the others (LoRA: its input needs no gradient), so hi is lo with (d1 - d0) copies of one later block
    inserted before the tail; insert n - d0 copies instead."""
    d0, d1 = depths
    b = (len(hi) - len(lo)) // (d1 - d0)
    for p in range(len(lo), -1, -1):  # the insertion point nearest the tail (final norm and loss)
        block = hi[p:p + b]
        if hi == lo[:p] + block * (d1 - d0) + lo[p:]:
            return lo[:p] + block * (n - d0) + lo[p:]
    raise RuntimeError("memory trace: the blocks do not save the same tensors (cannot extend to the full depth)")


def _tracker_class():
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

    class Tracker(MemTracker):
        """MemTracker that also takes frozen parameters: it hooks every parameter's gradient, and a hook cannot be
        registered on a tensor that needs none (LoRA's frozen base). The hooks go on the trainable ones only."""

        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            out = super()._track_module_params_and_buffers(module, install_grad_hooks=False)
            if install_grad_hooks:
                for p in module.parameters():
                    if p.requires_grad and self._param_to_grad_hook_handles.get(p) is None:
                        def grad(g):
                            self._update_and_maybe_create_winfos(g, _MemRefType.GRAD)

                        self._param_to_grad_hook_handles[p] = (
                            p.register_hook(grad), p.register_post_accumulate_grad_hook(lambda q: grad(q.grad)))
            return out

    return Tracker


def _Tracker():
    return _tracker_class()()


def _act_bytes(tracker) -> int:
    snap = tracker.get_tracker_snapshot("current")
    dev = next(d for d in snap if d.type == "cpu")
    return sum(v for k, v in snap[dev].items() if str(getattr(k, "value", k)) in ("Activation", "Temp"))


class _TracedHost(HostStore):
    """The offload store in a trace: the host copy lives on the meta device, which the tracker counts apart."""

    def pack(self, t):
        self.packed.append((tuple(t.shape), t.dtype))
        return ("host", t.to("meta"), None, t.device)


class _SavedRecorder(torch.autograd.graph.saved_tensors_hooks):
    """Records (shape, dtype) of each tensor saved for backward outside checkpointed regions (which keep their own)."""

    def __init__(self):
        self.saved = []

        def pack(t):
            self.saved.append((tuple(t.shape), t.dtype))
            return t

        super().__init__(pack, lambda t: t)
