"""Validation loss, metric loggers, the render cache and resume robustness. The logged validation loss equals an
independent fp64 recomputation, row by row without packing, on the checkpoint's own PEFT adapter; TensorBoard holds
the same numbers as metrics.jsonl; a torn last log line does not block --resume, which reuses the cached rows."""

import json

import pytest
import torch

import engine
from coalm.data import DataError, StepBatches, load, render_rows, split_rows
from engine.metrics import check_loggers, read_metrics, truncate_metrics
from engine.train import main, parse_config, train

TINY = ["--model", "debug", "--random-init", "--lora", "--max-seq-len", "256", "--global-batch-size", "4",
        "--micro-batch-size", "2", "--lr", "1e-3", "--lora-rank", "4"]


def _reference_val_loss(adapter, rows) -> float:
    model, tok = engine.load("debug", random_init=True, seed=0, adapter=adapter, dtype=torch.float32, device="cpu")
    total, count = 0.0, 0
    for ids, labels in render_rows(rows, tok, max_len=256)[0]:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).double()[0, :-1]
        target = torch.tensor(labels[1:])
        keep = target != -100
        total += torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum").item()
        count += int(keep.sum())
    return total / count


def test_validation_loss_loggers_cache_and_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COALM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    args = [*TINY, "--val-frac", "0.05", "--eval-every", "1", "--save-every", "1", "--keep-last", "1",
            "--log", "tensorboard", "wandb", "--out", str(out)]
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(parse_config([*args, "--steps", "2"]))
    recs = read_metrics(out / "metrics.jsonl")
    val = {r["step"]: r["val_loss"] for r in recs if "val_loss" in r}
    assert sorted(val) == [1, 2]
    best = json.loads((out / "best.json").read_text())
    assert best["val_loss"] == min(val.values()) and best["step"] == min(val, key=val.get)
    assert (out / "checkpoints" / f"step-{best['step']}").is_dir()  # kept through --keep-last 1

    _, held = split_rows(load("sample"), 0.05, seed=0)
    ref = _reference_val_loss(out / "checkpoints" / "step-2" / "adapter", held)
    assert val[2] == pytest.approx(ref, rel=1e-5)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(out / "tensorboard"))
    ea.Reload()
    assert [e.step for e in ea.Scalars("val/val_loss")] == sorted(val)
    assert [e.value for e in ea.Scalars("val/val_loss")] == pytest.approx([val[k] for k in sorted(val)])  # float32
    assert [e.value for e in ea.Scalars("train/loss")] == pytest.approx([r["loss"] for r in recs if "loss" in r])
    assert list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert (out / "loss.png").stat().st_size > 0

    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 1.2')  # a crash mid-write
    capsys.readouterr()
    last = train(parse_config([*args, "--steps", "3", "--resume"]))
    assert last["step"] == 3
    assert "rendered rows from the cache" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r] == [1, 2, 3]


def test_render_cache_returns_what_rendering_gives(tmp_path):
    tok = engine.load("debug", random_init=True, device="cpu")[1]
    rows = load("sample")[:40]
    fresh = StepBatches.from_rows(rows, tok, 128, 4, 2, cache_dir=None)
    first = StepBatches.from_rows(rows, tok, 128, 4, 2, cache_dir=tmp_path)
    second = StepBatches.from_rows(rows, tok, 128, 4, 2, cache_dir=tmp_path)
    assert "from the cache" not in first.summary and "from the cache" in second.summary
    assert second.rendered == first.rendered == fresh.rendered
    other = StepBatches.from_rows(rows, tok, 96, 4, 2, cache_dir=tmp_path)  # another max length: another entry
    assert "from the cache" not in other.summary and other.rendered == render_rows(rows, tok, 96)[0]


def test_torn_metrics_line_and_val_split_and_missing_logger(tmp_path, monkeypatch, capsys):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "val_loss": 1.5}\n{"step": 3, "lo')
    truncate_metrics(p, 2)
    assert p.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "val_loss": 1.5}\n'
    with pytest.raises(DataError, match="leaves 0 training and 3 validation rows"):
        split_rows([{"i": i} for i in range(3)], 0.9)
    assert main([*TINY, "--val-frac", "0.9999", "--out", str(tmp_path / "r")]) == 2
    assert "training and" in capsys.readouterr().err and not (tmp_path / "r").exists()
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ValueError, match=r"pip install 'coalm-engine\[tensorboard\]'"):
        check_loggers(["tensorboard"])
