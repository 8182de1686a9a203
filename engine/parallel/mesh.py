"""The process grid: a 2-D `torch.distributed.device_mesh` of shape (dp, tp) from `--tp` and torchrun's world size.

    torchrun --nproc_per_node 8 -m engine.train --model DIR --lora                    # DP 8
    torchrun --nproc_per_node 8 -m engine.train --model DIR --qlora --tp 4            # DP 2 x TP 4
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 --rdzv-id run1 \
        -m engine.train --model DIR --qlora --tp 8                                     # TP 8 per node, DP 2 across

Ranks are numbered node by node, and the mesh is row-major, so a TP group is `tp` consecutive ranks: inside one
node (its all-reduces need NVLink), while DP groups span the nodes (they all-reduce only the trainable gradients once
per step). NCCL on GPUs (rank r uses cuda:LOCAL_RANK), gloo on CPUs. Collectives time out after `timeout_s`
(default $COALM_DIST_TIMEOUT or 600 s), so a dead or stuck peer ends the job with an error instead of a hang.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


class MeshError(ValueError):
    """A launch that cannot work (bad --tp for this world size, TP across nodes, TP without torchrun)."""


@dataclass
class Mesh:
    dp: int = 1
    tp: int = 1
    dp_rank: int = 0
    tp_rank: int = 0
    dp_group: object = None  # None when dp == 1: nothing to reduce
    tp_group: object = None  # None when tp == 1
    device_mesh: object = None  # torch.distributed.device_mesh.DeviceMesh, None for a single process

    @property
    def is_rank0(self) -> bool:
        return self.dp_rank == 0 and self.tp_rank == 0


_MESH: Mesh | None = None


def launched_world() -> tuple[int, int]:
    """(WORLD_SIZE, LOCAL_WORLD_SIZE) that torchrun set; (1, 1) in a plain process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world, int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))


def check_mesh(tp: int, world: int | None = None, local_world: int | None = None) -> int:
    """dp for `tp` at this world size; raises before anything is loaded if the grid cannot be built."""
    if world is None:
        world, local_world = launched_world()
    local_world = local_world or world
    if not isinstance(tp, int) or tp < 1:
        raise MeshError(f"--tp must be a positive integer, got {tp!r}")
    if tp > 1 and world == 1:
        raise MeshError(f"--tp {tp} needs {tp} processes: torchrun --nproc_per_node {tp} -m ... --tp {tp}")
    if world % tp:
        raise MeshError(f"world size {world} is not a multiple of --tp {tp}: data parallelism needs world = dp x tp "
                        f"(e.g. torchrun --nproc_per_node {tp * max(1, world // tp)} ... --tp {tp})")
    if local_world % tp:
        raise MeshError(f"--tp {tp} does not divide the {local_world} processes per node: a TP group must stay "
                        f"inside one node (use --tp {local_world} or a divisor of it)")
    return world // tp


def _timeout(timeout_s: float | None) -> timedelta:
    return timedelta(seconds=float(timeout_s or os.environ.get("COALM_DIST_TIMEOUT", "600")))


def init_distributed(timeout_s: float | None = None):
    """The default process group from torchrun's environment (NCCL on CUDA, gloo on CPU)."""
    if not dist.is_initialized():
        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise MeshError(f"distributed runs need torchrun (missing env {missing}): torchrun --nproc_per_node N ...")
        if torch.cuda.is_available():
            # a failed or timed-out NCCL collective tears the process down instead of leaving it hung
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl", timeout=_timeout(timeout_s))
        else:
            dist.init_process_group("gloo", timeout=_timeout(timeout_s))
    return dist.group.WORLD


def _options(backend: str, timeout: timedelta):
    """Sub-group options carrying our timeout (new groups otherwise take the backend's 10-30 min default)."""
    if backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
    else:
        opts = dist.ProcessGroupGloo._Options()
    opts._timeout = timeout
    return opts


def init_mesh(tp: int = 1, timeout_s: float | None = None) -> Mesh:
    """The (dp, tp) mesh of this job (built once; a later call must ask for the same tp). A plain process (no
    torchrun, or a world of one) gets Mesh(dp=1, tp=1) without any process group."""
    global _MESH
    if _MESH is not None:
        if _MESH.tp != tp:
            raise MeshError(f"the process grid was built with --tp {_MESH.tp}, now asked for --tp {tp}")
        return _MESH
    dp = check_mesh(tp)
    if dp * tp == 1 and not dist.is_initialized():
        return Mesh()  # not cached: a plain process has no grid to keep consistent
    from torch.distributed.device_mesh import init_device_mesh

    init_distributed(timeout_s)
    backend = dist.get_backend()
    opts = _options(backend, _timeout(timeout_s))
    device_type = "cuda" if backend == "nccl" else "cpu"
    dm = init_device_mesh(device_type, (dp, tp), mesh_dim_names=("dp", "tp"),
                          backend_override={"dp": (backend, opts), "tp": (backend, opts)})
    _MESH = Mesh(dp, tp, dm.get_local_rank("dp"), dm.get_local_rank("tp"),
                 dm.get_group("dp") if dp > 1 else None, dm.get_group("tp") if tp > 1 else None, dm)
    return _MESH


def current_mesh() -> Mesh:
    """The mesh built by init_mesh, or a single process's."""
    return _MESH or Mesh()

