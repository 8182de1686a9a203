"""Ahead-of-time compile check (coalm_kernels.aot): every kernel's default config at the 8B preset in bf16 compiles
for sm_90 and sm_80 on this CPU machine, fits the arch's shared memory, spills nothing and (sm_90) uses wgmma for
large tl.dot tiles; the checks themselves catch what they should; launches outside a plan raise one-line errors.

The compile runs in a subprocess: tests/conftest.py sets TRITON_INTERPRET=1, under which @triton.jit kernels are
interpreter objects that cannot be compiled for a GPU.
"""

import os
import subprocess
import sys

import pytest
import torch

from coalm_kernels import aot, cross_entropy, flash_attn_plan, lora_matmul, nf4, rms_norm, rope, swiglu
from coalm_kernels.plan import SMEM_LIMIT, Config, Launch, PlanError

KERNELS = {"lora_matmul.fwd", "lora_matmul.dx", "flash_attn.fwd", "flash_attn.pre", "flash_attn.dkdv", "flash_attn.dq",
           "flash_attn.decode", "rms_norm.fwd", "rms_norm.bwd", "swiglu.fwd", "swiglu.bwd", "rope.rotate",
           "cross_entropy.loss_grad", "nf4.dequantize"}


@pytest.mark.slow
def test_default_configs_compile_for_sm90_and_sm80():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    p = subprocess.run([sys.executable, "-m", "coalm_kernels.aot", "--jobs", "2"], capture_output=True, text=True,
                       env=env, timeout=600, check=False)
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    # every kernel was compiled for both archs (the count line names the compiles; each sm_XX line a job)
    assert "0 failed checks" in p.stderr, p.stderr[-3000:]


def test_default_cases_cover_every_kernel_on_both_archs():
    for arch in (90, 80):
        names = {c.plan.name for c in aot.cases(False, arch)}
        assert names == KERNELS, names ^ KERNELS
        assert all(c.dtype == torch.bfloat16 for c in aot.cases(False, arch))


def _job(name="lora_matmul.fwd", dtype=torch.bfloat16, arch=90, block_m=128, precision="tf32", **result):
    plan = Launch(name, None, (), {"PRECISION": precision}, (Config.of(8, 3, BLOCK_M=block_m),), dot_m="BLOCK_M")
    job = aot.Job(plan, plan.configs[0], arch, dtype, wheres=["8B bf16 test"])
    job.result = {"ok": True, "regs": 200, "spill_st": 0, "spill_ld": 0, "stack": 0, "shared": 1024, "seconds": 1.0,
                  "wgmma": 4, "mma": 0, **result}
    return job


def test_checks_flag_each_failure_kind_and_name_kernel_and_config():
    assert aot.check(_job()) == []
    spill = aot.check(_job(spill_st=8))
    assert len(spill) == 1 and "lora_matmul.fwd" in spill[0] and "BM=128" in spill[0] and "8 B" in spill[0]
    assert aot.check(_job(dtype=torch.float32, spill_st=aot.FP32_SPILL_LIMIT - 4)) == []  # fp32: under 1 KB
    assert aot.check(_job(dtype=torch.float32, spill_st=aot.FP32_SPILL_LIMIT))
    for arch in (90, 80):
        smem = aot.check(_job(arch=arch, shared=SMEM_LIMIT[arch] + 16))
        assert len(smem) == 1 and f"sm_{arch}" in smem[0] and "shared memory" in smem[0]
        assert aot.check(_job(arch=arch, shared=SMEM_LIMIT[arch])) == []
    assert "wgmma" in aot.check(_job(wgmma=0, mma=8))[0]
    assert aot.check(_job(wgmma=0, block_m=32)) == []  # small tiles may use mma.sync
    assert aot.check(_job(wgmma=0, arch=80)) == []
    assert aot.check(_job(wgmma=0, dtype=torch.float32, precision="ieee")) == []  # no tensor-core path
    failed = _job()
    failed.result = {"ok": False, "error": "RuntimeError: Illegal shared layout"}
    (line,) = aot.check(failed)
    assert "compile failed" in line and "Illegal shared layout" in line and "sm_90" in line


def test_ptxas_log_parsing():
    log = ("ptxas info    : Function properties for _k\n    408 bytes stack frame, 416 bytes spill stores, "
           "412 bytes spill loads\nptxas info    : Used 255 registers, used 1 barriers, 408 bytes cumulative stack size")
    assert aot._ptxas_stats(log) == {"regs": 255, "spill_st": 416, "spill_ld": 412, "stack": 408}


@pytest.mark.parametrize("make, words", [
    (lambda: lora_matmul.launch_plan("fwd", 16, 64, 64, 8, torch.float64, None, False, 90), ("lora_matmul.fwd", "dtype")),
    (lambda: lora_matmul.launch_plan("dx", 0, 64, 64, 8, torch.float16, None, False, 90), ("lora_matmul.dx", "M=0")),
    (lambda: lora_matmul.launch_plan("fwd", 16, 64, 64, 8, torch.float16, None, False, 75), ("lora_matmul.fwd", "sm_75")),
    (lambda: flash_attn_plan.launch_plan("fwd", torch.float32, 8, 2, 128, 64, arch=90), ("flash_attn.fwd", "dtype")),
    (lambda: flash_attn_plan.launch_plan("dkdv", torch.float16, 8, 2, 96, 64, arch=90), ("flash_attn.dkdv", "head_dim")),
    (lambda: flash_attn_plan.launch_plan("dq", torch.float16, 6, 4, 64, 64, arch=80), ("flash_attn.dq", "hkv")),
    (lambda: rms_norm.launch_plan("fwd", 4, 65537, torch.float16, torch.float16, 90), ("rms_norm.fwd", "N=65537")),
    (lambda: rope.launch_plan(4, 4, 7, torch.float16, 1.0, False, 90), ("rope.rotate", "D=7")),
    (lambda: swiglu.launch_plan("fwd", 8, torch.int32, 90), ("swiglu.fwd", "dtype")),
    (lambda: cross_entropy.launch_plan(0, 10, torch.float32, torch.float32, True, 90), ("cross_entropy", "logits")),
    (lambda: nf4.launch_plan(64, 48, True, torch.float16, 90), ("nf4.dequantize", "blocksize")),
])
def test_launch_outside_plan_raises_one_line(make, words):
    with pytest.raises(PlanError) as e:
        make()
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_plans_are_per_arch_and_fp32_dx_nf4_takes_the_transposed_variant():
    for arch in (90, 80):
        plan = lora_matmul.launch_plan("dx", 4096, 4096, 14336, 16, torch.float32, (64, True), True, arch)
        assert plan.constexprs["W_FIRST"] and plan.dot_m == "BLOCK_K"
        half = lora_matmul.launch_plan("dx", 4096, 4096, 14336, 16, torch.bfloat16, (64, True), True, arch)
        assert not half.constexprs["W_FIRST"] and half.dot_m == "BLOCK_M"
    interp = lora_matmul.launch_plan("fwd", 4096, 4096, 4096, 16, torch.float16, None, False, None)
    assert len(interp.configs) == 1


@pytest.mark.gpu
def test_gpu_never_falls_back_silently():
    """On a GPU, what the plans do not cover raises instead of running a slower torch path."""
    from coalm_kernels.flash_attn import flash_attention
    from coalm_kernels.lora_matmul import lora_linear
    from coalm_kernels.rms_norm import rms_norm

    x = torch.randn(2, rms_norm_n := 65537, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(PlanError, match="rms_norm.fwd: N=65537"):
        rms_norm(x, torch.ones(rms_norm_n, device="cuda", dtype=torch.bfloat16), 1e-5)
    x, w = torch.randn(4, 64, device="cuda", dtype=torch.bfloat16), torch.randn(32, 64, device="cuda").bfloat16()
    a, b = torch.randn(8, 64, device="cuda"), torch.randn(32, 8, device="cuda")  # fp32 factors
    with pytest.raises(PlanError, match="lora_linear"):
        lora_linear(x, w, a, b, 2.0)
    q = torch.randn(1, 16, 4, 128, device="cuda")
    with pytest.raises(ValueError, match="dtype"):
        flash_attention(q, q, q)


def test_sweep_shapes_are_the_engine_presets():
    """coalm_kernels.aot writes the Llama shapes out (the kernels import nothing from engine): they must stay the
    presets' own numbers."""
    from engine.config import get_config

    for preset, shapes in aot.PRESET_SHAPES.items():
        a = get_config(preset)
        assert shapes == {k: getattr(a, k) for k in shapes}, preset
