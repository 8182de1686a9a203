"""Tensor parallelism (engine.parallel.tp) on CPU: two gloo ranks against the single-process model.

One launch of tests/engine/tp_worker.py (2 ranks, torchrun's env vars) runs every check on the `debug` preset
(4 heads, 2 KV heads, vocab 512) and saves its results; the tests here recompute each one in a single process:
logits, greedy generation, a training step (loss and every gradient, untied and tied embeddings), LoRA and QLoRA
steps through an adapter saved by the TP run, and the vocab-parallel cross-entropy against fp64 F.cross_entropy.
"""

import json
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import WordLevel

import engine
from coalm_kernels.nf4 import quantize_nf4
from engine.config import get_config
from engine.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, lora_modules, lora_state_dict, save_adapter
from engine.model import build_model
from engine.parallel.tp import check_tp
from engine.serving.offline import generate_ids
from engine.weights import save_hf
from tests.engine.dist_launch import run_torchrun

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("tp_worker.py")
# which dim of each parameter the two ranks split (written out here, independently of engine.parallel.tp)
SPLIT = {
    "q_proj": 0,
    "k_proj": 0,
    "v_proj": 0,
    "gate_proj": 0,
    "up_proj": 0,
    "o_proj": 1,
    "down_proj": 1,
    "embed_tokens": 0,
    "lm_head": 0,
}


def launch(mode, out_dir, *argv, timeout=240):
    return run_torchrun(2, [WORKER, mode, out_dir, *argv], timeout=timeout)


@pytest.fixture(scope="module")
def tp(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp")
    ckpts = []
    for tied in (False, True):
        model = build_model(get_config("debug", tie_embeddings=tied))
        model.to_empty(device="cpu")
        if tied:
            model.lm_head.weight = model.embed_tokens.weight
        model.init_weights(std=0.05, generator=torch.Generator().manual_seed(3 + tied))
        ckpts.append(save_hf(model, root / f"ckpt_tied{int(tied)}", dtype=torch.float32))
        # a 512-word ChatML-style vocabulary, so loading needs no real tokenizer (the tests feed token ids)
        special = ["<|endoftext|>", "<|im_end|>"]  # ids 510, 511: out of the way of the generated ids' stops
        tok = HFTokenizer(
            WordLevel(
                {**{f"w{i}": i for i in range(510)}, **{s: 510 + i for i, s in enumerate(special)}}, unk_token="w0"
            )
        )
        tok.add_special_tokens(special)
        tok.save(str(ckpts[-1] / "tokenizer.json"))
    rc, out, err = launch("main", root, *ckpts)
    assert rc == 0, f"workers failed ({rc}):\n{out}\n{err[-4000:]}"
    ranks = [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return {"root": root, "ckpts": ckpts, "ranks": ranks, "x": ranks[0]["inputs"]}


def ref_model(ckpt, adapter=None, dtype=torch.float32):
    model, _ = engine.load(ckpt, adapter=adapter, dtype=dtype, device="cpu")
    return model


def lora_grads(model):
    return {
        k: model.get_parameter(k.removeprefix("base_model.model.model.").removesuffix(".weight")).grad
        for k in lora_state_dict(model)
    }


def assert_fp32_close(got, fp32, fp64, msg):
    """`got` (fp32, summed in another order across ranks) is off the fp64 value by at most twice as much as the
    single-process fp32 result is (LoRA gradients with B ~ N(0, 1) are large: fixed tolerances would not fit).
    Errors are measured as Frobenius norms: the max of a few thousand rounding errors is an extreme-value statistic
    whose ratio between two fp32 runs swings by 2x from seed to seed; the norm is stable."""
    err, base = (got.double() - fp64).norm(), (fp32.double() - fp64).norm()
    floor = torch.finfo(torch.float32).eps * fp64.norm()
    assert err <= 2 * base + floor, f"{msg}: error {err:.3g}, single-process fp32 error {base:.3g}"


@pytest.fixture
def fp64_lora(monkeypatch):
    """LoRA layers in fp64 for the references (the fused lora_linear takes fp32/fp16/bf16 only)."""
    import engine.lora
    from coalm_kernels.lora_matmul import lora_linear_ref

    monkeypatch.setattr(engine.lora, "lora_linear", lora_linear_ref)


def ref_step(model, x):
    model.train()
    loss = model.loss(x["packed"], x["labels"], x["positions"], x["cu_seqlens"], x["max_seqlen"])
    loss.backward()
    return loss.detach()


def gathered(ranks, key, name):
    module = name.split(".")[-2]
    parts = [r[key][name] for r in ranks]
    return torch.cat(parts, dim=SPLIT[module]) if module in SPLIT else parts[0]


@pytest.mark.parametrize("tied", [0, 1])
def test_logits_generation_and_memory(tp, tied):
    prefix = ("untied", "tied")[tied]
    model, x = ref_model(tp["ckpts"][tied]), tp["x"]
    with torch.no_grad():
        want = model(x["tokens"])
    ids = generate_ids(model, x["prompts"], max_new_tokens=6)
    total = sum(p.numel() for p in model.parameters())
    replicated = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    for r in tp["ranks"]:
        torch.testing.assert_close(r[f"{prefix}_logits"], want)
        assert r[f"{prefix}_ids"] == ids
        # every sharded tensor is halved; only the RMSNorm weights are held by both ranks
        assert r[f"{prefix}_numel"] == (total - replicated) // 2 + replicated


@pytest.mark.parametrize("tied", [0, 1])
def test_training_step_full_weights(tp, tied):
    prefix = ("untied", "tied")[tied]
    model = ref_model(tp["ckpts"][tied])
    model.requires_grad_(True)
    loss = ref_step(model, tp["x"])
    for r in tp["ranks"]:
        torch.testing.assert_close(r[f"{prefix}_loss"], loss)
    names = [n for n, _ in model.named_parameters()]
    assert sorted(names) == sorted(tp["ranks"][0][f"{prefix}_grads"])
    for n, p in model.named_parameters():
        torch.testing.assert_close(gathered(tp["ranks"], f"{prefix}_grads", n), p.grad, msg=n)


def test_lora_step_and_adapter_format(tp, fp64_lora):
    adapter = tp["root"] / "lora_adapter"
    model = ref_model(tp["ckpts"][0], adapter=adapter)
    # the TP adapter is what a single-process run writes: same config, names, shapes
    single = save_adapter(model, tp["root"] / "single_adapter", base_model="debug")
    assert json.loads((adapter / ADAPTER_CONFIG).read_text()) == json.loads((single / ADAPTER_CONFIG).read_text())
    from safetensors.torch import load_file

    a, b = load_file(adapter / ADAPTER_WEIGHTS), load_file(single / ADAPTER_WEIGHTS)
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    loss = ref_step(model, tp["x"])
    model64 = ref_model(tp["ckpts"][0], adapter=adapter, dtype=torch.float64)
    ref_step(model64, tp["x"])
    grads, grads64 = lora_grads(model), lora_grads(model64)
    for r in tp["ranks"]:
        torch.testing.assert_close(r["lora_loss"], loss)
        assert sorted(r["lora_grads"]) == sorted(grads)
        for k, g in grads.items():
            assert g.abs().sum() > 0, k
            assert_fp32_close(r["lora_grads"][k], g, grads64[k], k)


def test_qlora_quantizes_each_shard(tp, fp64_lora):
    ranks, ckpt = tp["ranks"], tp["ckpts"][0]
    full_q = ref_model(ckpt).layers[0].self_attn.q_proj.weight
    for rank, r in enumerate(ranks):
        packed, absmax, absmax2, shape = r["qlora_q0"]
        want = quantize_nf4(full_q.chunk(2, dim=0)[rank].contiguous())
        assert shape == tuple(want.shape)
        assert torch.equal(packed, want.packed) and torch.equal(absmax, want.absmax)
        assert torch.equal(absmax2, want.absmax2)
    # single process on the same (per-shard quantized) base weights and the saved adapter: same loss and grads
    losses, grads = [], []
    for dtype in (torch.float32, torch.float64):
        model = ref_model(ckpt, adapter=tp["root"] / "qlora_adapter", dtype=dtype)
        with torch.no_grad():
            for name, m in lora_modules(model).items():
                m.weight.copy_(torch.cat([r["qlora_base"][name] for r in ranks], dim=SPLIT[name.split(".")[-1]]))
        losses.append(ref_step(model, tp["x"]))
        grads.append(lora_grads(model))
    for r in ranks:
        torch.testing.assert_close(r["qlora_loss"], losses[0])
        for k, g in r["qlora_grads"].items():
            assert_fp32_close(g, grads[0][k], grads[1][k], k)


def test_vocab_parallel_cross_entropy_fp64(tp):
    x, ranks = tp["x"], tp["ranks"]
    h = x["ce_hidden"].double().requires_grad_(True)
    w = x["ce_weight"].double().requires_grad_(True)
    loss = F.cross_entropy(h @ w.t(), x["ce_labels"], ignore_index=-100)
    (loss * 1.7).backward()
    for r in ranks:
        torch.testing.assert_close(r["ce_loss"].double(), loss.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["ce_grad_h"].double(), h.grad, rtol=1e-5, atol=1e-6)
    grad_w = torch.cat([r["ce_grad_w"] for r in ranks]).double()
    torch.testing.assert_close(grad_w, w.grad, rtol=1e-5, atol=1e-6)


def test_bad_tp_degree_fails_before_loading(tp):
    # no torchrun env here: reaching the process group would raise MeshError instead
    with pytest.raises(ValueError, match=r"degree 3 does not divide n_heads=4, n_kv_heads=2.*valid degrees.*\[1, 2\]"):
        engine.load("debug", random_init=True, tp=3)
    with pytest.raises(ValueError, match=r"degree 4 does not divide n_kv_heads=2"):
        engine.load(tp["ckpts"][0], tp=4)
    with pytest.raises(ValueError, match=r"degree 2 does not divide n_heads=9"):
        check_tp(get_config("smollm2-135m"), 2)
    with pytest.raises(ValueError, match="positive integer"):
        check_tp(get_config("debug"), 0)


@pytest.mark.parametrize("mode", ["die", "stuck"])
def test_dead_or_stuck_rank_ends_the_job(tmp_path, mode):
    """A DP peer that dies (its socket closes) or a TP peer that hangs alive (only the 4 s collective timeout can
    notice) makes the surviving rank raise, and torchrun ends the job: well within 60 s, never a hang."""
    rc, out, err = launch(mode, tmp_path, timeout=150)
    ended = time.time()
    assert rc not in (0, -9), f"the job survived its {mode} peer ({rc}):\n{out}\n{err[-3000:]}"
    assert ended - float((tmp_path / "peer_failed_at").read_text()) < 60
    assert "Traceback" in err  # rank 0 failed with an exception, not only killed
    if mode == "stuck":
        assert "timed out" in err.lower() or "timeout" in err.lower(), err[-3000:]
