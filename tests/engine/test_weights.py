"""HF checkpoints: a debug-sized Llama 3.1 (rope scaling on) saved by transformers in several safetensors shards
loads and matches transformers; our merged saves load back in transformers; broken checkpoints fail clearly."""

import json

import pytest
import torch

import engine
from engine.serving.offline import generate_ids
from engine.weights import WeightsError

transformers = pytest.importorskip("transformers")


def _hf_config(**kw):
    cfg = {
        "vocab_size": 1000,
        "hidden_size": 96,
        "intermediate_size": 200,
        "num_hidden_layers": 3,
        "num_attention_heads": 6,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        "tie_word_embeddings": False,
        "initializer_range": 0.1,
    }
    cfg.update(kw)
    return transformers.LlamaConfig(**cfg)


@pytest.fixture(scope="module")
def hf_ckpt(tmp_path_factory):
    torch.manual_seed(1234)
    model = transformers.LlamaForCausalLM(_hf_config()).eval()
    d = tmp_path_factory.mktemp("hf_debug")
    model.save_pretrained(d, max_shard_size="300KB", safe_serialization=True)
    assert len(list(d.glob("*.safetensors"))) >= 2 and (d / "model.safetensors.index.json").is_file()
    return model, d


def _compare(ours, hf, seqlen=70, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, hf.config.vocab_size, (2, seqlen), generator=g)
    with torch.no_grad():
        a, b = ours(x), hf(x).logits
    assert (a - b).abs().max() / b.abs().max() < 1e-4
    return x


def test_sharded_checkpoint_matches_transformers(hf_ckpt):
    hf, d = hf_ckpt
    model, _ = engine.load(d, dtype=torch.float32, device="cpu")
    assert model.args.rope_scaling["original_max_position_embeddings"] == 64
    x = _compare(model, hf)
    prompt = x[0, :20].tolist()
    ours = generate_ids(model, [prompt], max_new_tokens=32)[0]
    with torch.no_grad():
        ref = hf.generate(
            torch.tensor([prompt]),
            max_new_tokens=32,
            min_new_tokens=32,
            do_sample=False,
            attention_mask=torch.ones(1, 20, dtype=torch.long),
            eos_token_id=None,
        )[0, 20:].tolist()
    assert ours == ref


def test_save_hf_roundtrip_loads_in_transformers(hf_ckpt, tmp_path):
    from engine.weights import save_hf

    _hf, d = hf_ckpt
    model, _ = engine.load(d, dtype=torch.float32, device="cpu")
    save_hf(model, tmp_path, dtype=torch.float32, max_shard_bytes=200_000)
    back = transformers.LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    _compare(model, back, seed=1)


def _copy(d, tmp_path):
    import shutil

    dst = tmp_path / "ckpt"
    shutil.copytree(d, dst)
    return dst


def test_missing_shard(hf_ckpt, tmp_path):
    d = _copy(hf_ckpt[1], tmp_path)
    shard = max(d.glob("*.safetensors"))
    shard.unlink()
    with pytest.raises(WeightsError, match=shard.name):
        engine.load(d, device="cpu")


def test_truncated_shard(hf_ckpt, tmp_path):
    d = _copy(hf_ckpt[1], tmp_path)
    shard = min(d.glob("*.safetensors"))
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=shard.name):
        engine.load(d, device="cpu")


def test_shape_mismatch_names_tensor(hf_ckpt, tmp_path):
    d = _copy(hf_ckpt[1], tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 256
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match=r"mlp\.(gate|up|down)_proj\.weight.*shape"):
        engine.load(d, device="cpu")


def test_unknown_and_missing_tensors(hf_ckpt, tmp_path):
    from safetensors.torch import load_file, save_file

    d = _copy(hf_ckpt[1], tmp_path)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    name = "model.layers.1.self_attn.q_proj.weight"
    fname = index["weight_map"][name]
    tensors = load_file(str(d / fname))
    tensors["model.layers.1.self_attn.q_norm.weight"] = torch.ones(3)
    save_file(tensors, str(d / fname))
    index["weight_map"]["model.layers.1.self_attn.q_norm.weight"] = fname
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(WeightsError, match="unexpected tensor model.layers.1.self_attn.q_norm.weight"):
        engine.load(d, device="cpu")
    del tensors["model.layers.1.self_attn.q_norm.weight"], tensors[name]
    save_file(tensors, str(d / fname))
    del index["weight_map"]["model.layers.1.self_attn.q_norm.weight"], index["weight_map"][name]
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(WeightsError, match="missing tensors.*layers.1.self_attn.q_proj.weight"):
        engine.load(d, device="cpu")


def test_no_weights_and_bad_gguf(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_hf_config().to_dict()))
    with pytest.raises(WeightsError, match="no safetensors"):
        engine.load(tmp_path, device="cpu")
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    with pytest.raises(WeightsError, match="x.gguf"):
        engine.load(bad, device="cpu")
