"""The whole engine on a CUDA device (bf16, every op through the Triton kernels), with nothing downloaded: a small
Llama 3.1-shaped model made by transformers, so these run on the lent GPU machine (bench/gpu_suite.sh), which has
no network. Logits are checked against transformers' fp32 model on the CPU, within twice the error of transformers
itself running in bf16 on the GPU; KV-cache decoding against recomputation; QLoRA training steps."""

import pytest
import torch

import engine
from engine.serving.offline import generate_ids

pytestmark = pytest.mark.gpu
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = transformers.LlamaConfig(vocab_size=2048, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                                   num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096,
                                   rope_theta=500000.0, tie_word_embeddings=False, initializer_range=0.05,
                                   rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 256})
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    d = tmp_path_factory.mktemp("gpu_ckpt")
    hf.save_pretrained(d)
    return hf, d


def test_bf16_logits_within_twice_transformers_bf16_error(ckpt):
    hf, d = ckpt
    model, _ = engine.load(d, device="cuda", dtype=torch.bfloat16)
    x = torch.randint(0, 2048, (2, 300), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(x).logits.double()  # fp32 on the CPU
        theirs = hf.to("cuda", torch.bfloat16)(x.cuda()).logits.double().cpu()
        hf.to("cpu", torch.float32)
        ours = model(x.cuda()).double().cpu()
    e_ours, e_theirs = (ours - ref).abs().max(), (theirs - ref).abs().max()
    assert e_ours <= 2 * e_theirs, f"ours {e_ours:.3g} vs transformers bf16 {e_theirs:.3g}"


def test_cached_decoding_matches_recompute(ckpt):
    _, d = ckpt
    model, _ = engine.load(d, device="cuda", dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 2048, (n,), generator=g).tolist() for n in (5, 77, 130)]
    new = generate_ids(model, prompts, max_new_tokens=8)
    for p, got in zip(prompts, new):
        with torch.no_grad():  # the first new token from a full forward of the prompt
            assert got[0] == int(model(torch.tensor([p], device="cuda"))[0, -1].argmax())


def test_qlora_steps_on_cuda(ckpt):
    from engine.lora import apply_lora

    _, d = ckpt
    model, _ = engine.load(d, device="cuda", dtype=torch.bfloat16)
    apply_lora(model, rank=16, alpha=32, quantize=True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
    g = torch.Generator().manual_seed(3)
    lens = [300, 211, 512]
    tokens = torch.randint(0, 2048, (1, sum(lens)), generator=g).cuda()
    positions = torch.cat([torch.arange(n) for n in lens])[None].cuda()
    cu = torch.tensor([0, 300, 511, 1023], dtype=torch.int32, device="cuda")
    losses = []
    for _ in range(5):  # the same batch five times: the loss must fall
        loss = model.loss(tokens, tokens, positions, cu, 512)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
