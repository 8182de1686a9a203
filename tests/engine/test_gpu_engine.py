"""The whole engine on a CUDA device (bf16, every op through the Triton kernels): logits against transformers'
fp32 model, within twice the error of transformers itself running in bf16; generation; QLoRA training steps.
Skipped without CUDA; bench/gpu_suite.sh runs them."""

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda_smol():
    import engine

    return engine.load("smollm2-135m", device="cuda", dtype=torch.bfloat16)


def test_bf16_logits_within_twice_transformers_bf16_error(cuda_smol, smol_hf):
    model, tok = cuda_smol
    hf, _ = smol_hf
    ids = tok.encode("The quick brown fox jumps over the lazy dog. " * 6)
    x = torch.tensor([ids])
    with torch.no_grad():
        ref = hf(x).logits.double()  # fp32 on the CPU
        hf16 = hf.to("cuda", torch.bfloat16)
        theirs = hf16(x.cuda()).logits.double().cpu()
        hf.to("cpu", torch.float32)
        ours = model(x.cuda()).double().cpu()
    e_ours, e_theirs = (ours - ref).abs().max(), (theirs - ref).abs().max()
    assert e_ours <= 2 * e_theirs, f"ours {e_ours:.3g} vs transformers bf16 {e_theirs:.3g}"


def test_generation_answers(cuda_smol):
    import engine

    model, tok = cuda_smol
    out = engine.generate(model, tok, [[{"role": "user", "content": "What is the capital of France?"}]] * 3,
                          max_new_tokens=16)
    assert all("Paris" in t for t in out)


def test_qlora_training_steps_on_cuda(tmp_path):
    from engine.train import parse_config, train

    cfg = parse_config(["--steps", "3", "--max-seq-len", "512", "--lr", "1e-3", "--out", str(tmp_path)])
    last = train(cfg)
    assert torch.isfinite(torch.tensor(last["loss"])) and last["peak_memory_mb"] > 0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
