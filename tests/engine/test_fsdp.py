"""FSDP2 full fine-tuning (engine.fsdp) on CPU/gloo: `engine.train --full` under torchrun against one process.

A tiny checkpoint (the `debug` preset with tied embeddings, random weights) is trained for 3 full steps on the same
global batches: in one process, and on 2 ranks (DP 2, parameters, gradients and AdamW state sharded by FSDP2). A step
is 3 rows in micro-batches of 1 (2 of the 10 rows held out for the validation loss), so the ranks get 2 and 1 rows and the second runs a zero-weight padding
micro-batch. The tests compare the losses, gradient norms (clipping is active), every step's weights and optimizer
state from the checkpoints, and the exported model/ folders; then they resume the 2-rank step-1 checkpoint in one
process, and the one-process step-1 checkpoint on 2 ranks, and compare the steps that follow.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from engine.train import main as train_main
from tests.engine.dist_launch import job_env, run_torchrun
from tests.engine.test_data_parallel import tiny_checkpoint

STEPS = 3


def train_args(ckpt, out, *extra):
    return ["--model", ckpt, "--full", "--steps", STEPS, "--global-batch-size", 3, "--micro-batch-size", 1,
            "--max-seq-len", 96, "--lr", "1e-3", "--save-every", 1, "--keep-last", STEPS, "--val-frac", 0.2,
            "--data", Path(ckpt).parent / "rows.jsonl", "--out", out, *extra]


def torchrun_train(root, name, *extra):
    rc, out, err = run_torchrun(2, ["-m", "engine.train", *train_args(root / "ckpt", root / name, *extra)],
                                timeout=300, env=job_env(COALM_CACHE=root / "cache"))
    assert rc == 0, f"{name} failed ({rc}):\n{out[-2000:]}\n{err[-4000:]}"
    # rank 0's banner: the tied model's 6.66M parameters, half of them on this rank (sharded, not replicated)
    assert "(full, FSDP2 over DP 2: 3.33M on this rank)" in out, out[-2000:]


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
    torchrun_train(root, "one_then_dp2", "--resume")
    return root


def metrics(out, key):
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return [r[key] for r in recs if key in r]


def state(out, step):
    d = out / "checkpoints" / f"step-{step}"
    return load_file(str(d / "trainable-rank0.safetensors")), torch.load(d / "state-rank0.pt", weights_only=True)


def assert_same_state(got_dir, want_dir, step):
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
            torch.testing.assert_close(go["state"][i][k], v, msg=f"step {step} optimizer {i} {k}")
    assert got_st["scheduler"] == want_st["scheduler"] and got_st["step"] == want_st["step"] == step


def test_two_ranks_match_one_process(runs):
    one, dp2 = runs / "one", runs / "dp2"
    assert len(metrics(dp2, "loss")) == STEPS  # rank 0 alone logs
    assert metrics(dp2, "loss") == pytest.approx(metrics(one, "loss"), rel=1e-5)
    assert metrics(dp2, "grad_norm") == pytest.approx(metrics(one, "grad_norm"), rel=1e-5)
    assert len(metrics(dp2, "val_loss")) == STEPS
    assert metrics(dp2, "val_loss") == pytest.approx(metrics(one, "val_loss"), rel=1e-5)
    assert all(g > 1.0 for g in metrics(one, "grad_norm"))  # so the clipped (DTensor) path is what is compared
    initial = load_file(str(runs / "ckpt" / "model.safetensors"))
    for step in range(1, STEPS + 1):
        assert_same_state(dp2, one, step)
    moved = state(one, STEPS)[0]
    assert all((moved[k] - initial["model." + k]).abs().max() > 1e-4 for k in moved)  # every tensor trained
    assert json.loads((dp2 / "checkpoints" / "step-3" / "mesh.json").read_text()) == {"step": 3, "tp": 1, "dp": 2}


def test_export_is_the_single_process_format(runs):
    one, dp2 = runs / "one" / "model", runs / "dp2" / "model"
    assert sorted(p.name for p in dp2.iterdir()) == sorted(p.name for p in one.iterdir())
    for name in ("config.json", "generation_config.json", "tokenizer_config.json"):
        assert json.loads((dp2 / name).read_text()) == json.loads((one / name).read_text()), name
    with safe_open(str(one / "model.safetensors"), "pt") as a, safe_open(str(dp2 / "model.safetensors"), "pt") as b:
        keys = list(a.keys())
        assert a.metadata() == b.metadata() and list(b.keys()) == keys
        for k in keys:
            want, got = a.get_tensor(k), b.get_tensor(k)
            assert got.dtype == want.dtype and got.shape == want.shape, k
            torch.testing.assert_close(got, want, msg=k)


def test_resume_across_dp_sizes(runs, tmp_path):
    one = runs / "one"
    # 2 ranks -> 1 process: the FSDP2 checkpoint holds the whole state in the single-process format
    start_from(runs / "dp2", 1, tmp_path / "dp2_then_one")
    train_here(runs, tmp_path / "dp2_then_one", "--resume")
    for resumed in (tmp_path / "dp2_then_one", runs / "one_then_dp2"):
        assert metrics(resumed, "loss") == pytest.approx(metrics(one, "loss"), rel=1e-5)
        for step in range(2, STEPS + 1):
            assert_same_state(resumed, one, step)
