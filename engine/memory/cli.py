"""The trainer's side of the memory plan: `--plan` (print it and exit, no weights read), `--activation-checkpointing
auto` (the cheapest policy that fits `--memory-budget`), and the refusal of a run that fits under no policy, with the
smallest change that would fit. engine.train calls `plan_main` or `choose_policy` once, before loading weights.

Plans are cached on disk (the coalm cache folder, `memory_plans.json`) under a key that holds the spec and a hash of
the source of every module the trace runs, so a code change re-traces and a repeated run starts at once.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ..parallel.dist import print0
from .plan import Row, choose, default_budget, fit_line, fmt, max_fit, parse_bytes, row, table
from .policy import POLICIES, policies_for
from .trace import Spec, estimate

_TRACED = ("engine/model.py", "engine/lora.py", "engine/memory/trace.py", "engine/memory/policy.py",
           "engine/memory/offload.py", "engine/memory/shadows.py", "engine/memory/plan.py")


def model_args(cfg):
    """The architecture of cfg.model without reading weights: config.json of a checkpoint dir, else the preset."""
    from ..config import get_config, resolve_name

    path = Path(str(cfg.model)).expanduser()
    if path.is_dir():
        from ..weights import read_hf_config

        return read_hf_config(path)
    name = cfg.size or (cfg.model if path.suffix != ".gguf" else None)
    if name is None:
        raise ValueError(f"--plan: cannot read the architecture of {cfg.model} without loading it; add --size")
    if Path(name).name != name or "/" in name:  # a Hub id: its config.json from the HF cache
        from ..hub import resolve_source
        from ..weights import read_hf_config

        return read_hf_config(Path(resolve_source(name)))
    return get_config(resolve_name(name))


def spec_for(cfg, device: str, policy: str = "none") -> Spec:
    args = model_args(cfg)
    from ..loader import default_dtype, parse_dtype

    dtype = parse_dtype(cfg.dtype) if cfg.dtype else default_dtype(torch.device(device))
    tokens = cfg.micro_batch_size * cfg.max_seq_len  # the worst micro-batch: every row at the length limit
    return Spec(args=args, mode=cfg.mode, device=device, dtype=dtype, tokens=tokens, seq_len=cfg.max_seq_len,
                policy=policy, lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha, tp=cfg.tp)


def _world(cfg) -> int:
    return cfg.world_size or int(os.environ.get("WORLD_SIZE", cfg.tp))


def _mesh(cfg) -> tuple[int, bool]:
    dp = max(1, _world(cfg) // cfg.tp)
    return dp, cfg.mode == "full" and dp > 1


def _source_hash() -> str:
    root = Path(__file__).resolve().parents[2]
    h = hashlib.sha256(torch.__version__.encode())
    for rel in _TRACED + tuple(sorted(str(p.relative_to(root)) for p in (root / "coalm_kernels").glob("*.py"))):
        p = root / rel
        h.update(p.read_bytes() if p.is_file() else rel.encode())
    return h.hexdigest()[:16]


def cached_row(spec: Spec, dp: int, fsdp: bool) -> Row:
    """plan.row(spec, estimate(spec)) through the on-disk cache."""
    from engine.data import cache_dir

    path = cache_dir() / "memory_plans.json"
    key = json.dumps({"spec": {**asdict(spec), "args": spec.args.asdict(), "dtype": str(spec.dtype)}, "dp": dp,
                      "fsdp": fsdp, "src": _source_hash()}, sort_keys=True, default=str)
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return Row(**cache[key])
    r = row(spec, estimate(spec), dp, fsdp)
    cache[key] = asdict(r)
    try:  # a temporary sibling, then rename: a crash never leaves a torn cache
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(path)
    except OSError:
        pass
    return r


def _planner(dp: int, fsdp: bool):
    return lambda s: cached_row(s, dp, fsdp)


def budget_of(cfg, device: str) -> int:
    if cfg.memory_budget is not None:
        return parse_bytes(cfg.memory_budget)
    if cfg.device_memory is not None:
        return parse_bytes(cfg.device_memory, "--device-memory")
    return default_budget(device)


def smallest_change(cfg, spec: Spec, budget: int, dp: int, fsdp: bool) -> str:
    """The one-flag change that fits, tried from the least intrusive: fewer rows per micro-batch, shorter rows,
    --qlora, more --tp."""
    best = replace(spec, policy=policies_for(spec.device)[-1])  # the policy that keeps the least
    line = fit_line(replace(best, tokens=cfg.max_seq_len), _planner(dp, fsdp))
    if cfg.micro_batch_size > 1 and line[1] <= budget:  # one row at full length fits
        fits = max_fit(best, budget, _planner(dp, fsdp), line=line) // cfg.max_seq_len
        return f"--micro-batch-size {max(1, fits)}"
    longest = max_fit(best, budget, _planner(dp, fsdp), batch1=True, line=line)
    if longest >= 64:
        return f"--max-seq-len {longest - longest % 64} --micro-batch-size 1"
    if cfg.mode != "qlora":
        return "--qlora"
    for tp in (2, 4, 8):
        if tp > cfg.tp and spec.args.n_kv_heads % tp == 0 and cached_row(replace(best, tp=tp), dp, fsdp).total <= budget:
            return f"--tp {tp}"
    return "a larger device"


def choose_policy(cfg, device: torch.device) -> str:
    """The policy to train with: an explicit one as given; `auto`: the cheapest that fits the budget (logged). A run
    that fits under none is refused here, before any weight is read (ValueError, one line)."""
    if cfg.activation_checkpointing != "auto":
        return cfg.activation_checkpointing
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # every rank must run the same policy (FSDP2 all-gathers again in a recompute): rank 0 decides for all
        box = [None]
        if dist.get_rank() == 0:
            try:
                box = [_choose(cfg, device)]
            except ValueError as e:
                box = [e]
        dist.broadcast_object_list(box, src=0)
        if isinstance(box[0], ValueError):
            raise box[0]
        return box[0]
    return _choose(cfg, device)


def _choose(cfg, device: torch.device) -> str:
    dev = device.type
    spec = spec_for(cfg, dev)
    dp, fsdp = _mesh(cfg)
    budget = budget_of(cfg, dev)
    rows = []
    for p in policies_for(dev):  # cheapest first: stop at the first that fits
        rows.append(cached_row(replace(spec, policy=p), dp, fsdp))
        if rows[-1].total <= budget:
            print0(f"activation checkpointing: {p} (auto: planned peak {fmt(rows[-1].total).strip()} of a "
                   f"{fmt(budget).strip()} budget)")
            return p
    change = smallest_change(cfg, spec, budget, dp, fsdp)
    raise ValueError(f"this run does not fit {fmt(budget).strip()} under any activation checkpointing policy (the "
                     f"smallest plan, {rows[-1].policy}, needs {fmt(rows[-1].total).strip()}): try {change}")


def plan_main(cfg) -> int:
    """--plan: print the plan per policy, what fits, and exit (nothing is loaded)."""
    dev = "cuda" if cfg.device_memory is not None or torch.cuda.is_available() else (cfg.device or "cpu")
    dev = torch.device(dev).type
    spec = spec_for(cfg, dev)
    dp, fsdp = _mesh(cfg)
    budget = budget_of(cfg, dev)
    a = spec.args
    print(f"memory plan (predicted by tracing one training step; per device): {cfg.model}, {cfg.mode}"
          f"{'' if cfg.mode == 'full' else f' r{cfg.lora_rank}'}, {str(spec.dtype).removeprefix('torch.')}, "
          f"{a.n_layers} layers, micro-batch {cfg.micro_batch_size} x {cfg.max_seq_len} = {spec.tokens} tokens, "
          f"dp {dp} x tp {cfg.tp}{' (FSDP2)' if fsdp else ''}, on {dev} with {fmt(budget).strip()}", flush=True)
    rows = [cached_row(replace(spec, policy=p), dp, fsdp) for p in policies_for(dev)]
    print(table(rows, budget))
    pick = choose(rows, budget)
    if pick is None:
        print(f"does not fit under any policy: try {smallest_change(cfg, spec, budget, dp, fsdp)}")
        return 1
    print(f"fits: auto picks {pick.policy} ({fmt(pick.total).strip()})", flush=True)
    s = replace(spec, policy=pick.policy)
    line = fit_line(s, _planner(dp, fsdp))
    tokens = max_fit(s, budget, _planner(dp, fsdp), line=line)
    longest = max_fit(s, budget, _planner(dp, fsdp), batch1=True, line=line)
    print(f"under {pick.policy}: up to {tokens} tokens per micro-batch at sequence length {cfg.max_seq_len}; "
          f"longest sequence at micro-batch 1: {longest}")
    return 0


assert POLICIES[0] == "none"  # choose_policy's order: cheapest first
