"""QLoRA training step, ours against the usual stack (transformers + PEFT + bitsandbytes 4-bit + SDPA).

On a GPU (bench/gpu_suite.sh): `llama-3.1-8b` with random weights, one sequence of 2048 tokens, NF4 base weights
(double-quantized), LoRA rank 16 / alpha 32 on all seven linear layers, bf16, activation checkpointing on both
sides, AdamW. Reported: tokens/s, ratio to the peer, peak memory of each (torch.cuda.max_memory_allocated, model
included) and its ratio. Targets on an H100: >= 2x their tokens/s, >= 8,400 tokens/s, <= 0.4x their peak memory.

FLOPs per step (for the model-FLOPs rate): with recompute, forward 2N + recomputed forward 2N + backward to the
inputs 2N = 6N per token over the N non-embedding parameters (no weight gradients for frozen W), plus the LoRA
terms (negligible) and attention 2 * (4 * T * dim / 2) * n_layers per token (causal halves it) times 3.

On a CPU the same code runs at the `debug` preset's size so the plumbing is checked; those numbers mean nothing.
"""

import gc

import pytest
import torch

from bench.conftest import DEVICE, ON_GPU, median_time, pick, sync

PRESET = pick("debug", "llama-3.1-8b")
SEQ = pick(256, 2048)
DTYPE = pick(torch.float32, torch.bfloat16)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _flops_per_token(args) -> float:
    n = args.num_params() - args.vocab_size * args.dim * (1 if args.tie_embeddings else 2)
    attn = 2 * 4 * SEQ * args.n_heads * args.head_dim / 2 * args.n_layers
    return 6 * n + 3 * attn + 2 * 3 * args.vocab_size * args.dim  # the lm_head: forward + grad_hidden, no recompute


def _peak_reset():
    gc.collect()
    if ON_GPU:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_mb():
    return torch.cuda.max_memory_allocated() / 2**20 if ON_GPU else None


def _ours():
    import engine
    from engine.lora import apply_lora

    model, _ = engine.load(PRESET, random_init=True, dtype=DTYPE, device=DEVICE)
    apply_lora(model, rank=16, alpha=32, quantize=True)  # each bf16 base weight is freed once quantized
    model.train()
    model.gradient_checkpointing = ON_GPU
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=ON_GPU)
    g = torch.Generator(device="cpu").manual_seed(0)
    tokens = torch.randint(0, model.args.vocab_size, (1, SEQ), generator=g).to(DEVICE)
    positions = torch.arange(SEQ, device=DEVICE)[None]
    cu = torch.tensor([0, SEQ], dtype=torch.int32, device=DEVICE)

    def step():
        model.loss(tokens, tokens, positions, cu, SEQ).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return model, step


def _theirs():
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    bnb = pytest.importorskip("bitsandbytes")
    from engine.config import get_config

    args = get_config(PRESET)
    cfg = transformers.LlamaConfig(**{k: v for k, v in args.to_hf().items() if k not in ("architectures", "torch_dtype")})
    cfg._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    # The 4-bit layers bitsandbytes' own integration would build: NF4, double-quantized, bf16 compute.
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, lin in list(parent.named_children()):
                if isinstance(lin, torch.nn.Linear):
                    q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=False, compute_dtype=DTYPE,
                                          quant_type="nf4", compress_statistics=True, device="meta")
                    w = torch.randn(lin.out_features, lin.in_features, dtype=DTYPE, device=DEVICE) * 0.02
                    q.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4", compress_statistics=True)
                    setattr(parent, name, q.to(DEVICE))  # quantizes here
                    del w
    if hasattr(model.model, "rotary_emb"):  # rebuilt off meta: its constructor computes the frequencies
        model.model.rotary_emb = type(model.model.rotary_emb)(config=cfg).to(DEVICE)
    for name, mod in model.named_modules():  # what is still on meta: embeddings, norms, lm_head
        for pname, p in list(mod.named_parameters(recurse=False)):
            if p.is_meta:
                data = torch.ones(p.shape, dtype=DTYPE, device=DEVICE) if "norm" in name else \
                    torch.randn(p.shape, dtype=DTYPE, device=DEVICE) * 0.02
                setattr(mod, pname, torch.nn.Parameter(data, requires_grad=False))
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    if ON_GPU:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS,
                                                       task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=ON_GPU)
    g = torch.Generator(device="cpu").manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (1, SEQ), generator=g).to(DEVICE)

    def step():
        model(input_ids=tokens, labels=tokens).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return model, step


def test_qlora_train_step(benchmark, report):
    from engine.config import get_config

    flops = _flops_per_token(get_config(PRESET)) * SEQ
    rounds = pick(2, 5)
    _peak_reset()
    model, step = _ours()
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=1, iterations=1)
    sync()
    ours_s, ours_mb = benchmark.stats.stats.median, _peak_mb()
    del model, step
    _peak_reset()
    try:
        peer, peer_step = _theirs()
        peer_s = median_time(peer_step, warmup=1, iters=rounds)
        peer_mb = _peak_mb()
        del peer, peer_step
    except (ImportError, RuntimeError, AttributeError) as e:  # a missing CUDA build of bitsandbytes must not hide ours
        print(f"peer transformers+PEFT+bitsandbytes unavailable here: {type(e).__name__}: {e}")
        peer_s = peer_mb = None
    report(f"qlora_train_step[{PRESET},T={SEQ}]", ours_s, "tokens/s", SEQ / ours_s,
           peer="transformers+peft+bitsandbytes+sdpa", peer_time_s=peer_s, model_tflops=flops / ours_s / 1e12,
           peak_mb=ours_mb, peer_peak_mb=peer_mb,
           memory_ratio=(ours_mb / peer_mb) if ours_mb and peer_mb else None)
