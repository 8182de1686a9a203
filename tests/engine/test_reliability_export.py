"""Nothing a user owns is lost by engine.merge / exports: an --out (or --gguf) equal to, inside or containing an
input is refused whatever --overwrite says, with the inputs byte-identical afterwards; checks run before any model
loads; a refused --gguf leaves no --out; a read-only or full target fails in one line; a bad adapter_config.json
names the file and the field everywhere an adapter is loaded; an export killed with SIGKILL mid-write leaves the
previous folder intact and loadable (never a half folder), and the next export cleans up after it.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import engine
from engine import merge as merge_mod
from engine.atomic import OutputError, ensure_writable
from engine.export import export_hf
from engine.lora import apply_lora, lora_modules, save_adapter


def _tree(d: Path) -> dict:
    """Every file's size, modification time and a hash of its head (enough to see a deletion or a rewrite)."""
    def sig(p: Path):
        with open(p, "rb") as f:
            return p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(f.read(1 << 20)).hexdigest()

    return {p.relative_to(d).as_posix(): sig(p) for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A debug base model folder and a LoRA adapter on it (random, non-zero B)."""
    root = tmp_path_factory.mktemp("inputs")
    with pytest.MonkeyPatch.context() as mp:  # module scope runs before conftest's per-test removal
        mp.delenv("TRITON_INTERPRET", raising=False)
        model, tok = engine.load("debug", random_init=True, dtype=torch.float32, device="cpu", seed=3)
    export_hf(model, tok, root / "base", dtype=torch.float32)
    apply_lora(model, rank=2, alpha=4)
    for m in lora_modules(model).values():
        torch.nn.init.normal_(m.lora_B, std=0.02)
    save_adapter(model, root / "adapter", base_model=str(root / "base"))
    return root


@pytest.fixture
def no_load(monkeypatch):
    import engine.loader

    monkeypatch.setattr(engine.loader, "load", lambda *a, **k: pytest.fail("the model was loaded"))


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize(("out", "gguf", "word"), [
    ("adapter", None, "is the input"),
    ("adapter/merged", None, "is inside the input"),
    (".", None, "contains the input"),
    ("base", None, "is the input"),
    ("base/sub/merged", None, "is inside the input"),
    ("link-to-adapter", None, "is the input"),  # a symlink is the folder it points to
    ("fresh", "adapter/adapter_model.safetensors", "is inside the input"),
    ("fresh", "base/model.safetensors", "is inside the input"),
])
def test_outputs_overlapping_an_input_are_refused_whatever_overwrite_says(inputs, no_load, capsys, out, gguf, word,
                                                                          overwrite):
    link = inputs / "link-to-adapter"
    if not link.exists():
        link.symlink_to(inputs / "adapter")
    before = {d: _tree(inputs / d) for d in ("adapter", "base")}
    argv = ["--adapter", str(inputs / "adapter"), "--out", str(inputs / out)]
    argv += ["--gguf", str(inputs / gguf)] if gguf else []
    assert merge_mod.main(argv + (["--overwrite"] if overwrite else [])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and word in err and "--overwrite does not change this" in err, err
    assert {d: _tree(inputs / d) for d in ("adapter", "base")} == before
    assert not (inputs / "fresh").exists()


def test_a_refused_gguf_leaves_no_out_folder(inputs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "merged"
    (tmp_path / "dir.gguf").mkdir()
    args = ["--adapter", str(inputs / "adapter"), "--out", str(out)]
    assert merge_mod.main([*args, "--gguf", str(tmp_path / "dir.gguf")]) == 2
    assert "is a directory, not a file" in capsys.readouterr().err and not out.exists()

    import engine.export_gguf

    def refuse(tok):
        raise ValueError("GGUF export needs a byte-level BPE tokenizer")

    monkeypatch.setattr(engine.export_gguf, "check_tokenizer", refuse)  # as for the Llama 3 tiktoken vocabulary
    assert merge_mod.main([*args, "--gguf", str(tmp_path / "m.gguf")]) == 2
    assert "byte-level BPE" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "m.gguf").exists() and not list(tmp_path.glob(".*"))


def test_read_only_and_full_targets_fail_fast_in_one_line(inputs, no_load, capsys):
    with pytest.raises(OutputError, match=r"^cannot write to /proc"):
        ensure_writable("/proc/merged")  # procfs: not writable even for root
    with pytest.raises(OutputError, match=r"^not enough free space in .*GiB needed"):
        ensure_writable(inputs, need_bytes=1 << 62)
    assert merge_mod.main(["--adapter", str(inputs / "adapter"), "--out", "/proc/merged"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write to /proc") and err.count("\n") == 1


@pytest.mark.parametrize(("patch", "field", "expected"), [
    ({"r": "sixteen"}, "r", "'sixteen' is not a positive integer"),
    ({"r": 0}, "r", "0 is not a positive integer"),
    ({"r": True}, "r", "True is not a positive integer"),
    ({"lora_alpha": "big"}, "lora_alpha", "'big' is not a number"),
    ({"lora_dropout": 2}, "lora_dropout", "2 is not a number in [0, 1)"),
    ({"target_modules": [1, 2]}, "target_modules", "is not a list of module names or 'all-linear'"),
    ({"base_model_name_or_path": 5}, "base_model_name_or_path", "5 is not a string"),
    ({"use_dora": True}, "use_dora", "not supported"),
])
def test_bad_adapter_configs_name_the_file_and_field(inputs, tmp_path, capsys, patch, field, expected):
    bad = tmp_path / "bad-adapter"
    bad.mkdir()
    (bad / "adapter_model.safetensors").write_bytes((inputs / "adapter" / "adapter_model.safetensors").read_bytes())
    cfg = json.loads((inputs / "adapter" / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**cfg, **patch}))
    line = f"{bad / 'adapter_config.json'}: {field}: "
    with pytest.raises(ValueError) as e:  # what generate, serve (real model) and eval go through
        engine.load(inputs / "base", adapter=bad, dtype=torch.float32, device="cpu")
    assert str(e.value).startswith(line) and expected in str(e.value)
    assert merge_mod.main(["--adapter", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {line}") and expected in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_not_json_adapter_config(tmp_path, capsys):
    (tmp_path / "adapter_config.json").write_text("{r: 16")
    assert merge_mod.main(["--adapter", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert f"error: {tmp_path / 'adapter_config.json'}: not valid JSON" in capsys.readouterr().err


_KILLABLE = """
import sys, time, pathlib, torch, engine, engine.export as ex
marker = pathlib.Path(sys.argv[2])
real = ex.write_generation_config
def stall(*a, **k):  # the weights and tokenizer are written: the folder would load if it were in place
    real(*a, **k)
    marker.write_text("writing")
    time.sleep(600)
ex.write_generation_config = stall
model, tok = engine.load("debug", random_init=True, dtype=torch.float32, device="cpu", seed=11)
ex.export_hf(model, tok, sys.argv[1], dtype=torch.float32, overwrite=True)
"""


@pytest.mark.slow  # a subprocess killed with SIGKILL
def test_export_killed_mid_write_leaves_the_previous_folder(inputs, tmp_path):
    out, marker = tmp_path / "model", tmp_path / "marker"
    base, tok = engine.load(inputs / "base", dtype=torch.float32, device="cpu")
    export_hf(base, tok, out, dtype=torch.float32)
    before = _tree(out)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, str(out), str(marker)], env=env)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert proc.poll() is None, "the export process died"
            assert time.monotonic() < deadline, "the export never reached its last file"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _tree(out) == before  # the previous export, untouched
    leftovers = list(tmp_path.glob(".model.tmp-*"))
    assert len(leftovers) == 1 and (leftovers[0] / "model.safetensors").is_file()  # the half folder is hidden
    again, _ = engine.load(out, dtype=torch.float32, device="cpu")
    x = torch.randint(0, 49152, (1, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(again(x), base(x))
    other, tok = engine.load("debug", random_init=True, dtype=torch.float32, device="cpu", seed=12)
    export_hf(other, tok, out, dtype=torch.float32, overwrite=True)  # replaces it, and removes the dead leftover
    assert not list(tmp_path.glob(".model.*")) and _tree(out) != before
    with torch.no_grad():
        assert torch.equal(engine.load(out, dtype=torch.float32, device="cpu")[0](x), other(x))
