"""Checkpoints under damage: `--resume` verifies the newest checkpoint (manifest sizes, safetensors header, torch zip)
and falls back to the previous complete one with a warning naming what it skipped, and the resumed run reproduces
the uninterrupted run's losses; a run killed with SIGKILL while writing a checkpoint leaves only complete ones
visible; `--resume` with nothing to resume from is a one-line error before anything loads, unless `--resume auto`.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import engine.train as train_mod
from engine.checkpoint import MANIFEST, find_resumable, list_checkpoints
from engine.train import main

TINY = ["--model", "debug", "--random-init", "--max-seq-len", "256", "--global-batch-size", "4",
        "--micro-batch-size", "2", "--lr", "1e-3", "--lora-rank", "4", "--save-every", "1", "--keep-last", "5"]


def _losses(out: Path) -> dict[int, float]:
    recs = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    with pytest.MonkeyPatch.context() as mp:  # module scope runs before conftest's per-test removal
        mp.delenv("TRITON_INTERPRET", raising=False)
        assert main([*TINY, "--steps", "3", "--out", str(out)]) == 0
    assert [p.name for p in list_checkpoints(out)] == ["step-1", "step-2", "step-3"]
    return out


def _copy(run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def _truncate(f: Path, keep: float = 0.5):
    f.write_bytes(f.read_bytes()[:int(f.stat().st_size * keep)])


def _flip_header(f: Path):
    b = bytearray(f.read_bytes())
    b[8] = ord("X")  # the safetensors JSON header's opening brace, same size
    f.write_bytes(bytes(b))


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda d: _truncate(d / "trainable-rank0.safetensors"), "trainable-rank0.safetensors has"),
    (lambda d: _truncate(d / "state-rank0.pt", 0.9), "state-rank0.pt has"),
    (lambda d: (d / "adapter" / "adapter_model.safetensors").unlink(), "adapter/adapter_model.safetensors is missing"),
    (lambda d: _flip_header(d / "trainable-rank0.safetensors"), "unreadable safetensors header"),
    (lambda d: ((d / MANIFEST).unlink(), _truncate(d / "state-rank0.pt", 0.9)), "not a complete torch file"),
    (lambda d: ((d / MANIFEST).unlink(), _truncate(d / "trainable-rank0.safetensors")), "safetensors"),
    (lambda d: (d / MANIFEST).write_text("{"), "unreadable manifest.json"),
])
def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning(run, tmp_path, damage, reason):
    out = _copy(run, tmp_path)
    damage(out / "checkpoints" / "step-3")
    warnings = []
    assert find_resumable(out, warn=warnings.append).name == "step-2"
    (w,) = warnings
    assert "skipped step-3 (" in w and reason in w and "resuming from step-2" in w, w


def test_undamaged_and_legacy_checkpoints_are_accepted(run, tmp_path):
    out = _copy(run, tmp_path)
    warnings = []
    assert find_resumable(out, warn=warnings.append).name == "step-3" and not warnings
    (out / "checkpoints" / "step-3" / MANIFEST).unlink()  # written before manifests existed: format checks only
    assert find_resumable(out, warn=warnings.append).name == "step-3" and not warnings


def test_resume_skips_the_corrupt_newest_and_reproduces_the_run(run, tmp_path, capsys):
    out = _copy(run, tmp_path)
    _truncate(out / "checkpoints" / "step-3" / "trainable-rank0.safetensors")
    assert main([*TINY, "--steps", "3", "--out", str(out), "--resume"]) == 0
    text = capsys.readouterr().out
    assert "warning: --resume skipped step-3 (trainable-rank0.safetensors has" in text
    assert f"resumed from {out / 'checkpoints' / 'step-2'} (step 2)" in text
    assert _losses(out) == _losses(run)  # step 3 retrained from step 2: the same loss, bit for bit
    assert find_resumable(out).name == "step-3"  # re-saved, complete


def test_resume_with_nothing_is_an_error_before_loading_unless_auto(run, tmp_path, monkeypatch, capsys):
    real = train_mod.load_model
    monkeypatch.setattr(train_mod, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    empty = tmp_path / "empty"
    assert main([*TINY, "--steps", "1", "--out", str(empty), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: --resume: no complete checkpoint in {empty / 'checkpoints'}; pass --resume auto to start "
                   "from scratch when there is none\n")
    out = _copy(run, tmp_path)
    for ckpt in list_checkpoints(out):
        _truncate(ckpt / "state-rank0.pt", 0.9)
    assert main([*TINY, "--steps", "1", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "(skipped step-3 (state-rank0.pt has" in err and "step-1 (" in err
    monkeypatch.setattr(train_mod, "load_model", real)
    assert main([*TINY, "--steps", "1", "--out", str(empty), "--resume", "auto"]) == 0
    assert "--resume auto: no complete checkpoint" in capsys.readouterr().out
    assert [p.name for p in list_checkpoints(empty)] == ["step-1"]


_KILLABLE = """
import sys, time, pathlib, engine.checkpoint as c
from engine.train import main
marker, calls, real = pathlib.Path(sys.argv[1]), [], c.write_manifest
def stall(d):  # step 2's files are all written into step-2.tmp; the manifest and the rename are not
    calls.append(d)
    if len(calls) == 2:
        marker.write_text(str(d))
        time.sleep(600)
    real(d)
c.write_manifest = stall
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow  # a subprocess killed with SIGKILL
def test_a_run_killed_while_writing_a_checkpoint_resumes_from_the_last_complete_one(run, tmp_path, capsys):
    out, marker = tmp_path / "killed", tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, str(marker), *TINY, "--steps", "3", "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None, "the training process died"
            assert time.monotonic() < deadline, "training never reached its second checkpoint"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert [p.name for p in list_checkpoints(out)] == ["step-1"]  # step-2.tmp is invisible
    assert (out / "checkpoints" / "step-2.tmp" / "trainable-rank0.safetensors").is_file()
    assert main([*TINY, "--steps", "3", "--out", str(out), "--resume"]) == 0
    assert f"resumed from {out / 'checkpoints' / 'step-1'} (step 1)" in capsys.readouterr().out
    assert _losses(out) == _losses(run)
    assert [p.name for p in list_checkpoints(out)] == ["step-1", "step-2", "step-3"]
    assert not (out / "checkpoints" / "step-2.tmp").exists()
