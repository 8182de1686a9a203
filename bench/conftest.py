"""Shared benchmark plumbing.

`pytest bench/ --benchmark-only` runs every suite. On a CPU the sizes are small so the suite stays quick; on a
CUDA device (`bench/gpu_suite.sh`) they are the real Llama 3.1 8B shapes. Each benchmark states the number
that matters through the `report` fixture; with $COALM_BENCH_RESULTS set, all rows are written to that JSON
file at the end of the session.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

import pytest
import torch

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
_ROWS: list[dict] = []


def pick(cpu, gpu):
    """The CPU-sized or GPU-sized value of a benchmark parameter."""
    return gpu if ON_GPU else cpu


def sync():
    if ON_GPU:
        torch.cuda.synchronize()


def median_time(fn, warmup: int = 3, iters: int = 10) -> float:
    """Median seconds per call, with device synchronisation; for peers measured outside pytest-benchmark."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bnb_dequantizer(q, dtype):
    """(fn, None) where fn() runs bitsandbytes' `dequantize_4bit` on the NF4 weight `q` on this device, or
    (None, reason) when bitsandbytes is missing or cannot run here (the benchmark then skips that peer, saying so)."""
    try:
        import bitsandbytes.functional as bnbf
    except ImportError as e:
        return None, f"bitsandbytes not importable: {e}"
    packed, qs = q.to_bnb()
    qs.dtype = dtype
    try:
        bnbf.dequantize_4bit(packed, qs)
    except Exception as e:  # noqa: BLE001 - any failure means the peer cannot run here
        return None, f"bitsandbytes cannot dequantize on {DEVICE}: {type(e).__name__}: {e}"
    return (lambda: bnbf.dequantize_4bit(packed, qs)), None


def require_package_files(module: str, what: str):
    """Skip a benchmark whose model or data ships in a package that is not installed here (the lent GPU machine has
    no network, and the SmolLM2 GGUF is larger than what can be carried to it), saying so."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{what} comes from the `{module}` package, which is not installed here", allow_module_level=True)


def device_name() -> str:
    return torch.cuda.get_device_name() if ON_GPU else platform.processor() or platform.machine()


@pytest.fixture
def report(benchmark):
    """report(name, time_s, metric, value, peer=None, peer_time_s=None, **extra): one result row.

    ratio = peer_time_s / time_s (> 1 means we are faster than the peer).
    """

    def _report(name, time_s, metric, value, peer=None, peer_time_s=None, **extra):
        row = {"name": name, "device": device_name(), "median_s": time_s, "metric": metric, "value": value}
        if peer is not None:
            row.update(peer=peer, peer_median_s=peer_time_s, ratio=(peer_time_s / time_s) if peer_time_s else None)
        row.update(extra)
        _ROWS.append(row)
        benchmark.extra_info.update({k: v for k, v in row.items() if k != "device"})
        return row

    return _report


def pytest_sessionfinish(session, exitstatus):
    out = os.environ.get("COALM_BENCH_RESULTS")
    if out and _ROWS:
        meta = {"device": device_name(), "torch": torch.__version__, "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        try:
            import triton

            meta["triton"] = triton.__version__
        except ImportError:
            pass
        with open(out, "w") as f:
            json.dump({"meta": meta, "results": _ROWS}, f, indent=1)
    if _ROWS:
        print("\n".join(["", "benchmark results:"] + [_fmt(r) for r in _ROWS]))


def _fmt(r: dict) -> str:
    s = f"  {r['name']}: {r['median_s'] * 1e3:.3f} ms, {r['value']:.4g} {r['metric']}"
    if r.get("peer"):
        s += f"; vs {r['peer']}: {r['ratio']:.2f}x" if r.get("ratio") else f"; vs {r['peer']}: n/a"
    return s
