"""Hub ids through the Hugging Face cache, offline: a cache laid out by huggingface_hub's own naming
(`repo_folder_name`, refs/, snapshots/<commit>/) is read by `snapshot_download(local_files_only=True)` for
`org/name` and `org/name@revision`; a missing id is one line saying how to download it."""

import json

import pytest
import torch
from huggingface_hub import snapshot_download
from huggingface_hub.file_download import repo_folder_name

import engine
from engine.export import export_hf
from engine.hub import HubError, portable_name, resolve_source

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache_repo(cache, repo_id, repo_type="model", files=None, model=None):
    """Lay out one repo in an HF cache: blobs are plain files here (the layout huggingface_hub uses where symlinks
    are unavailable); refs/main names the commit."""
    root = cache / repo_folder_name(repo_id=repo_id, repo_type=repo_type)
    snap = root / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    for name, text in (files or {}).items():
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        (snap / name).write_text(text)
    if model is not None:
        export_hf(*model, snap, dtype=torch.float32, overwrite=True)
    return snap


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_id_resolves_from_the_cache_and_loads(hub_cache):
    model, tok = engine.load("debug", random_init=True, dtype=torch.float32, device="cpu", seed=3)
    snap = _cache_repo(hub_cache, "acme/tiny-llama", model=(model, tok))
    assert snapshot_download("acme/tiny-llama", local_files_only=True, cache_dir=hub_cache) == str(snap)
    assert resolve_source("acme/tiny-llama") == str(snap)
    assert resolve_source(f"acme/tiny-llama@{COMMIT}") == str(snap)
    assert resolve_source("acme/tiny-llama@main") == str(snap)
    loaded, _ = engine.load("acme/tiny-llama", dtype=torch.float32, device="cpu")
    x = torch.randint(0, 49152, (1, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert portable_name(snap) == "acme/tiny-llama" and portable_name("acme/tiny-llama") == "acme/tiny-llama"
    assert portable_name("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_missing_id_offline_is_one_line(hub_cache, capsys):
    with pytest.raises(HubError, match=r"acme/absent: no such local directory, and not in .*HF_HUB_OFFLINE is set.*"
                                       r"`hf download acme/absent`"):
        resolve_source("acme/absent")
    from engine.serving.offline import main

    assert main(["--model", "runs/absent/model", "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert err == "error: no such file or directory: runs/absent/model\n"
    assert main(["--model", "absent-model", "--prompt", "hi"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown model preset 'absent-model', and no such directory;")


def test_train_refuses_weights_that_are_not_the_preset(hub_cache, tmp_path, capsys):
    from engine.train import main

    model, tok = engine.load("debug", random_init=True, dtype=torch.float32, device="cpu")
    _cache_repo(hub_cache, "acme/tiny-llama", model=(model, tok))
    assert main(["--model", "acme/tiny-llama", "--size", "8b", "--steps", "1", "--out", str(tmp_path / "r")]) == 2
    assert "are not a llama-3.1-8b: dim 128 (preset: 4096)" in capsys.readouterr().err


def test_adapter_trained_on_a_hub_id_names_it(hub_cache, tmp_path):
    from engine.train import parse_config, train

    model, tok = engine.load("debug", random_init=True, dtype=torch.float32, device="cpu")
    _cache_repo(hub_cache, "acme/tiny-llama", model=(model, tok))
    out = tmp_path / "run"
    train(parse_config(["--model", f"acme/tiny-llama@{COMMIT}", "--lora", "--lora-rank", "2", "--steps", "1",
                        "--global-batch-size", "2", "--micro-batch-size", "2", "--max-seq-len", "128",
                        "--out", str(out)]))
    for d in (out / "adapter", out / "checkpoints" / "step-1" / "adapter"):
        cfg = json.loads((d / "adapter_config.json").read_text())
        assert (cfg["base_model_name_or_path"], cfg["revision"]) == ("acme/tiny-llama", COMMIT)


def test_coalm_data_download_reads_the_dataset_from_the_cache(hub_cache, capsys):
    from coalm.data.__main__ import main

    assert main(["download", "coalm-it"]) == 2
    assert "uiuc-convai/CoALM-IT: not in" in capsys.readouterr().err
    snap = _cache_repo(hub_cache, "uiuc-convai/CoALM-IT", repo_type="dataset",
                       files={"README.md": "x", "data/train.parquet": "not read here"})
    assert main(["download", "coalm-it"]) == 0
    out = capsys.readouterr().out
    assert f"coalm-it: {snap} (1 parquet files: data/train.parquet)" in out
    assert json.dumps(str(snap / "data" / "train.parquet"))[1:-1] in out
