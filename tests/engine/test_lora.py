"""LoRA/QLoRA layers and PEFT adapters: our saved adapter loads with peft onto the transformers model and gives the
same outputs; PEFT's adapters load into ours; merging equals the unmerged model; QLoRA uses the NF4 base."""

import json

import pytest
import torch

import engine
from coalm_kernels.nf4 import dequantize_nf4
from engine.lora import LoRALinear, apply_lora, load_adapter, lora_modules, merge_lora, save_adapter

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(7)
    cfg = transformers.LlamaConfig(vocab_size=777, hidden_size=64, intermediate_size=136, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
                                   tie_word_embeddings=False, initializer_range=0.1)
    model = transformers.LlamaForCausalLM(cfg).eval()
    d = tmp_path_factory.mktemp("tiny")
    model.save_pretrained(d)
    return d


def _randomize_lora(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.1)


def test_fresh_adapter_is_identity(hf_dir):
    model, _ = engine.load(hf_dir, dtype=torch.float32, device="cpu")
    x = torch.randint(0, 777, (2, 19))
    with torch.no_grad():
        before = model(x)
        apply_lora(model, rank=8, alpha=16)
        after = model(x)
    assert torch.equal(before, after)
    assert len(lora_modules(model)) == 2 * 7
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A" in n or ".lora_B" in n for n in trainable)


def test_adapter_loads_in_peft_with_matching_outputs(hf_dir, tmp_path):
    model, _ = engine.load(hf_dir, dtype=torch.float32, device="cpu")
    apply_lora(model, rank=16, alpha=32)
    _randomize_lora(model, 0)
    save_adapter(model, tmp_path / "adapter", base_model=str(hf_dir))
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 16 and cfg["lora_alpha"] == 32 and cfg["peft_type"] == "LORA"

    base = transformers.LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    pm = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    x = torch.randint(0, 777, (2, 33))
    with torch.no_grad():
        ours, ref = model(x), pm(x).logits
    assert (ours - ref).abs().max() / ref.abs().max() < 1e-5


def test_peft_adapter_loads_into_ours(hf_dir, tmp_path):
    base = transformers.LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    lcfg = peft.LoraConfig(r=8, lora_alpha=24, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0)
    pm = peft.get_peft_model(base, lcfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    pm.save_pretrained(tmp_path / "peft")
    model, _ = engine.load(hf_dir, dtype=torch.float32, device="cpu", adapter=tmp_path / "peft")
    assert {n.rsplit(".", 1)[1] for n in lora_modules(model)} == {"q_proj", "v_proj", "down_proj"}
    x = torch.randint(0, 777, (1, 40))
    with torch.no_grad():
        ours, ref = model(x), pm.eval()(x).logits
    assert (ours - ref).abs().max() / ref.abs().max() < 1e-5


def test_merge_equals_unmerged(hf_dir):
    model, _ = engine.load(hf_dir, dtype=torch.float32, device="cpu")
    apply_lora(model, rank=4, alpha=8)
    _randomize_lora(model, 1)
    x = torch.randint(0, 777, (2, 21))
    with torch.no_grad():
        a = model(x)
        merge_lora(model)
        b = model(x)
    assert not lora_modules(model)
    assert (a - b).abs().max() / a.abs().max() < 1e-5


def test_qlora_layer_uses_nf4_base():
    torch.manual_seed(0)
    base = torch.nn.Linear(192, 80, bias=False)
    layer = LoRALinear(base, rank=8, alpha=16, quantize=True)
    assert layer.weight is None and layer.nf4 is not None
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 5, 192, dtype=torch.float64)
    w = dequantize_nf4(layer.nf4, torch.float32).double()
    ref = x @ w.T + 2.0 * (x @ layer.lora_A.double().T) @ layer.lora_B.double().T
    out = layer(x.float())
    assert (out.double() - ref).abs().max() / ref.abs().max() < 1e-5
    # the quantization error is that of NF4, not more: blockwise absmax/7-ish, checked loosely against the dense weight
    assert (w.float() - base.weight).abs().max() <= base.weight.abs().max() * 0.2


def test_adapter_errors(hf_dir, tmp_path):
    model, _ = engine.load(hf_dir, dtype=torch.float32, device="cpu")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(model, tmp_path)
    apply_lora(model, rank=4, alpha=8)
    save_adapter(model, tmp_path / "a")
    other, _ = engine.load(hf_dir, dtype=torch.float32, device="cpu")
    apply_lora(other, rank=8, alpha=8)
    with pytest.raises(ValueError, match="shape"):
        load_adapter(other, tmp_path / "a")
    with pytest.raises(ValueError, match="unknown LoRA targets"):
        apply_lora(other, targets=["qkv"])


def test_block_streamed_qlora_equals_in_place(hf_dir):
    """apply_lora(device=...) (QLoRA's load path on a GPU: quantize each block on its way to the device) builds the
    same NF4 codes, LoRA factors and outputs as quantizing the model where it is."""
    a, _ = engine.load(hf_dir, dtype=torch.float32, device="cpu")
    b, _ = engine.load(hf_dir, dtype=torch.float32, device="cpu")
    torch.manual_seed(3)
    apply_lora(a, rank=4, alpha=8, quantize=True)
    torch.manual_seed(3)
    apply_lora(b, rank=4, alpha=8, quantize=True, device="cpu")
    ma, mb = lora_modules(a), lora_modules(b)
    assert ma.keys() == mb.keys()
    for k in ma:
        assert torch.equal(ma[k].nf4.packed, mb[k].nf4.packed) and torch.equal(ma[k].lora_A, mb[k].lora_A)
    x = torch.randint(0, 777, (1, 30))
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
