"""One rank of the tensor-parallel tests (tests/engine/test_parallel.py runs two under torchrun).

    torchrun --nproc-per-node 2 tests/engine/tp_worker.py main OUT_DIR CKPT_UNTIED CKPT_TIED   # every check
    torchrun --nproc-per-node 2 tests/engine/tp_worker.py die OUT_DIR     # DP rank 1 dies: rank 0 must fail, not hang
    torchrun --nproc-per-node 2 tests/engine/tp_worker.py stuck OUT_DIR   # TP rank 1 hangs: the collective timeout

Each rank saves what it computed to OUT_DIR/rank{R}.pt; the test compares it with the single-process model.
"""

import os
import sys
import time

import torch
import torch.distributed as dist

import engine
from coalm_kernels.nf4 import dequantize_nf4
from engine.lora import lora_modules
from engine.parallel.data_parallel import reduce_gradients
from engine.parallel.mesh import init_mesh
from engine.parallel.tp import apply_lora_parallel, gather_lora_state_dict, save_adapter_parallel, split_dim
from engine.parallel.tp_layers import vocab_parallel_cross_entropy
from engine.serving.offline import generate_ids


def inputs():
    """The same inputs on every rank and in the test (seeded)."""
    g = torch.Generator().manual_seed(1234)
    lens = (11, 18)
    packed = torch.randint(0, 512, (1, sum(lens)), generator=g)
    labels = packed.clone()
    labels[0, :4] = -100  # an unlabelled prompt
    return {
        "tokens": torch.randint(0, 512, (2, 13), generator=g),
        "packed": packed, "labels": labels,
        "positions": torch.cat([torch.arange(n) for n in lens])[None],
        "cu_seqlens": torch.tensor([0, lens[0], sum(lens)], dtype=torch.int32), "max_seqlen": max(lens),
        "prompts": [[1, 17, 300, 42, 5], [9], [77, 78, 79]],
        "ce_hidden": torch.randn(37, 24, generator=g), "ce_weight": torch.randn(512, 24, generator=g),
        "ce_labels": torch.randint(0, 512, (37,), generator=g).masked_fill(torch.rand(37, generator=g) < 0.3, -100),
    }


def train_step(model, x):
    model.train()
    loss = model.loss(x["packed"], x["labels"], x["positions"], x["cu_seqlens"], x["max_seqlen"])
    loss.backward()
    model.eval()
    return loss.detach()


def dense_checks(ckpt, x, res, prefix):
    model, _ = engine.load(ckpt, dtype=torch.float32, tp=2)
    res[f"{prefix}_numel"] = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        res[f"{prefix}_logits"] = model(x["tokens"])
    res[f"{prefix}_ids"] = generate_ids(model, x["prompts"], max_new_tokens=6)
    model.requires_grad_(True)
    res[f"{prefix}_loss"] = train_step(model, x)
    res[f"{prefix}_grads"] = {n: p.grad.clone() for n, p in model.named_parameters()}


def lora_checks(ckpt, x, res, out_dir, quantize):
    tag = "qlora" if quantize else "lora"
    model, _ = engine.load(ckpt, dtype=torch.float32, tp=2)
    apply_lora_parallel(model, rank=4, alpha=8, quantize=quantize, seed=7)
    g = torch.Generator().manual_seed(99)  # a nonzero B (drawn whole, sliced) so every factor gets a gradient
    with torch.no_grad():
        for name, m in lora_modules(model).items():
            full = torch.randn(m.lora_B.shape[0] * (2 if split_dim(name + ".lora_B") == 0 else 1), 4, generator=g)
            m.lora_B.copy_(full.chunk(2)[dist.get_rank()] if split_dim(name + ".lora_B") == 0 else full)
    save_adapter_parallel(model, os.path.join(out_dir, f"{tag}_adapter"), base_model="debug")
    res[f"{tag}_loss"] = train_step(model, x)
    res[f"{tag}_grads"] = gather_lora_state_dict(model, grads=True)
    if quantize:  # each rank's NF4 shard, dequantized, to rebuild the exact base the ranks used
        res["qlora_base"] = {n: dequantize_nf4(m.nf4, torch.float32) for n, m in lora_modules(model).items()}
        m = model.layers[0].self_attn.q_proj
        res["qlora_q0"] = (m.nf4.packed, m.nf4.absmax, m.nf4.absmax2, tuple(m.nf4.shape))


def ce_check(x, res):
    rank = dist.get_rank()
    h = x["ce_hidden"].clone().requires_grad_(True)
    w = x["ce_weight"].chunk(2)[rank].clone().requires_grad_(True)
    loss = vocab_parallel_cross_entropy(h, w, x["ce_labels"], vocab_start=256 * rank, chunk_size=8)
    (loss * 1.7).backward()
    res.update(ce_loss=loss.detach(), ce_grad_h=h.grad, ce_grad_w=w.grad)


def main(mode, out_dir, *ckpts):
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    if mode in ("die", "stuck"):
        # a dead peer of a DP pair (gradient all-reduces), a stuck peer of a TP pair (every forward's all-reduces)
        tp = 2 if mode == "stuck" else 1
        mesh = init_mesh(tp, timeout_s=4)
        if rank == 1:
            # Stamped before loading: on a loaded machine rank 0 may finish loading more than the 4 s timeout ahead
            # and fail (rightly) before rank 1 gets past loading, and torchrun then kills rank 1. An early stamp only
            # makes the "< 60 s after the failure" check stricter.
            with open(os.path.join(out_dir, "peer_failed_at"), "w") as f:
                f.write(repr(time.time()))
        model, _ = engine.load("debug", random_init=True, dtype=torch.float32, tp=tp)
        params = list(model.parameters())
        for p in params:
            p.grad = torch.ones_like(p)
        if rank == 1:
            if mode == "stuck":  # alive, but never joins another collective
                time.sleep(600)
            os._exit(3)
        tokens = torch.zeros(1, 4, dtype=torch.long)
        for _ in range(100000):  # would hang forever without a timeout / error on the dead peer
            if tp > 1:
                model(tokens)
            else:
                reduce_gradients(params, mesh)
        return 0
    init_mesh(2, timeout_s=60)
    x = inputs()
    res = {"inputs": x} if rank == 0 else {}
    dense_checks(ckpts[0], x, res, "untied")
    dense_checks(ckpts[1], x, res, "tied")
    lora_checks(ckpts[0], x, res, out_dir, quantize=False)
    lora_checks(ckpts[0], x, res, out_dir, quantize=True)
    ce_check(x, res)
    torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
