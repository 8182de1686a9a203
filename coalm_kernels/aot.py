"""Ahead-of-time compile check of every Triton kernel for sm_90 (H100) and sm_80 (A100), no GPU needed.

    python -m coalm_kernels.aot                                      # default configs, 8B shapes, bf16
    python -m coalm_kernels.aot --full --report bench/aot_report.md  # every candidate, every dtype and preset

Each kernel module's `launch_plan` says what its host code would launch (kernel, constexprs, candidate configs per
arch); this module builds those plans at Llama shapes, specializes them with Triton's own argument binder (so the
signature, constexprs and divisibility hints are the ones a real launch would compile) and runs the whole pipeline
(TTIR, TTGIR, LLIR, PTX, cubin through the wheel's ptxas) for each arch. Checks: no compile failure; shared memory
within the arch's limit; no spill stores on bf16/fp16 launches and under 1 KB on fp32 ones; `wgmma` in the PTX of
every sm_90 tl.dot tile with BLOCK_M >= 64 (fp32 without TF32 has no tensor-core path and is exempt). Each failure
is one line naming the kernel, the config and the first error line; the exit status is 1 when any check fails.

Compiles run in at most --jobs worker processes (a compiler crash such as an LLVM abort loses only its job);
results are cached next to Triton's cache, keyed by the compiled source, so a rerun compiles only what changed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

from coalm_kernels import cross_entropy, flash_attn_plan, lora_matmul, nf4, rms_norm, rope, swiglu
from coalm_kernels.plan import ARCHS, SMEM_LIMIT, Config, Launch, PlanError

FP32_SPILL_LIMIT = 1024  # bytes of spill stores per thread tolerated on fp32 launches ("not by kilobytes")
MODELS = (("1B", "llama-3.2-1b", 1), ("3B", "llama-3.2-3b", 1), ("8B", "llama-3.1-8b", 1),
          ("70B-TP8", "llama-3.3-70b", 8))
HALF = (torch.bfloat16, torch.float16)
NF4_KINDS = {"dense": None, "nf4-64-dq": (64, True), "nf4-64": (64, False), "nf4-128-dq": (128, True)}
M_RANGES = (16, 256, 4096)  # one M per autotune range of the matmul (small, mid, large)


@dataclass
class Case:
    """One plan at one shape: `where` says which (preset, dtype, flags) it came from."""

    where: str
    dtype: torch.dtype
    plan: Launch


@dataclass
class Job:
    plan: Launch
    config: Config
    arch: int
    dtype: torch.dtype
    wheres: list = field(default_factory=list)
    key: str = ""
    result: dict | None = None


def _dt(d: torch.dtype) -> str:
    return str(d).replace("torch.", "").replace("bfloat16", "bf16").replace("float16", "fp16").replace("float32", "fp32")


# The Llama 3.x shapes the sweep compiles at. The kernels import nothing from the engine (the layer order), so the
# presets' numbers are written here and tests/kernels/test_aot.py checks them against engine.config's presets.
PRESET_SHAPES = {
    "llama-3.2-1b": {"dim": 2048, "n_heads": 32, "n_kv_heads": 8, "head_dim": 64, "ffn_dim": 8192, "vocab_size": 128256},
    "llama-3.2-3b": {"dim": 3072, "n_heads": 24, "n_kv_heads": 8, "head_dim": 128, "ffn_dim": 8192, "vocab_size": 128256},
    "llama-3.1-8b": {"dim": 4096, "n_heads": 32, "n_kv_heads": 8, "head_dim": 128, "ffn_dim": 14336,
                     "vocab_size": 128256},
    "llama-3.3-70b": {"dim": 8192, "n_heads": 64, "n_kv_heads": 8, "head_dim": 128, "ffn_dim": 28672,
                      "vocab_size": 128256},
}


def _model_shapes(preset: str, tp: int) -> dict:
    a = PRESET_SHAPES[preset]
    return {"dim": a["dim"], "hq": a["n_heads"] // tp, "hkv": max(1, a["n_kv_heads"] // tp), "hd": a["head_dim"],
            "ffn": a["ffn_dim"] // tp, "vocab": a["vocab_size"]}


def _lora_kinds(full: bool, dt: torch.dtype) -> list[tuple[str, tuple | None, bool]]:
    """(label, NF4 spec, tf32) weight kinds swept per dtype: every kind in bf16, the QLoRA and dense weights in
    fp16 and fp32 (TF32 on; QLoRA with TF32 off too, the no-tensor-core path)."""
    if not full:
        return [("nf4-64-dq", (64, True), True)]
    if dt == torch.bfloat16:
        return [(k, v, True) for k, v in NF4_KINDS.items()]
    kinds = [("dense", None, True), ("nf4-64-dq", (64, True), True)]
    return kinds + ([("nf4-64-dq ieee", (64, True), False)] if dt == torch.float32 else [])


def cases(full: bool, arch: int) -> list[Case]:
    """The plans to compile. Default: the 8B preset in bf16 (QLoRA weights). --full: bf16 at every preset, fp16 and
    fp32 at 8B; every weight kind, M range, attention layout and flag. The matmul's shapes differ only in values
    Triton does not specialize on (all Llama dims are multiples of 16), so presets add compiles only where they
    change a constexpr (head dim, GQA group, row width, vocab)."""
    out = []

    def add(where, dtype, plan_fn, *args, **kw):
        try:
            out.append(Case(where, dtype, plan_fn(*args, **kw)))
        except PlanError:  # outside the plan on a GPU (e.g. fp32 flash attention): never launched there
            pass

    combos = [(m, torch.bfloat16) for m in MODELS] + [(MODELS[2], d) for d in (torch.float16, torch.float32)]
    for (label, preset, tp), dt in (combos if full else [(MODELS[2], torch.bfloat16)]):
        s = _model_shapes(preset, tp)
        dim, hq, hkv, hd, ffn = s["dim"], s["hq"], s["hkv"], s["hd"], s["ffn"]
        main = label == "8B" and dt == torch.bfloat16  # the preset that gets every flag
        w = f"{label} {_dt(dt)}"
        linears = sorted({(hq * hd, dim), (hkv * hd, dim), (dim, hq * hd), (ffn, dim), (dim, ffn)})
        ragged = (dim, dim + 4)  # a K that is no multiple of the blocksize: the element-wise NF4 path (not Llama's)
        for kind, spec, tf32 in _lora_kinds(full, dt):
            for (N, K) in linears + ([ragged] if full and main and spec else []):
                for M in (M_RANGES if full else (4096,)):
                    for op in ("fwd", "dx"):
                        add(f"{w} {kind} M={M} N={N} K={K}", dt, lora_matmul.launch_plan, op, M, N, K, 16, dt, spec,
                            tf32, arch)
        for varlen in ((True, False) if full and main else (True,)):
            seqs = {"batch": 1, "varlen": True} if varlen else {"batch": 2, "varlen": False}
            for op in ("fwd", "pre", "dkdv", "dq"):
                tag = f"{w} hq={hq} hkv={hkv} D={hd} T=4096 {'packed' if varlen else 'padded'}"
                add(tag, dt, flash_attn_plan.launch_plan, op, dt, hq, hkv, hd, 4096, **seqs, arch=arch)
        for tq in ((1, 64) if full else (1,)):
            add(f"{w} decode tq={tq} hq={hq} hkv={hkv} D={hd}", dt, flash_attn_plan.launch_plan, "decode", dt, hq, hkv,
                hd, 8192, batch=4, tq=tq, arch=arch)
        for op in ("fwd", "bwd"):
            add(f"{w} N={dim}", dt, rms_norm.launch_plan, op, 4096, dim, dt, dt, arch, programs=528)
            add(f"{w} n=4096x{ffn}", dt, swiglu.launch_plan, op, 4096 * ffn, dt, arch)
        for h in ((hq, hkv) if full else (hq,)):
            for sign in ((1.0, -1.0) if full else (1.0,)):
                add(f"{w} H={h} D={hd}", dt, rope.launch_plan, 4096, h, hd, dt, sign, False, arch)
        for grad in ((True, False) if full else (True,)):
            add(f"{w} V={s['vocab']}", dt, cross_entropy.launch_plan, 1024, s["vocab"], torch.float32, dt, grad, arch)
        for kind, spec in (NF4_KINDS.items() if full else [("nf4-64-dq", (64, True))]):
            if spec:
                add(f"{w} {kind} n={dim}x{ffn}", dt, nf4.launch_plan, dim * ffn, *spec, dt, arch)
    return out


_BACKENDS: dict = {}


def _source(plan: Launch, config: Config, arch: int):
    """(ASTSource, options) as a real launch of `plan` with `config` would compile them, via Triton's binder."""
    if arch not in _BACKENDS:
        _BACKENDS[arch] = make_backend(GPUTarget("cuda", arch, 32))
    backend, fn = _BACKENDS[arch], plan.kernel
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    args = [torch.empty(8, dtype=a) if isinstance(a, torch.dtype) else a for a in plan.args]
    kw = {**plan.constexprs, **config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages,
          **plan.options, "debug": False, "instrumentation_mode": "", "fpsan_homomorphic_casts": False}
    bound, spec, opts = binder(*args, **kw)
    options, signature, constexprs, attrs = fn._pack_args(backend, kw, bound, spec, opts)
    return ASTSource(fn, signature, constexprs, attrs), options.__dict__


def _key(src, options, arch) -> str:
    text = f"{triton.__version__}|{arch}|{src.hash()}|{sorted((k, str(v)) for k, v in options.items())}"
    return hashlib.sha256(text.encode()).hexdigest()


def _ptxas_stats(log: str) -> dict:
    def num(pattern):
        m = re.search(pattern, log)
        return int(m.group(1)) if m else 0

    return {"regs": num(r"Used (\d+) registers"), "spill_st": num(r"(\d+) bytes spill stores"),
            "spill_ld": num(r"(\d+) bytes spill loads"), "stack": num(r"(\d+) bytes stack frame")}


def _rerun_ptxas(ptx: str, arch: int, fmad: bool) -> str:
    """ptxas -v on cached PTX (Triton prints the log only when it compiles); the flags Triton itself passes."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "k.ptx"
        src.write_text(ptx)
        cmd = [get_ptxas(arch).path, "-lineinfo", *([] if fmad else ["--fmad=false"]), "-v", "--regAllocOptLevel=2",
               f"--gpu-name={sm_arch_from_capability(arch)}", str(src), "-o", str(src) + ".o"]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stderr


def compile_one(job: Job) -> dict:
    """Compile one job; registers, spills, shared memory, tensor-core instruction counts, seconds, or the error."""
    src, options = _source(job.plan, job.config, job.arch)
    knobs.nvidia.dump_ptxas_log = True
    log = io.StringIO()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            ck = triton.compile(src, target=GPUTarget("cuda", job.arch, 32), options=options)
    except Exception as e:  # noqa: BLE001 - any compiler error is a reported result, not a crash of the sweep
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        return {"ok": False, "error": f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]}
    seconds = time.perf_counter() - t0
    text = log.getvalue()
    if "Used" not in text:
        text = _rerun_ptxas(ck.asm["ptx"], job.arch, options.get("enable_fp_fusion", True))
    ptx = ck.asm["ptx"]
    return {"ok": True, **_ptxas_stats(text), "shared": int(ck.metadata.shared), "seconds": round(seconds, 2),
            "wgmma": len(re.findall(r"\bwgmma\.mma_async", ptx)), "mma": len(re.findall(r"\bmma\.sync", ptx))}


# ---- worker processes: one job at a time each, so that a compiler abort (LLVM ERROR) loses only that job -----

_JOBS: list[Job] = []


def _worker(conn, errdir: str) -> None:
    while (idx := conn.recv()) is not None:
        err = os.open(os.path.join(errdir, f"{idx}.err"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(err, 2)  # native compiler messages of this job (read back if the process dies)
        res = compile_one(_JOBS[idx])
        if not res["ok"]:  # MLIR prints the real reason ("error: ...") to stderr, the exception only its symptom
            sys.stderr.flush()
            first = _first_error(os.path.join(errdir, f"{idx}.err"))
            res["error"] = f"{first} ({res['error']})"[:300] if first else res["error"]
        conn.send((idx, res))


def _first_error(path: str, fallback_last: bool = False) -> str:
    """The first line of a job's stderr that names an error (else its last line, when asked)."""
    try:
        lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    hits = [ln for ln in lines if "error" in ln.lower() and "Warning" not in ln]
    return hits[0] if hits else (lines[-1] if lines and fallback_last else "")


def _crash_line(path: str, code) -> str:
    return f"compiler process died (exit {code}): {_first_error(path, True)}"[:300]


def run_jobs(todo: list[int], jobs: int, progress) -> None:
    ctx = mp.get_context("fork")  # workers inherit _JOBS (plans hold jit functions, which do not pickle)
    queue = list(reversed(todo))
    with tempfile.TemporaryDirectory() as errdir:
        workers = {}  # conn -> (process, job index or None)

        def start():
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(child, errdir), daemon=True)
            p.start()
            workers[parent] = [p, None]

        def feed(conn):
            if queue:
                workers[conn][1] = queue.pop()
                conn.send(workers[conn][1])
            else:
                conn.send(None)
                workers[conn][0].join()
                del workers[conn]

        for _ in range(min(jobs, len(todo))):
            start()
        for conn in list(workers):
            feed(conn)
        while workers:
            ready = wait(list(workers) + [w[0].sentinel for w in workers.values()])
            for conn in list(workers):
                proc, idx = workers[conn]
                if conn in ready and conn.poll():
                    done, res = conn.recv()
                    _JOBS[done].result = res
                    progress(done)
                    feed(conn)
                elif proc.sentinel in ready and not proc.is_alive():
                    proc.join()
                    del workers[conn]
                    if idx is not None:
                        _JOBS[idx].result = {"ok": False, "error": _crash_line(os.path.join(errdir, f"{idx}.err"),
                                                                             proc.exitcode)}
                        progress(idx)
                    if queue:
                        start()
                        feed(next(reversed(workers)))


# ---- checks and the sweep ------------------------------------------------------------------------------------


def check(job: Job) -> list[str]:
    """The failed checks of one compiled job, one line each naming kernel, config, arch and shapes."""
    r, plan, cfg = job.result, job.plan, job.config
    at = f"{plan.name} [{cfg.label()}] sm_{job.arch} ({job.wheres[0]}{' ...' if len(job.wheres) > 1 else ''})"
    if not r["ok"]:
        return [f"{at}: compile failed: {r['error']}"]
    bad = []
    if r["shared"] > SMEM_LIMIT[job.arch]:
        bad.append(f"{at}: shared memory {r['shared']} B over the sm_{job.arch} limit {SMEM_LIMIT[job.arch]} B")
    limit = FP32_SPILL_LIMIT if job.dtype == torch.float32 else 1
    if r["spill_st"] >= limit:
        bad.append(f"{at}: {r['spill_st']} B of register spill stores per thread ({r['regs']} registers)")
    wants_wgmma = plan.dot_m and cfg.kwargs.get(plan.dot_m, 0) >= 64 and plan.constexprs.get("PRECISION") != "ieee"
    if job.arch == 90 and wants_wgmma and r["wgmma"] == 0:
        bad.append(f"{at}: no wgmma in the PTX of a tl.dot tile with {plan.dot_m} >= 64")
    return bad


def build_jobs(full: bool, archs) -> list[Job]:
    """Unique compiles of every case and candidate (--full) or default config, keyed by what Triton compiles."""
    jobs: dict[str, Job] = {}
    for arch in archs:
        for case in cases(full, arch):
            for cfg in case.plan.configs if full else case.plan.configs[:1]:
                src, options = _source(case.plan, cfg, arch)
                key = _key(src, options, arch)
                job = jobs.setdefault(key, Job(case.plan, cfg, arch, case.dtype, key=key))
                job.wheres.append(case.where)
    return list(jobs.values())


def sweep(full: bool, archs=ARCHS, jobs: int = 2, quiet: bool = False) -> list[Job]:
    """Compile every job (cached results reused) and return them with results."""
    _JOBS[:] = build_jobs(full, archs)
    cache = Path(knobs.cache.dir) / "coalm_aot"
    cache.mkdir(parents=True, exist_ok=True)
    todo = []
    for i, job in enumerate(_JOBS):
        f = cache / f"{job.key}.json"
        if f.exists():
            job.result = json.loads(f.read_text())
        else:
            todo.append(i)
    t0, n = time.perf_counter(), [0]

    def progress(i):
        n[0] += 1
        job = _JOBS[i]
        if job.result.get("ok"):  # failures are not cached: a fixed compiler environment retries them
            tmp = cache / f"{job.key}.json.tmp{os.getpid()}"
            tmp.write_text(json.dumps(job.result))
            tmp.replace(cache / f"{job.key}.json")
        if not quiet:
            print(f"[{n[0]}/{len(todo)} {time.perf_counter() - t0:.0f}s] sm_{job.arch} {job.plan.name} "
                  f"{job.config.label()}: {'ok' if job.result['ok'] else 'FAILED'}", file=sys.stderr, flush=True)

    if not quiet:
        print(f"aot: {len(_JOBS)} unique compiles, {len(_JOBS) - len(todo)} cached, {len(todo)} to run "
              f"({jobs} processes)", file=sys.stderr, flush=True)
    run_jobs(todo, jobs, progress)
    return list(_JOBS)


def load_on_device(jobs: list[Job]) -> list[str]:
    """On a CUDA machine: load every compiled job of the device's arch family into the driver (shared memory and
    registers are checked there, as a launch would); one line per job that does not load."""
    from coalm_kernels.plan import family

    major, minor = torch.cuda.get_device_capability()
    arch, name = major * 10 + minor, torch.cuda.get_device_name()
    bad = []
    for job in jobs:
        if job.arch != family(arch, "aot") or not job.result["ok"]:
            continue
        src, options = _source(job.plan, job.config, job.arch)
        try:
            triton.compile(src, target=GPUTarget("cuda", job.arch, 32), options=options)._init_handles()
        except Exception as e:  # noqa: BLE001 - reported per job
            first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
            bad.append(f"{job.plan.name} [{job.config.label()}] sm_{job.arch}: does not load on {name}: {first}")
    return bad


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m coalm_kernels.aot", description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="every candidate config, dtype and preset (else defaults)")
    p.add_argument("--report", type=Path, help="write the markdown report here (e.g. bench/aot_report.md)")
    p.add_argument("--arch", default=",".join(map(str, ARCHS)), help="compute capabilities, comma-separated")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="compiler processes (default 2)")
    p.add_argument("--load", action="store_true", help="also load the device arch's kernels on this machine's GPU")
    a = p.parse_args(argv)
    archs = tuple(int(x) for x in a.arch.split(","))
    unknown = set(archs) - set(ARCHS)
    if unknown:
        p.error(f"--arch {sorted(unknown)} not supported; choose from {ARCHS}")
    t0 = time.perf_counter()
    done = sweep(a.full, archs, max(1, a.jobs))
    failures = [line for job in done for line in check(job)]
    if a.load:
        if not torch.cuda.is_available():
            p.error("--load needs a CUDA device")
        failures += load_on_device(done)
    if a.report:
        from coalm_kernels.aot_report import write_report

        write_report(a.report, done, check, a.full, time.perf_counter() - t0)
        print(f"aot: report written to {a.report}", file=sys.stderr)
    for line in failures:
        print(line)
    print(f"aot: {len(done)} compiles, {len(failures)} failed checks", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
