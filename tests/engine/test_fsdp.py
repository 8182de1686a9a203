"""FSDP2 full fine-tuning (engine.parallel.fsdp) on CPU/gloo: `engine.train --full` under torchrun against one process.

A tiny checkpoint (the `debug` preset with tied embeddings, random weights) is trained for 3 full steps on the same
global batches: in one process, and on 2 ranks (DP 2, parameters, gradients and AdamW state sharded by FSDP2). A step
is 3 rows in micro-batches of 1 (2 of the 10 rows held out for the validation loss), so the ranks get 2 and 1 rows and the second runs a zero-weight padding
micro-batch. The tests compare the losses, gradient norms (clipping is active), every step's weights and optimizer
state from the checkpoints, and the exported model/ folders; then they resume the 2-rank step-1 checkpoint in one
process, and the one-process step-1 checkpoint on 2 ranks, and compare the steps that follow.
"""

import dataclasses
import functools
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from engine.config import get_config
from engine.model import build_model
from engine.train import main as train_main
from tests.engine.dist_launch import job_env, run_torchrun
from tests.engine.test_data_parallel import tiny_checkpoint

pytestmark = pytest.mark.slow  # starts torchrun ranks

STEPS = 3


def train_args(ckpt, out, *extra):
    return ["--model", ckpt, "--full", "--steps", STEPS, "--global-batch-size", 3, "--micro-batch-size", 1,
            "--max-seq-len", 96, "--lr", "1e-3", "--save-every", 1, "--keep-last", STEPS, "--val-frac", 0.2,
            "--data", Path(ckpt).parent / "rows.jsonl", "--out", out, *extra]


def torchrun_train(root, name, *extra, nproc=2, banner="(full, FSDP2 over DP 2: 3.33M on this rank)"):
    rc, out, err = run_torchrun(nproc, ["-m", "engine.train", *train_args(root / "ckpt", root / name, *extra)],
                                timeout=300, env=job_env(COALM_CACHE=root / "cache"))
    assert rc == 0, f"{name} failed ({rc}):\n{out[-2000:]}\n{err[-4000:]}"
    # rank 0's banner: at DP 2 the tied model's 6.66M parameters, half of them on this rank (sharded, not replicated);
    # at DP 2 x TP 2 half of rank 0's TP shards (all but the 0.38K norm weights are split by TP)
    assert banner in out, out[-2000:]


def train_here(root, name, *extra):
    with pytest.MonkeyPatch.context() as mp:  # the engine's CPU paths, as the autouse fixture sets per test
        mp.delenv("TRITON_INTERPRET", raising=False)
        mp.setenv("COALM_CACHE", str(root / "cache"))
        assert train_main([str(a) for a in train_args(root / "ckpt", root / name, *extra)]) == 0


def start_from(src: Path, step: int, out: Path):
    """A run folder holding only `src`'s checkpoint step-`step` and its first `step` metric lines."""
    shutil.copytree(src / "checkpoints" / f"step-{step}", out / "checkpoints" / f"step-{step}")
    lines = (src / "metrics.jsonl").read_text().splitlines()[:step]
    (out / "metrics.jsonl").write_text("".join(ln + "\n" for ln in lines))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    tiny_checkpoint(root, 3 * STEPS + 1, tie_embeddings=True)
    train_here(root, "one")
    torchrun_train(root, "dp2")
    start_from(root / "one", 1, root / "one_then_dp2")  # a single-process checkpoint resumed by FSDP2 on 2 ranks
    torchrun_train(root, "one_then_dp2", "--resume", "--save-every", STEPS)
    torchrun_train(root, "dp2tp2", "--tp", 2, nproc=4, banner="(full, FSDP2 over DP 2: 1.67M on this rank)")
    return root


def metrics(out, key):
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return [r[key] for r in recs if key in r]


@functools.lru_cache(maxsize=8)  # the tests read each checkpoint several times
def state(out, step):
    d = out / "checkpoints" / f"step-{step}"
    return load_file(str(d / "trainable-rank0.safetensors")), torch.load(d / "state-rank0.pt", weights_only=True)


ADAM_EPS = 1e-8  # torch.optim.AdamW's default, which engine.train uses

# which dim of a weight TP splits (written out here, independently of engine.parallel.tp); norms are replicated
SPLIT = {"q_proj": 0, "k_proj": 0, "v_proj": 0, "gate_proj": 0, "up_proj": 0, "embed_tokens": 0, "lm_head": 0,
         "o_proj": 1, "down_proj": 1}


@functools.lru_cache(maxsize=8)
def joined(out, step):
    """A checkpoint's parameters at full size: the TP ranks' shards joined."""
    d = out / "checkpoints" / f"step-{step}"
    shards = [load_file(str(f)) for f in sorted(d.glob("trainable-rank*.safetensors"))]
    dims = {k: SPLIT.get(k.split(".")[-2]) if len(shards) > 1 else None for k in shards[0]}
    return {k: shards[0][k] if dim is None else torch.cat([s[k] for s in shards], dim=dim) for k, dim in dims.items()}


@functools.lru_cache(maxsize=8)
def moments(out, step):
    """A checkpoint's AdamW moments by (parameter name, exp_avg | exp_avg_sq), TP shards joined."""
    d = out / "checkpoints" / f"step-{step}"
    states = [torch.load(f, weights_only=True)["optimizer"]["state"] for f in sorted(d.glob("state-rank*.pt"))]
    names = [n for n, _ in build_model(dataclasses.replace(get_config("debug"), tie_embeddings=True)).named_parameters()]
    dims = {n: SPLIT.get(n.split(".")[-2]) if len(states) > 1 else None for n in names}
    return {(n, k): states[0][i][k] if dims[n] is None else torch.cat([s[i][k] for s in states], dim=dims[n])
            for i, n in enumerate(names) for k in ("exp_avg", "exp_avg_sq")}


def assert_same_state(got_dir, want_dir, step):
    """Weights, and at the last step (where the moments hold every step's gradients) the optimizer state, at fp32
    tolerance; the same format."""
    (got, got_st), (want, want_st) = state(got_dir, step), state(want_dir, step)
    assert list(got) == list(want)  # the single-process format: same names (tied head stored once), same order
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        torch.testing.assert_close(got[k], v, msg=f"step {step} {k}")
    go, wo = got_st["optimizer"], want_st["optimizer"]
    assert go["param_groups"] == wo["param_groups"]
    assert sorted(go["state"]) == sorted(wo["state"]) == list(range(len(want)))
    for i, s in wo["state"].items():
        for k, v in s.items():
            if k == "step" or step == STEPS:
                torch.testing.assert_close(go["state"][i][k], v, msg=f"step {step} optimizer {i} {k}")
    assert got_st["scheduler"] == want_st["scheduler"] and got_st["step"] == want_st["step"] == step


def assert_same_tp_state(got_dir, want_dir, step):
    """TP splits every matmul's sums, so a gradient element whose terms cancel to ~1e-9 comes out of fp32 with
    another rounding (seen: 3.4e-10 against the single process's 2.7e-10; fp64 says 2.8e-10), and AdamW's update
    g / (sqrt(v) + eps) turns that into 5% of the learning rate: its sensitivity to g is eps / (|g| + eps)^2. So the
    first moments (the gradients' running means, at the last step) are compared elementwise, and every step's
    weights wherever the update is not eps-dominated (sqrt(v_hat) >= 10 eps at every step so far)."""
    got, want = moments(got_dir, step), moments(want_dir, step)
    for (n, k), v in want.items():
        if k == "exp_avg" and step == STEPS:
            torch.testing.assert_close(got[n, k], v, msg=f"step {step} {n} {k}")
    got_w, want_w = joined(got_dir, step), joined(want_dir, step)
    assert list(got_w) == list(want_w)
    ill = {n: torch.zeros_like(v, dtype=torch.bool) for n, v in want_w.items()}
    for t in range(1, step + 1):
        for (n, k), v in (moments(want_dir, t) if t < step else want).items():
            if k == "exp_avg_sq":
                ill[n] |= (v / (1 - 0.999 ** t)).sqrt() < 10 * ADAM_EPS
    for n, v in want_w.items():
        assert ill[n].float().mean() < 0.05, n  # (3.6% of the tied embedding's, < 0.03% of other tensors')
        assert got_w[n].dtype == v.dtype and got_w[n].shape == v.shape, n
        torch.testing.assert_close(torch.where(ill[n], v, got_w[n]), v, msg=f"step {step} {n}")


@pytest.mark.parametrize("name", ["dp2", "dp2tp2"])
def test_two_replicas_match_one_process(runs, name):
    one, many = runs / "one", runs / name
    assert len(metrics(many, "loss")) == STEPS  # rank 0 alone logs
    assert metrics(many, "loss") == pytest.approx(metrics(one, "loss"), rel=1e-5)
    assert metrics(many, "grad_norm") == pytest.approx(metrics(one, "grad_norm"), rel=1e-5)
    assert len(metrics(many, "val_loss")) == STEPS
    assert metrics(many, "val_loss") == pytest.approx(metrics(one, "val_loss"), rel=1e-5)
    assert all(g > 1.0 for g in metrics(one, "grad_norm"))  # so the clipped (DTensor) path is what is compared
    initial = load_file(str(runs / "ckpt" / "model.safetensors"))
    for step in range(1, STEPS + 1):
        if name == "dp2":
            assert_same_state(many, one, step)
        else:  # one file per TP rank, each holding its own shards
            assert_same_tp_state(many, one, step)
    moved = state(one, STEPS)[0]
    assert all((moved[k] - initial["model." + k]).abs().max() > 1e-4 for k in moved)  # every tensor trained
    mesh = json.loads((many / "checkpoints" / "step-3" / "mesh.json").read_text())
    assert mesh == {"step": 3, "tp": 2 if name == "dp2tp2" else 1, "dp": 2}


@pytest.mark.parametrize("name", ["dp2", "dp2tp2"])
def test_export_is_the_single_process_format(runs, name):
    one, many = runs / "one" / "model", runs / name / "model"
    final = joined(runs / name, STEPS)
    assert sorted(p.name for p in many.iterdir()) == sorted(p.name for p in one.iterdir())
    for f in ("config.json", "generation_config.json", "tokenizer_config.json"):
        assert json.loads((many / f).read_text()) == json.loads((one / f).read_text()), f
    with safe_open(str(one / "model.safetensors"), "pt") as a, safe_open(str(many / "model.safetensors"), "pt") as b:
        keys = list(a.keys())
        assert a.metadata() == b.metadata() and list(b.keys()) == keys
        for k in keys:
            want, got = a.get_tensor(k), b.get_tensor(k)
            assert got.dtype == want.dtype and got.shape == want.shape, k
            # gathered over DP (and TP) unchanged: the run's last checkpoint, bit for bit (its agreement with the
            # single process is what test_two_replicas_match_one_process checks)
            assert torch.equal(got, final[k.removeprefix("model.")]), k


def test_resume_across_dp_sizes(runs, tmp_path):
    one = runs / "one"
    # 2 ranks -> 1 process: the FSDP2 checkpoint holds the whole state in the single-process format
    start_from(runs / "dp2", 1, tmp_path / "dp2_then_one")
    train_here(runs, tmp_path / "dp2_then_one", "--resume", "--save-every", STEPS)
    for resumed in (tmp_path / "dp2_then_one", runs / "one_then_dp2"):
        assert metrics(resumed, "loss") == pytest.approx(metrics(one, "loss"), rel=1e-5)
        assert_same_state(resumed, one, STEPS)
