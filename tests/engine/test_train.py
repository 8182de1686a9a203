"""Training: a run killed mid-way and resumed gives the uninterrupted run's loss curve; a non-finite loss stops
with the last good checkpoint kept; bad configurations fail with one clear line; outputs are complete."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine.checkpoint import list_checkpoints as _checkpoints
from engine.train import TrainConfig, TrainError, parse_config, train

pytestmark = pytest.mark.slow  # starts engine.train / engine.merge processes

TINY = [
    "--model",
    "debug",
    "--random-init",
    "--max-seq-len",
    "256",
    "--global-batch-size",
    "4",
    "--micro-batch-size",
    "2",
    "--lr",
    "1e-3",
    "--lora-rank",
    "4",
]


def _losses(out: Path) -> list[tuple[int, float]]:
    recs = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    return [(r["step"], r["loss"]) for r in recs if "loss" in r]


def _cmd(out, *extra):
    return [sys.executable, "-m", "engine.train", *TINY, "--steps", "8", "--save-every", "2", "--out", str(out), *extra]


def test_resume_after_kill_equals_uninterrupted(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    full = subprocess.run(
        check=False, args=_cmd(tmp_path / "full"), capture_output=True, text=True, timeout=600, env=env
    )
    assert full.returncode == 0, full.stderr[-2000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while time.time() < deadline:
        if (out / "metrics.jsonl").is_file() and len(_losses(out)) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "adapter").exists(), "the run finished before it could be killed"
    resumed_from = int(_checkpoints(out)[-1].name.split("-")[1])
    assert 2 <= resumed_from < 8
    again = subprocess.run(
        check=False, args=_cmd(out, "--resume"), capture_output=True, text=True, timeout=600, env=env
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from" in again.stdout
    assert _losses(out) == _losses(tmp_path / "full")  # fp32 on CPU: the same arithmetic, bit for bit
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "loss.png").is_file()


def test_partial_checkpoint_is_ignored(tmp_path):
    cfg = parse_config([*TINY, "--steps", "2", "--save-every", "1", "--out", str(tmp_path)])
    train(cfg)
    (tmp_path / "checkpoints" / "step-3.tmp").mkdir()  # a write killed before its rename
    (tmp_path / "checkpoints" / "step-3.tmp" / "state-rank0.pt").write_bytes(b"partial")
    assert [p.name for p in _checkpoints(tmp_path)] == ["step-1", "step-2"]
    cfg = parse_config([*TINY, "--steps", "3", "--save-every", "1", "--out", str(tmp_path), "--resume"])
    last = train(cfg)
    assert last["step"] == 3
    assert [s for s, _ in _losses(tmp_path)] == [1, 2, 3]


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from engine.model import Transformer

    calls = {"n": 0}
    real = Transformer.loss

    def flaky(self, *a, **k):
        calls["n"] += 1
        loss = real(self, *a, **k)
        return loss * float("nan") if calls["n"] > 4 else loss  # steps 1-2 fine (2 micro-batches each)

    monkeypatch.setattr(Transformer, "loss", flaky)
    # an explicit policy: `auto` would trace a (counted) model.loss while planning
    cfg = parse_config([*TINY, "--steps", "5", "--save-every", "1", "--out", str(tmp_path),
                        "--activation-checkpointing", "none"])
    with pytest.raises(TrainError, match=r"loss became nan at step 3.*step-2"):
        train(cfg)
    assert [p.name for p in _checkpoints(tmp_path)][-1] == "step-2"
    assert [s for s, _ in _losses(tmp_path)] == [1, 2]


def test_8b_without_weights_is_a_clear_error():
    r = subprocess.run(  # noqa: PLW1510 (the return code is asserted)
        [sys.executable, "-m", "engine.train", "--size", "8b", "--qlora"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2
    assert "needs weights: pass --model DIR" in r.stderr and "--random-init" in r.stderr
    assert "Traceback" not in r.stderr


def test_config_file_and_flags(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("lr: 0.0005\nepochs: 1\nlora_rank: 8\nmode: lora\n")
    cfg = parse_config(["--config", str(f), "--lora-rank", "4", "--qlora"])
    assert (cfg.lr, cfg.epochs, cfg.lora_rank, cfg.mode) == (5e-4, 1.0, 4, "qlora")
    assert TrainConfig() == parse_config([])  # defaults live in TrainConfig alone
    f.write_text("learning_rate: 1\n")
    with pytest.raises(ValueError, match="unknown keys.*learning_rate"):
        parse_config(["--config", str(f)])
    with pytest.raises(ValueError, match="multiple of"):
        parse_config(["--global-batch-size", "6", "--micro-batch-size", "4"])


def test_smollm2_qlora_steps_produce_a_working_adapter(tmp_path):
    import engine
    from engine.lora import lora_modules

    cfg = parse_config(
        [
            "--steps",
            "2",
            "--max-seq-len",
            "384",
            "--global-batch-size",
            "2",
            "--micro-batch-size",
            "2",
            "--lr",
            "1e-3",
            "--out",
            str(tmp_path),
        ]
    )
    assert (cfg.model, cfg.mode, cfg.lora_rank, cfg.lora_alpha) == ("smollm2-135m", "qlora", 16, 32.0)
    last = train(cfg)
    assert torch.isfinite(torch.tensor(last["loss"]))
    cfgj = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfgj["target_modules"] == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    model, _tok = engine.load("smollm2-135m", adapter=tmp_path / "adapter")
    assert len(lora_modules(model)) == 30 * 7
    assert any(m.lora_B.abs().max() > 0 for m in lora_modules(model).values())


def test_full_finetune_saves_a_loadable_checkpoint_and_merge_cli(tmp_path):
    """--full writes an HF checkpoint that transformers loads with the same logits; `engine.merge` folds a LoRA
    adapter into a checkpoint whose logits equal the adapter applied at load time; both folders carry their
    tokenizer; a checkpoint's adapter/ loads in PEFT with the same logits."""
    import engine

    transformers = pytest.importorskip("transformers")
    train(parse_config([*TINY, "--full", "--steps", "2", "--lr", "1e-3", "--out", str(tmp_path / "full")]))
    ours, _ = engine.load(tmp_path / "full" / "model", dtype=torch.float32, device="cpu")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "full" / "model", dtype=torch.float32).eval()
    x = torch.randint(0, 49152, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours(x), hf(x).logits
    assert (a - b).abs().max() / b.abs().max() < 1e-4

    train(parse_config([*TINY, "--lora", "--steps", "2", "--lr", "1e-2", "--out", str(tmp_path / "lora"),
                        "--model", str(tmp_path / "full" / "model")]))
    r = subprocess.run(  # noqa: PLW1510 (the return code is asserted)
        [sys.executable, "-m", "engine.merge", "--adapter", str(tmp_path / "lora" / "adapter"), "--out",
         str(tmp_path / "merged"), "--dtype", "fp32"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    with_adapter, _ = engine.load(tmp_path / "full" / "model", adapter=tmp_path / "lora" / "adapter",
                                  dtype=torch.float32, device="cpu")
    merged, _ = engine.load(tmp_path / "merged", dtype=torch.float32, device="cpu")
    with torch.no_grad():
        a, b = with_adapter(x), merged(x)
    assert (a - b).abs().max() / a.abs().max() < 1e-5
    assert not torch.equal(a, ours(x))  # the adapter did change the model

    # Self-contained folders, and adapters that PEFT loads by themselves (the base named by its absolute path).
    tokenizer_files = {"tokenizer.json", "tokenizer_config.json", "generation_config.json"}
    for d in (tmp_path / "full" / "model", tmp_path / "merged"):
        assert tokenizer_files <= {p.name for p in d.iterdir()}, d
    step_adapter = tmp_path / "lora" / "checkpoints" / "step-2" / "adapter"
    base = json.loads((step_adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str((tmp_path / "full" / "model").resolve())
    peft = pytest.importorskip("peft")
    pm = peft.AutoPeftModelForCausalLM.from_pretrained(step_adapter, dtype=torch.float32).eval()
    with torch.no_grad():
        c = pm(x).logits
    assert (a - c).abs().max() / a.abs().max() < 1e-4


def test_activation_checkpointing_gives_the_same_gradients():
    import engine
    from engine.lora import apply_lora, lora_modules

    model, _ = engine.load("debug", random_init=True, dtype=torch.float32, device="cpu")
    apply_lora(model, rank=4, alpha=8)
    for m in lora_modules(model).values():
        torch.nn.init.normal_(m.lora_B, std=0.1)
    model.train()
    x = torch.randint(0, 49152, (1, 90), generator=torch.Generator().manual_seed(0))
    cu = torch.tensor([0, 40, 90], dtype=torch.int32)
    pos = torch.cat([torch.arange(40), torch.arange(50)])[None]
    grads = []
    for ckpt in (False, True):
        model.gradient_checkpointing = ckpt
        model.zero_grad()
        model.loss(x, x, pos, cu, 50).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    for n in grads[0]:
        assert torch.equal(grads[0][n], grads[1][n]), n
