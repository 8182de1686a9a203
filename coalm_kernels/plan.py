"""Launch plans: what a kernel module would launch on a GPU, as data, so that the host code and the ahead-of-time
compile check (`coalm_kernels.aot`) use the same kernel, constexprs and candidate configs.

Each kernel module exposes `launch_plan(...)`: a pure function of shapes, dtypes, flags and the GPU arch (compute
capability as an int, 90 for H100, 80 for A100; None for Triton's CPU interpreter) that returns a `Launch`. The
host launches it with `run(plan, grid, *args)`: one config runs directly, several are autotuned by Triton's own
autotuner over exactly the plan's list (one tuner per distinct list). A shape, dtype or arch outside a plan raises
`PlanError`, one line naming the kernel and the argument, never a silent fallback to a slower path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

try:
    import triton
except ImportError:  # pragma: no cover (Linux-only wheel; the CPU paths never get here)
    triton = None

# Shared memory one block may use (cudaDevAttrMaxSharedMemoryPerBlockOptin): A100 163 KB, H100 227 KB.
SMEM_LIMIT = {80: 166912, 90: 232448}
ARCHS = tuple(SMEM_LIMIT)


class PlanError(ValueError):
    """A launch outside a kernel's plan (shape, dtype, flag or arch)."""


@dataclass(frozen=True)
class Config:
    """One candidate: block-size constexprs, warps and software-pipelining stages."""

    blocks: tuple[tuple[str, int], ...]
    num_warps: int
    num_stages: int

    @classmethod
    def of(cls, num_warps: int, num_stages: int, **blocks: int) -> Config:
        return cls(tuple(blocks.items()), num_warps, num_stages)

    @property
    def kwargs(self) -> dict:
        return dict(self.blocks)

    def label(self) -> str:
        return " ".join(f"{k.replace('BLOCK_', 'B')}={v}" for k, v in self.blocks) + \
            f" w{self.num_warps} s{self.num_stages}"


@dataclass(frozen=True)
class Launch:
    """A kernel launch as planned: `args` holds the runtime arguments as the compiler sees them (a torch dtype
    stands for a pointer to that dtype, ints and floats for themselves: their values decide Triton's
    specialization), `constexprs` the fixed compile-time arguments, `configs` the candidates (first = default)."""

    name: str  # "module.kernel", as reported
    kernel: object  # the @triton.jit function
    args: tuple
    constexprs: dict
    configs: tuple[Config, ...]
    key: tuple[str, ...] = ()  # the autotune key (argument names), when there are several configs
    options: dict = field(default_factory=dict)  # extra compile options (enable_fp_fusion)
    dot_m: str | None = None  # the constexpr that is the M dim of the kernel's tl.dot ops (None: no tl.dot)


def family(arch: int | None, kernel: str) -> int | None:
    """The arch whose candidate lists apply: 90 for Hopper and later, 80 for Ampere/Ada; None (interpreter)."""
    if arch is None:
        return None
    if arch >= 90:
        return 90
    if arch >= 80:
        return 80
    raise PlanError(f"{kernel}: arch sm_{arch} not supported (the Triton kernels need compute capability >= 8.0)")


def need(ok: bool, kernel: str, what: str) -> None:
    """Raise PlanError(f"{kernel}: {what}") unless ok."""
    if not ok:
        raise PlanError(f"{kernel}: {what}")


_ARCH_CACHE: dict = {}


def arch_of(t: torch.Tensor) -> int | None:
    """Compute capability (major * 10 + minor) of a CUDA tensor's device; None for CPU tensors (interpreter)."""
    if not t.is_cuda:
        return None
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    if index not in _ARCH_CACHE:
        major, minor = torch.cuda.get_device_capability(index)
        _ARCH_CACHE[index] = major * 10 + minor
    return _ARCH_CACHE[index]


_TUNERS: dict = {}


def run(plan: Launch, grid, *args) -> None:
    """Launch `plan` with the real arguments (which match `plan.args` in kind); grid: a tuple or meta -> tuple."""
    if len(plan.configs) == 1:
        cfg = plan.configs[0]
        meta = {**plan.constexprs, **cfg.kwargs}
        g = grid(meta) if callable(grid) else grid
        plan.kernel[g](*args, **meta, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **plan.options)
        return
    # one tuner per candidate list and constexpr set: a config tuned for one weight kind is not reused for another
    tkey = (plan.name, plan.configs, plan.key, tuple(sorted((k, str(v)) for k, v in plan.constexprs.items())))
    tuner = _TUNERS.get(tkey)
    if tuner is None:
        configs = [triton.Config(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages) for c in plan.configs]
        tuner = _TUNERS[tkey] = triton.autotune(configs, key=list(plan.key))(plan.kernel)
    tuner[grid](*args, **plan.constexprs, **plan.options)
