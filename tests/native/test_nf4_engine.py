"""NF4 inference in the engine (engine/quantize.py, `engine.load(..., quantize="nf4")`) on SmolLM2-135M.

- logits of the NF4 model against the engine running the same dequantized weights in fp32, within 2x the fp32
  model's own error against an fp64 run of those weights (3 prompts of different lengths);
- a LoRA adapter applied on the NF4 base gives the logits of the QLoRA training forward (LoRALinear with an NF4
  base, in train mode, as engine.train runs it), and the loader's hook builds that model from a saved adapter.
"""

import copy

import pytest
import torch
from torch import nn

import engine
from engine.lora import apply_lora, lora_modules, save_adapter
from engine.quantize import NF4Linear, Q8Head, quantize_model
from tests.kernels.error_bound import assert_within_torch_error

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "Once upon a time, in a village at the edge of a"]


@pytest.fixture(scope="module")
def smol():
    return engine.load("smollm2-135m", dtype=torch.float32, device="cpu")


def _logits(model, tok, prompt):
    with torch.no_grad():
        return model(torch.tensor([tok.encode(prompt, bos=True)]))


def test_nf4_logits_match_dequantized_fp32(smol):
    base, tok = smol
    nf4 = quantize_model(copy.deepcopy(base))
    deq = copy.deepcopy(base)  # the same model with each block linear set to dequant(its NF4 weight)
    nf4_mods = dict(nf4.named_modules())
    n_quantized = 0
    for name, m in deq.named_modules():
        if isinstance(m, nn.Linear) and isinstance(nf4_mods.get(name), NF4Linear):
            m.weight.data = nf4_mods[name].dequantized(torch.float32)
            n_quantized += 1
    assert n_quantized == 7 * base.args.n_layers
    # the LM head becomes 8-bit (its own error bound is tested with Q8Head); here the block linears are compared,
    # so the output layer is put back in the model dtype
    assert isinstance(nf4.lm_head, Q8Head)
    nf4.lm_head = copy.deepcopy(base.lm_head)
    deq64 = copy.deepcopy(deq).double()
    for prompt in PROMPTS:
        ours, peer = _logits(nf4, tok, prompt), _logits(deq, tok, prompt)
        assert_within_torch_error(f"nf4 engine {prompt!r}", ours, peer, _logits(deq64, tok, prompt))


def test_adapter_on_nf4_base_is_the_qlora_training_forward(smol, tmp_path):
    base, tok = smol
    trained = apply_lora(copy.deepcopy(base), rank=4, alpha=8, quantize=True)  # what engine.train builds for QLoRA
    g = torch.Generator().manual_seed(0)
    for m in lora_modules(trained).values():  # a trained-looking adapter: B away from its zero init
        m.lora_B.data = torch.randn(m.lora_B.shape, generator=g) * 0.02
    save_adapter(trained, tmp_path)
    served = quantize_model(copy.deepcopy(base), "nf4", adapter=tmp_path)  # the loader's hook
    assert all(m.nf4 is not None for m in lora_modules(served).values())
    assert isinstance(served.lm_head, Q8Head)  # the training forward has the model-dtype head: compare the blocks
    served.lm_head = copy.deepcopy(trained.lm_head)
    trained.train()  # the training forward (dropout 0), with autograd recording
    tokens = torch.tensor([tok.encode(PROMPTS[0], bos=True)])
    want = trained(tokens)
    assert want.requires_grad
    with torch.no_grad():
        got = served(tokens)
    assert torch.equal(got, want.detach())


def test_load_hook_and_bad_method():
    model, _ = engine.load("debug", random_init=True, device="cpu", quantize="nf4")
    kinds = {type(m) for m in model.layers.modules() if isinstance(m, (nn.Linear, NF4Linear))}
    assert kinds == {NF4Linear}
    with pytest.raises(ValueError, match="quantize must be one of nf4"):
        engine.load("debug", random_init=True, device="cpu", quantize="int3")
