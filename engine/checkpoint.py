"""Training checkpoints (`out/checkpoints/step-N/`: trainable tensors, optimizer, scheduler, RNG per rank, and for
LoRA/QLoRA an `adapter/` folder in PEFT format) and the final outputs of a run (`out/adapter/`, or for a full
fine-tune `out/model/`, a self-contained HF folder with tokenizer and generation config).

Adapters name their base model so that other tools find it: a Hub id, or an absolute path (`engine.hub.portable_name`).
`--adapter runs/x/checkpoints/step-200/adapter` works in generate, eval, merge and PEFT.

Writes are atomic per checkpoint: every rank writes into step-N.tmp, rank 0 writes `manifest.json` (every file's size)
last and renames the folder to step-N, so a run killed mid-write leaves the previous checkpoint intact (an unrenamed
.tmp is ignored and overwritten). `--resume` verifies the newest checkpoint against its manifest and the file formats
(safetensors header, torch zip) and falls back to the previous good one, naming what it skipped (`find_resumable`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch

from .atomic import publish
from .parallel.dist import is_rank0, print0, world_size
from .parallel.fsdp import gather_optimizer, gather_params, is_sharded, load_sharded, unsharded_copy
from .parallel.mesh import current_mesh


def trainable_state(model) -> dict[str, torch.Tensor]:
    """This rank's trainable parameters by our module names (under tensor parallelism, its own shards)."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def list_checkpoints(out: Path) -> list[Path]:
    """Renamed (finished) checkpoints of a run, oldest first; `find_resumable` also checks their contents."""
    d = Path(out) / "checkpoints"
    done = [p for p in d.glob("step-*") if p.name.split("-", 1)[1].isdigit() and (p / "state-rank0.pt").is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


MANIFEST = "manifest.json"


def write_manifest(d: Path) -> None:
    """Every file's size, written last (fsynced files first): a checkpoint whose files match it is complete."""
    files = {}
    for f in sorted(d.rglob("*")):
        if f.is_file() and f.name != MANIFEST:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            files[f.relative_to(d).as_posix()] = f.stat().st_size
    (d / MANIFEST).write_text(json.dumps({"format": 1, "files": files}, indent=1))


def _safetensors_problem(f: Path) -> str | None:
    """The header parses and its tensors end exactly at the end of the file (a truncated file does not)."""
    size = f.stat().st_size
    with open(f, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return "truncated safetensors header"
        n = int.from_bytes(head, "little")
        if n > size - 8:
            return "truncated safetensors header"
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, ValueError):
            return "unreadable safetensors header"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return None if 8 + n + max(ends, default=0) == size else "safetensors data does not match its header"


def _torch_zip_problem(f: Path) -> str | None:
    import zipfile

    try:
        with zipfile.ZipFile(f) as z:  # torch.save's format; a truncated file loses its central directory
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"not a complete torch file ({e})"
    return None if any(n.endswith("data.pkl") for n in names) else "no data.pkl in the torch file"


def checkpoint_problem(path: Path) -> str | None:
    """None for a complete checkpoint, else why not (one phrase)."""
    manifest = path / MANIFEST
    if manifest.is_file():
        try:
            files = json.loads(manifest.read_text())["files"]
        except (ValueError, KeyError, TypeError):
            return f"unreadable {MANIFEST}"
        for name, size in files.items():
            f = path / name
            if not f.is_file():
                return f"{name} is missing"
            if f.stat().st_size != size:
                return f"{name} has {f.stat().st_size} bytes, its manifest says {size}"
    targets = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.pt"))  # checkpoints from before manifests too
    if not any(t.suffix == ".safetensors" for t in targets):
        return "no trainable-rank*.safetensors"
    for f in targets:
        why = _safetensors_problem(f) if f.suffix == ".safetensors" else _torch_zip_problem(f)
        if why:
            return f"{f.name}: {why}"
    return None


def find_resumable(out: Path, required: bool = True, warn=print0) -> Path | None:
    """The newest complete checkpoint of `out`, skipping (with a warning naming each) damaged newer ones. None when
    there is none and not `required`; a one-line ValueError when `required` (plain --resume)."""
    skipped = []
    for ckpt in reversed(list_checkpoints(out)):
        why = checkpoint_problem(ckpt)
        if why is None:
            if skipped:
                warn(f"warning: --resume skipped {'; '.join(skipped)}; resuming from {ckpt.name}")
            return ckpt
        skipped.append(f"{ckpt.name} ({why})")
    what = f"no complete checkpoint in {Path(out) / 'checkpoints'}" + (f" (skipped {'; '.join(skipped)})"
                                                                       if skipped else "")
    if required:
        raise ValueError(f"--resume: {what}; pass --resume auto to start from scratch when there is none")
    warn(f"--resume auto: {what}, starting from scratch")
    return None


def _barrier():
    if world_size() > 1:
        torch.distributed.barrier()


def _save_adapter(model, cfg, directory: Path):
    """The PEFT adapter of a LoRA/QLoRA run (under TP a collective: every rank calls it)."""
    from .hub import portable_name

    base, _, revision = portable_name(cfg.model).partition("@")  # PEFT takes the revision as its own key
    if cfg.tp > 1:
        from .parallel.tp import save_adapter_parallel

        save_adapter_parallel(model, directory, base_model=base, write=current_mesh().dp_rank == 0)
    elif is_rank0():
        from .lora import save_adapter

        save_adapter(model, directory, base_model=base)
    if revision and is_rank0():
        import json

        path = Path(directory) / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "revision": revision}, indent=1))


def _best_checkpoint(out: Path) -> str | None:
    import json

    try:
        return Path(json.loads((out / "best.json").read_text())["checkpoint"]).name
    except (OSError, ValueError, KeyError):
        return None


def save_checkpoint(out: Path, step: int, model, opt, sched, cfg):
    from safetensors.torch import save_file

    final = out / "checkpoints" / f"step-{step}"
    tmp = final.with_name(final.name + ".tmp")
    if is_rank0():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    mesh = current_mesh()  # DP replicas hold the same state: the first one writes, one file per TP rank
    r = mesh.tp_rank
    if is_sharded(model):  # FSDP2: gathered onto DP replica 0 in the single-process format (a collective)
        params, optim = gather_params(model, mesh), gather_optimizer(opt, mesh)
    elif mesh.dp_rank == 0:
        params, optim = trainable_state(model), opt.state_dict()
    if mesh.dp_rank == 0:
        save_file(params, str(tmp / f"trainable-rank{r}.safetensors"))
        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save({"step": step, "optimizer": optim, "scheduler": sched.state_dict(), "rng": rng},
                   tmp / f"state-rank{r}.pt")
    if is_rank0():  # what a resume must match (tp) and may change (dp: the data order depends on the step only)
        (tmp / "mesh.json").write_text(json.dumps({"step": step, "tp": mesh.tp, "dp": mesh.dp}))
    if cfg.mode != "full":
        _save_adapter(model, cfg, tmp / "adapter")
    _barrier()
    if is_rank0():
        write_manifest(tmp)
        publish(tmp, final)  # a re-save of the same step swaps in atomically
        best = _best_checkpoint(out)
        for old in list_checkpoints(out)[:-cfg.keep_last]:
            if old.name != best:  # the checkpoint with the lowest validation loss outlives the rotation
                shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_checkpoint(path: Path, model, opt, sched) -> int:
    from safetensors.torch import load_file

    mesh = current_mesh()
    saved_tp = len(list(path.glob("trainable-rank*.safetensors")))
    if saved_tp != mesh.tp:
        raise ValueError(f"{path} was written with --tp {saved_tp} but this run has --tp {mesh.tp}: resume with "
                         f"--tp {saved_tp} (the number of data-parallel replicas may change)")
    r = mesh.tp_rank
    saved = load_file(str(path / f"trainable-rank{r}.safetensors"))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(saved) != set(params):
        raise ValueError(f"{path} does not match this run's trainable parameters (different mode, rank or model?)")
    # host memory first: a GPU run's file names cuda:0, where every rank of a later run would otherwise load it
    state = torch.load(path / f"state-rank{r}.pt", weights_only=True, map_location="cpu")
    if is_sharded(model):  # FSDP2: each DP rank keeps its shard of the full tensors (any DP size)
        load_sharded(model, opt, saved, state["optimizer"])
    else:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n])
        opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    py = state["rng"]["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["step"])


def save_final(model, tok, cfg, out: Path):
    """The run's result: out/adapter (PEFT) for LoRA/QLoRA, out/model (a self-contained HF folder) for --full."""
    if cfg.mode == "full":
        dtype = next(model.parameters()).dtype
        if is_sharded(model) or cfg.tp > 1:  # gathered over DP (FSDP2) and TP onto rank 0 (a collective)
            params = gather_params(model, current_mesh(), across_tp=True)
            model = unsharded_copy(model, params) if is_rank0() else model
        if is_rank0():
            from .export import export_hf
            from .hub import resolve_source

            export_hf(model, tok, out / "model", dtype=dtype, source=resolve_source(cfg.model), overwrite=True)
            print0(f"model saved to {out / 'model'}")
        return
    tmp = out / "adapter.tmp"
    if is_rank0():
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier()
    _save_adapter(model, cfg, tmp)
    if is_rank0():
        publish(tmp, out / "adapter")  # the previous adapter stays until the new one is complete
        print0(f"adapter saved to {out / 'adapter'}")
