"""Self-contained exports. A merged SmolLM2 (its tokenizer read from the embedded GGUF, so every tokenizer file is
written by us) loads with transformers' AutoTokenizer + AutoModelForCausalLM alone and decodes greedily to the
engine's tokens; a GGUF export loads back in transformers' GGUF loader and in the engine with equal logits; a
non-empty export folder is refused without --overwrite."""

import json

import pytest
import torch

import engine
from engine.export import ExportError, export_hf
from engine.export_gguf import export_gguf
from engine.lora import apply_lora, lora_modules, merge_lora
from engine.serving.offline import generate_ids

transformers = pytest.importorskip("transformers")
MESSAGES = [{"role": "system", "content": "Answer with a JSON list of calls."},
            {"role": "user", "content": "Weather in Zürich tomorrow? Café hours: 8–17."}]


def _hf_ids(hf_tok, messages):
    out = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(out["input_ids"])


def test_merged_export_loads_in_transformers_with_the_engines_greedy_tokens(tmp_path):
    model, tok = engine.load("smollm2-135m", dtype=torch.float32, device="cpu")
    torch.manual_seed(0)
    apply_lora(model, rank=4, alpha=8)
    for m in lora_modules(model).values():
        torch.nn.init.normal_(m.lora_B, std=0.02)
    merge_lora(model)
    out = export_hf(model, tok, tmp_path / "merged", dtype=torch.float32)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
            "generation_config.json"} <= names
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == tok.chat_template

    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = _hf_ids(hf_tok, MESSAGES)
    assert ids == tok.encode_chat(MESSAGES)
    ours, _ = engine.load(out, dtype=torch.float32, device="cpu")
    new = generate_ids(ours, [ids], max_new_tokens=20, stop_ids=tok.stop_ids)[0]
    gen = hf.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)[0, len(ids):].tolist()
    if gen and gen[-1] in tok.stop_ids:  # transformers keeps the stop token; the engine drops it
        gen = gen[:-1]
    assert new == gen and len(new) > 0
    assert hf_tok.decode(gen) == tok.decode(new)


def test_gguf_export_round_trips_through_transformers_and_the_engine(tmp_path):
    """transformers' GGUF loader ignores llama.cpp's rope_freqs tensor, so the model is built without RoPE scaling
    (SmolLM2's own setting) for the comparison; the engine reads the scaled case back exactly (second half)."""
    base, tok = engine.load("debug", random_init=True, dtype=torch.float32, device="cpu", seed=5)
    export_hf(base, tok, tmp_path / "hf", dtype=torch.float32)
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg.pop("rope_scaling", None)
    cfg.pop("rope_parameters", None)
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    model, tok = engine.load(tmp_path / "hf", dtype=torch.float32, device="cpu")
    path = export_gguf(model, tok, tmp_path / "g" / "m.gguf", dtype=torch.float32)
    x = torch.randint(0, 49152, (2, 29), generator=torch.Generator().manual_seed(2))
    back, back_tok = engine.load(path, dtype=torch.float32, device="cpu")
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        ref, a, b = model(x), back(x), hf(x).logits
    assert torch.equal(a, ref)
    assert (b - ref).abs().max() <= 1e-5 * ref.abs().max()
    assert back_tok.encode_chat(MESSAGES) == tok.encode_chat(MESSAGES)
    hf_tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert _hf_ids(hf_tok, MESSAGES) == tok.encode_chat(MESSAGES)

    scaled = export_gguf(base, tok, tmp_path / "g" / "scaled.gguf", dtype=torch.float32)
    again, _ = engine.load(scaled, dtype=torch.float32, device="cpu")
    with torch.no_grad():
        assert torch.equal(again(x), base(x))


def test_export_refuses_a_non_empty_folder(tmp_path, capsys):
    d = tmp_path / "out"
    d.mkdir()
    (d / "keep.txt").write_text("x")
    model, tok = engine.load("debug", random_init=True, dtype=torch.float32, device="cpu", seed=1)
    with pytest.raises(ExportError, match="is not empty: pass --overwrite"):
        export_hf(model, tok, d)
    from engine.merge import main

    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "debug"}))
    assert main(["--adapter", str(tmp_path / "adapter"), "--out", str(d)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {d} is not empty: pass --overwrite to replace its contents, or another folder\n"
    assert (d / "keep.txt").read_text() == "x"
    assert export_hf(model, tok, d, overwrite=True) == d and not (d / "keep.txt").exists()
    assert (d / "model.safetensors").is_file() and not list(tmp_path.glob(".out.*"))
