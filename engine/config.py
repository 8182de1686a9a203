"""Model shapes: the `ModelArgs` dataclass and the named presets.

Every default lives here once. `get_config(name, **overrides)` resolves a preset or alias and raises on unknown
names or keys, listing the valid choices. `ModelArgs.from_hf(config_json)` reads a transformers `config.json`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

# Llama 3.1 long-context RoPE scaling, as published with the 3.1 / 3.3 checkpoints (3.2 uses factor 32).
LLAMA31_ROPE_SCALING = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 8192}


@dataclass
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 8
    vocab_size: int = 128256
    ffn_dim: int = 14336
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: dict | None = field(default_factory=lambda: dict(LLAMA31_ROPE_SCALING))
    max_seq_len: int = 131072
    tie_embeddings: bool = False
    head_dim: int | None = None  # None: dim // n_heads
    tokenizer: str = "llama3"  # "llama3" (tiktoken file from llama-models) or "chatml" (SmolLM2, from its GGUF)

    def __post_init__(self):
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")

    @classmethod
    def from_dict(cls, d: dict) -> ModelArgs:
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ValueError(f"unknown ModelArgs keys {unknown}; valid keys: {sorted(valid)}")
        return cls(**d)

    @classmethod
    def from_hf(cls, cfg: dict) -> ModelArgs:
        """From a transformers LlamaConfig dict (config.json)."""
        archs = cfg.get("architectures") or ["LlamaForCausalLM"]
        if cfg.get("model_type", "llama") != "llama" and "LlamaForCausalLM" not in archs:
            raise ValueError(f"only Llama-architecture checkpoints are supported, got model_type={cfg.get('model_type')}")
        scaling = cfg.get("rope_scaling") or (cfg.get("rope_parameters") or {})
        rope_type = scaling.get("rope_type", scaling.get("type"))
        theta = cfg.get("rope_theta", scaling.get("rope_theta", 10000.0))
        if rope_type in (None, "default"):
            scaling = None
        elif rope_type == "llama3":
            scaling = {k: float(scaling[k]) if k != "original_max_position_embeddings" else int(scaling[k])
                       for k in LLAMA31_ROPE_SCALING}
        else:
            raise ValueError(f"unsupported rope scaling type {rope_type!r} (supported: default, llama3)")
        return cls(
            dim=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"], n_heads=cfg["num_attention_heads"],
            n_kv_heads=cfg.get("num_key_value_heads", cfg["num_attention_heads"]), vocab_size=cfg["vocab_size"],
            ffn_dim=cfg["intermediate_size"], norm_eps=cfg.get("rms_norm_eps", 1e-5), rope_theta=float(theta),
            rope_scaling=scaling, max_seq_len=cfg.get("max_position_embeddings", 8192),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)), head_dim=cfg.get("head_dim"),
            tokenizer="llama3" if cfg["vocab_size"] >= 128000 else "chatml",
        )

    def to_hf(self) -> dict:
        """A transformers LlamaConfig dict, for saving merged checkpoints."""
        scaling = None if self.rope_scaling is None else {"rope_type": "llama3", **self.rope_scaling}
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": self.dim,
            "num_hidden_layers": self.n_layers, "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads, "vocab_size": self.vocab_size, "intermediate_size": self.ffn_dim,
            "rms_norm_eps": self.norm_eps, "rope_theta": self.rope_theta, "rope_scaling": scaling,
            "max_position_embeddings": self.max_seq_len, "tie_word_embeddings": self.tie_embeddings,
            "head_dim": self.head_dim, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
            "torch_dtype": "bfloat16",
        }

    def num_params(self) -> int:
        attn = self.dim * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
        mlp = 3 * self.dim * self.ffn_dim
        emb = self.vocab_size * self.dim * (1 if self.tie_embeddings else 2)
        return self.n_layers * (attn + mlp + 2 * self.dim) + emb + self.dim

    def asdict(self) -> dict:
        return asdict(self)


_LLAMA32_SCALING = {**LLAMA31_ROPE_SCALING, "factor": 32.0}

PRESETS: dict[str, ModelArgs] = {
    "llama-3.1-8b": ModelArgs(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336),
    "llama-3.3-70b": ModelArgs(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim=28672),
    "llama-3.1-405b": ModelArgs(dim=16384, n_layers=126, n_heads=128, n_kv_heads=8, ffn_dim=53248),
    "llama-3.2-1b": ModelArgs(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=8192,
                              rope_scaling=dict(_LLAMA32_SCALING), tie_embeddings=True),
    "llama-3.2-3b": ModelArgs(dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, ffn_dim=8192,
                              rope_scaling=dict(_LLAMA32_SCALING), tie_embeddings=True),
    "smollm2-135m": ModelArgs(dim=576, n_layers=30, n_heads=9, n_kv_heads=3, ffn_dim=1536, vocab_size=49152,
                              rope_theta=100000.0, rope_scaling=None, max_seq_len=8192, tie_embeddings=True,
                              tokenizer="chatml"),
    # Tiny Llama 3.1 (rope scaling on) for tests; KV heads divisible by 2 so tensor parallelism can split it. It
    # borrows SmolLM2's ChatML vocabulary (embedded, and 2.6x smaller than Llama 3's) so it can train on real rows.
    "debug": ModelArgs(dim=128, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=352, vocab_size=49152, max_seq_len=2048,
                       rope_scaling=dict(LLAMA31_ROPE_SCALING), tokenizer="chatml"),
}
ALIASES = {"8b": "llama-3.1-8b", "70b": "llama-3.3-70b", "405b": "llama-3.1-405b", "1b": "llama-3.2-1b",
           "3b": "llama-3.2-3b", "135m": "smollm2-135m"}


def resolve_name(name: str) -> str:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of: {', '.join(list(PRESETS) + list(ALIASES))}")
    return key


def get_config(name: str, **overrides) -> ModelArgs:
    """A copy of the named preset (or alias), with overrides; unknown names and keys raise."""
    args = PRESETS[resolve_name(name)]
    valid = {f.name for f in fields(ModelArgs)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown ModelArgs keys {unknown}; valid keys: {sorted(valid)}")
    return replace(args, rope_scaling=None if args.rope_scaling is None else dict(args.rope_scaling), **overrides)
