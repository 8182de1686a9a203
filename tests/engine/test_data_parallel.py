"""Data parallelism (engine.parallel.data_parallel, engine.parallel.mesh) on CPU: `engine.train` under torchrun against one process.

One tiny checkpoint (the `debug` preset, random weights) is trained for 3 LoRA steps on the same global batches
three ways: one process, 2 ranks (DP 2), and 4 ranks (DP 2 x TP 2). Each writes metrics and a checkpoint after every
step; the tests compare the losses, every step's LoRA factors (TP shards joined here, by a split table written out
independently of engine.parallel.tp) and the final adapter's format, then resume the 2-rank run's step-2 checkpoint
in one process and compare its step 3.
"""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from coalm.data import load as load_data
from engine.config import get_config
from engine.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from engine.model import build_model
from engine.parallel.data_parallel import dp_pad, dp_rows, rank_device
from engine.parallel.mesh import Mesh, MeshError, check_mesh
from engine.tokenizer import load_tokenizer
from engine.train import main as train_main
from engine.weights import save_hf
from tests.engine.dist_launch import job_env, run_torchrun

pytestmark = pytest.mark.slow  # starts torchrun ranks

STEPS = 3


def train_args(ckpt, out, *extra):
    return ["--model", ckpt, "--lora", "--steps", STEPS, "--global-batch-size", 4, "--micro-batch-size", 2,
            "--max-seq-len", 128, "--lora-rank", 4, "--lr", "2e-3", "--save-every", 1, "--keep-last", STEPS,
            "--data", Path(ckpt).parent / "rows.jsonl", "--out", out, *extra]


def tiny_checkpoint(root: Path, n_rows: int, **args) -> Path:
    """The `debug` preset (fields overridden by `args`) with random weights as an fp32 HF folder in root/ckpt, and
    the first `n_rows` sample rows in root/rows.jsonl."""
    model = build_model(dataclasses.replace(get_config("debug"), **args))
    model.to_empty(device="cpu")
    if model.args.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.init_weights(std=0.05, generator=torch.Generator().manual_seed(5))
    ckpt = save_hf(model, root / "ckpt", dtype=torch.float32)
    # SmolLM2's vocabulary as tokenizer.json: every rank reads it in a blink (parsing the GGUF takes seconds)
    tok = load_tokenizer("smollm2-135m")
    tok._backend.save(str(ckpt / "tokenizer.json"))
    (ckpt / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": tok.chat_template, "bos_token": tok.bos_token, "eos_token": tok.eos_token}))
    rows = [{k: r[k] for k in ("instruction", "input", "output")} for r in load_data("sample")[:n_rows]]
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ckpt


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp")
    ckpt = tiny_checkpoint(root, 4 * STEPS + 1)
    with pytest.MonkeyPatch.context() as mp:  # the engine's CPU paths, as the autouse fixture sets per test
        mp.delenv("TRITON_INTERPRET", raising=False)
        mp.setenv("COALM_CACHE", str(root / "cache"))
        assert train_main([str(a) for a in train_args(ckpt, root / "one")]) == 0
    for name, n, extra in (("dp2", 2, ()), ("dp2tp2", 4, ("--tp", 2))):
        rc, out, err = run_torchrun(n, ["-m", "engine.train", *train_args(ckpt, root / name, *extra)], timeout=400,
                                    env=job_env(COALM_CACHE=root / "cache"))
        assert rc == 0, f"{name} failed ({rc}):\n{out[-2000:]}\n{err[-4000:]}"
    return {"root": root, "ckpt": ckpt}


def losses(out):
    recs = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return [r["loss"] for r in recs if "loss" in r]


# which dim of a LoRA factor TP splits: B of column-parallel layers, A of row-parallel ones
SPLIT = {("q_proj", "lora_B"): 0, ("k_proj", "lora_B"): 0, ("v_proj", "lora_B"): 0, ("gate_proj", "lora_B"): 0,
         ("up_proj", "lora_B"): 0, ("o_proj", "lora_A"): 1, ("down_proj", "lora_A"): 1}


def factors(out, step):
    """Every LoRA factor after `step`, at full size (TP ranks' shards joined)."""
    d = out / "checkpoints" / f"step-{step}"
    shards = [load_file(str(f)) for f in sorted(d.glob("trainable-rank*.safetensors"))]
    full = {}
    for k in shards[0]:
        module, factor = k.split(".")[-2:]
        dim = SPLIT.get((module, factor)) if len(shards) > 1 else None
        full[k] = shards[0][k] if dim is None else torch.cat([s[k] for s in shards], dim=dim)
    return full


def adapter(out):
    d = out / "adapter"
    return json.loads((d / ADAPTER_CONFIG).read_text()), load_file(str(d / ADAPTER_WEIGHTS))


@pytest.mark.parametrize("name", ["dp2", "dp2tp2"])
def test_matches_single_process(runs, name):
    one, many = runs["root"] / "one", runs["root"] / name
    # one writer: a duplicated job would log every step once per rank
    assert len(losses(many)) == STEPS
    assert losses(many) == pytest.approx(losses(one), rel=1e-5)
    for step in range(1, STEPS + 1):
        want, got = factors(one, step), factors(many, step)
        assert sorted(got) == sorted(want)
        for k, v in want.items():
            torch.testing.assert_close(got[k], v, msg=f"step {step} {k}")
    # the factors moved (B starts at zero), so agreeing is not agreeing at the initial values
    assert all(v.abs().max() > 0 for k, v in factors(one, 1).items() if k.endswith("lora_B"))
    (cfg_one, w_one), (cfg_many, w_many) = adapter(one), adapter(many)
    assert cfg_many == cfg_one
    assert {k: v.shape for k, v in w_many.items()} == {k: v.shape for k, v in w_one.items()}
    for k, v in w_one.items():
        torch.testing.assert_close(w_many[k], v, msg=k)
    mesh = json.loads((many / "checkpoints" / f"step-{STEPS}" / "mesh.json").read_text())
    assert mesh == {"step": STEPS, "tp": 2 if name == "dp2tp2" else 1, "dp": 2}


def test_resume_two_rank_checkpoint_on_one_process(runs, tmp_path):
    src, out = runs["root"] / "dp2", tmp_path / "resumed"
    shutil.copytree(src / "checkpoints" / "step-2", out / "checkpoints" / "step-2")
    lines = (src / "metrics.jsonl").read_text().splitlines()[:2]
    (out / "metrics.jsonl").write_text("".join(ln + "\n" for ln in lines))
    assert train_main([str(a) for a in train_args(runs["ckpt"], out, "--resume")]) == 0
    assert losses(out) == pytest.approx(losses(runs["root"] / "one"), rel=1e-5)
    for k, v in factors(runs["root"] / "one", STEPS).items():
        torch.testing.assert_close(factors(out, STEPS)[k], v, msg=k)


def test_resume_with_another_tp_is_refused(runs, tmp_path, capsys):
    out = tmp_path / "tp_mismatch"
    shutil.copytree(runs["root"] / "dp2tp2" / "checkpoints" / "step-2", out / "checkpoints" / "step-2")
    assert train_main([str(a) for a in train_args(runs["ckpt"], out, "--resume")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "written with --tp 2 but this run has --tp 1" in err[0], err


def test_world_size_that_tp_does_not_divide_is_refused_before_loading(tmp_path, monkeypatch, capsys):
    # torchrun's variables for rank 0 of 3 processes, without a rendezvous: refusing must come before one is needed
    for k, v in {"WORLD_SIZE": "3", "LOCAL_WORLD_SIZE": "3", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    assert train_main(["--model", "debug", "--random-init", "--tp", "2", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [("error: world size 3 is not a multiple of --tp 2: data parallelism needs world = dp x tp "
                    "(e.g. torchrun --nproc_per_node 2 ... --tp 2)")]
    with pytest.raises(MeshError, match="--tp 4 does not divide the 2 processes per node"):
        check_mesh(4, world=8, local_world=2)
    assert check_mesh(4, world=16, local_world=8) == 4
    with pytest.raises(MeshError, match="--tp 2 needs 2 processes: torchrun --nproc_per_node 2"):
        check_mesh(2, world=1)


def test_one_gpu_for_several_processes_is_refused():
    # the duplicate-job trap: N ranks on one explicit device would be N identical jobs writing the same --out
    with pytest.raises(MeshError, match="--device cuda:0 with 2 processes would put every rank on one GPU"):
        rank_device("cuda:0", Mesh(dp=2))
    assert rank_device("cpu", Mesh(dp=2)) == torch.device("cpu")


def test_dp_rows_cover_each_step_once():
    step = [[5, 1], [7, 3], [0]]  # 5 rows of one step, micro-batches of 2
    for dp in (1, 2, 3, 4, 6):
        parts = [dp_rows(step, Mesh(dp=dp, dp_rank=r), 2) for r in range(dp)]
        assert [i for p in parts for mb in p for i in mb] == [5, 1, 7, 3, 0]
        assert all(len(mb) <= 2 for p in parts for mb in p)
        sizes = [sum(map(len, p)) for p in parts]
        assert max(sizes) - min(sizes) <= 1
    assert dp_rows(step, Mesh(), 2) == step


def test_dp_pad_gives_every_rank_the_same_micro_batch_count():
    # FSDP2 (--full): every forward is a collective, so ranks with fewer micro-batches add zero-weight ones
    step = [[5, 1], [7, 3], [0]]
    for dp in (2, 3, 4, 6):
        ranks = [Mesh(dp=dp, dp_rank=r) for r in range(dp)]
        counts = [len(dp_rows(step, m, 2)) + dp_pad(step, m, 2) for m in ranks]
        assert len(set(counts)) == 1 and counts[0] == max(len(dp_rows(step, m, 2)) for m in ranks)
    assert dp_pad(step, Mesh(dp=6, dp_rank=5), 2) == 1  # 6 ranks, 5 rows: the last has none of its own
    assert dp_pad(step, Mesh(), 2) == 0
