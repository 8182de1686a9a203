"""The Llama 3.x transformer, top to bottom: RMSNorm, RoPE (with Llama 3.1 scaling), GQA attention, SwiGLU MLP.

Module names follow Hugging Face's LlamaForCausalLM (`layers.N.self_attn.q_proj`, `mlp.gate_proj`, ...) so that
checkpoints load by name and LoRA adapters save with the names PEFT expects. Build on the meta device and assign
weights at load (`engine.weights`); constructors never touch a device. Every hot op goes through `coalm_kernels`, which
runs Triton on CUDA tensors and plain torch (SDPA for attention) on CPU tensors.

Three ways to run attention, chosen by the arguments of `forward`:
- (B, T) tokens: causal attention within each row;
- packed (1, total) tokens with `cu_seqlens`: causal within each packed sequence, never across (training);
- packed (1, total) tokens with a `cache` (`engine.serving.cache.KVCache`, the engine's one KV cache): each packed
  segment (a decode token or a prompt chunk) is written into its sequence's slot and attends to that slot's filled
  prefix; `cache.attend` does both, so the model knows nothing of slots.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from coalm_kernels.cross_entropy import fused_linear_cross_entropy
from coalm_kernels.flash_attn import flash_attention
from coalm_kernels.rms_norm import rms_norm
from coalm_kernels.rope import apply_rope, rope_cos_sin, rope_frequencies
from coalm_kernels.swiglu import swiglu

from .config import ModelArgs


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.q_proj = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.k_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.v_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.o_proj = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)

    def forward(self, x, cos, sin, cu_seqlens=None, max_seqlen=None, cache=None):
        B, T, _ = x.shape
        # tensor parallelism shards the heads: read the local counts from the (possibly sharded) projections
        q = self.q_proj(x).view(B, T, -1, self.head_dim)  # (B, T, Hq, D)
        k = self.k_proj(x).view(B, T, -1, self.head_dim)  # (B, T, Hkv, D)
        v = self.v_proj(x).view(B, T, -1, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:  # generation: each segment against its own cached prefix
            o = cache.attend(self.layer_id, q, k, v)
        elif cu_seqlens is not None:  # packed (1, total) training: attend within each sequence only
            o = flash_attention(q[0], k[0], v[0], causal=True, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)[None]
        else:
            o = flash_attention(q, k, v, causal=True)
        return self.o_proj(o.reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gate_proj = nn.Linear(args.dim, args.ffn_dim, bias=False)
        self.up_proj = nn.Linear(args.dim, args.ffn_dim, bias=False)
        self.down_proj = nn.Linear(args.ffn_dim, args.dim, bias=False)

    def forward(self, x):
        return self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x)))


class Block(nn.Module):
    def __init__(self, args: ModelArgs, layer_id: int):
        super().__init__()
        self.input_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.self_attn = Attention(args, layer_id)
        self.post_attention_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.mlp = MLP(args)

    def forward(self, x, cos, sin, cu_seqlens=None, max_seqlen=None, cache=None):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, cu_seqlens, max_seqlen, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args, i) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.lm_head = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.gradient_checkpointing = False
        # RoPE inverse frequencies: computed by init_buffers() once the model has a real device.
        self.register_buffer("inv_freq", torch.empty(args.head_dim // 2), persistent=False)

    @torch.no_grad()
    def init_buffers(self, device=None):
        a = self.args
        device = device or self.embed_tokens.weight.device
        self.inv_freq = rope_frequencies(a.head_dim, a.rope_theta, a.rope_scaling).to(device=device,
                                                                                      dtype=torch.float32)
        return self

    @torch.no_grad()
    def init_weights(self, std: float = 0.02, generator: torch.Generator | None = None):
        """Random weights (for --random-init throughput runs and tests): normal(0, std), norms at one."""
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, std, generator=generator)
        return self.init_buffers()

    def hidden_states(self, tokens, positions=None, cu_seqlens=None, max_seqlen=None, cache=None):
        """Final-norm hidden states (B, T, dim). `positions` (B, T) default to 0..T-1 per row."""
        B, T = tokens.shape
        if positions is None:
            positions = torch.arange(T, device=tokens.device).expand(B, T)
        cos, sin = rope_cos_sin(positions, self.inv_freq)  # (B, T, head_dim // 2)
        h = self.embed_tokens(tokens)  # (B, T, dim)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                h = torch.utils.checkpoint.checkpoint(layer, h, cos, sin, cu_seqlens, max_seqlen, cache,
                                                      use_reentrant=False)
            else:
                h = layer(h, cos, sin, cu_seqlens, max_seqlen, cache)
        return self.norm(h)

    def forward(self, tokens, positions=None, cu_seqlens=None, max_seqlen=None, cache=None, last_only=False):
        """Logits (B, T, vocab) in float32; with last_only, only each packed sequence's / row's last position."""
        h = self.hidden_states(tokens, positions, cu_seqlens, max_seqlen, cache)
        if last_only:
            h = h[:, cu_seqlens[1:].long() - 1] if cu_seqlens is not None else h[:, -1:]
        return self.lm_head(h).float()

    def loss(self, input_ids, labels, position_ids=None, cu_seqlens=None, max_seqlen=None):
        """Mean next-token cross-entropy over labels != -100; labels are aligned with input_ids (shifted here).

        The arguments are an `engine.data.Batch`'s fields, by the same names. With packed sequences, the shift never
        crosses a boundary: the last token of each sequence predicts nothing.
        """
        targets = F.pad(labels[:, 1:], (0, 1), value=-100)
        if cu_seqlens is not None:
            targets[:, cu_seqlens[1:].long() - 1] = -100
        h = self.hidden_states(input_ids, position_ids, cu_seqlens, max_seqlen)
        return fused_linear_cross_entropy(h, self.lm_head.weight, targets)


def build_model(args: ModelArgs) -> Transformer:
    """The model on the meta device: no memory, no device calls; weights come from `engine.weights`."""
    with torch.device("meta"):
        return Transformer(args)


# ------------------------------------------------------------------------------ Hugging Face and PEFT names (the one map)
PEFT_PREFIX = "base_model.model."  # PEFT wraps the HF model twice: PeftModel.base_model (LoraModel).model


def ours_to_hf(name: str) -> str:
    """`layers.0.mlp.up_proj.weight` -> `model.layers.0.mlp.up_proj.weight` (LlamaForCausalLM's names)."""
    return name if name.startswith("lm_head.") else "model." + name


def hf_to_ours(name: str) -> str:
    return name.removeprefix("model.")


def peft_lora_name(module: str, factor: str) -> str:
    """(`layers.0.self_attn.q_proj`, `lora_A`) -> `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`."""
    return f"{PEFT_PREFIX}{ours_to_hf(module)}.{factor}.weight"


def parse_peft_lora_name(key: str) -> tuple[str, str] | None:
    """The inverse of peft_lora_name, also reading PEFT's in-memory names (`.lora_A.default.weight`); None if `key`
    is not a LoRA factor."""
    core = key.removeprefix(PEFT_PREFIX).removesuffix(".weight").removesuffix(".default")
    module, _, factor = core.rpartition(".")
    if factor not in ("lora_A", "lora_B") or not key.endswith(".weight"):
        return None
    return hf_to_ours(module), factor
