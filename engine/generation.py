"""Generation with a KV cache: greedy, temperature and top-p sampling, stop tokens and stop strings, and a batch of
prompts of different lengths (packed prefill, then one token per sequence per step).

    python -m engine.generate --model smollm2-135m --prompt "What is the capital of France?"   (CLI: main below)
"""

from __future__ import annotations

import argparse
import sys

import torch

from .loader import DTYPE_CHOICES, DTYPE_HELP
from .structured.matcher import mask_logits


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generator) -> torch.Tensor:
    """logits (B, V) -> next token ids (B,)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        choice = torch.multinomial(sorted_p, 1, generator=generator)
        return idx.gather(-1, choice).squeeze(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def encode_prompts(tokenizer, prompts) -> list[list[int]]:
    """Strings are raw text (the format's BOS is added); message lists go through the chat template."""
    out = []
    for p in prompts:
        if isinstance(p, str):
            out.append(tokenizer.encode(p, bos=True))
        elif isinstance(p, (list, tuple)):
            out.append(tokenizer.encode(tokenizer.apply_chat_template(list(p), add_generation_prompt=True)))
        else:
            raise TypeError(f"a prompt must be a string or a list of chat messages, got {type(p).__name__}")
        if not out[-1]:
            raise ValueError("empty prompt")
    return out


@torch.inference_mode()
def generate_ids(model, prompt_ids: list[list[int]], max_new_tokens: int = 64, temperature: float = 0.0,
                 top_p: float = 1.0, stop_ids=(), stop_check=None, seed: int | None = None,
                 matchers=None) -> list[list[int]]:
    """New token ids per prompt (stop token excluded). `stop_check(i, ids) -> bool` ends sequence i early.
    `matchers`: per prompt an `engine.structured.Matcher` or None; a matcher's sequence only gets tokens its grammar
    allows (the logits are masked before greedy or sampled choice, and the matcher advances with the token)."""
    device = model.embed_tokens.weight.device
    B = len(prompt_ids)
    lens = torch.tensor([len(p) for p in prompt_ids], dtype=torch.int32, device=device)
    limit = model.args.max_seq_len
    if int(lens.max()) + max_new_tokens > limit:
        raise ValueError(f"prompt of {int(lens.max())} tokens + {max_new_tokens} new tokens exceeds the model's "
                         f"context of {limit}")
    cache = model.new_cache(B, int(lens.max()) + max_new_tokens)
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    stop_ids = set(stop_ids)

    # prefill: all prompts packed into one row, attention confined to each prompt
    tokens = torch.tensor([t for p in prompt_ids for t in p], device=device)[None]  # (1, total)
    cu = torch.zeros(B + 1, dtype=torch.int32, device=device)
    cu[1:] = lens.cumsum(0)
    positions = torch.cat([torch.arange(n, device=device) for n in lens.tolist()])[None]  # (1, total)
    rows = torch.repeat_interleave(torch.arange(B, device=device), lens.long())
    cache.begin(positions, rows)
    logits = model(tokens, positions, cu_seqlens=cu, max_seqlen=int(lens.max()), cache=cache, last_only=True)[0]
    cache.lengths = lens.clone()

    out: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    rows = torch.arange(B, device=device)
    for step in range(max_new_tokens):
        if matchers is not None:
            mask_logits(logits, [None if done[i] else m for i, m in enumerate(matchers)])
        nxt = _sample(logits, temperature, top_p, generator)  # (B,)
        for i, t in enumerate(nxt.tolist()):  # one device sync per step, then plain Python
            if done[i]:
                continue
            if t in stop_ids:
                done[i] = True
                continue
            if matchers is not None and matchers[i] is not None and not matchers[i].accept(t):
                done[i] = True  # cannot happen under the mask; never loop on a rejected token
                continue
            out[i].append(t)
            done[i] = stop_check is not None and stop_check(i, out[i])
        if all(done) or step == max_new_tokens - 1:
            break
        pos = cache.lengths.long()[:, None]  # (B, 1): each sequence's next position
        cache.begin(pos, rows)
        logits = model(nxt[:, None], pos, cache=cache)[:, -1]
        cache.lengths += 1
    return out


def generate(model, tokenizer, prompts, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
             stop: list[str] | None = None, seed: int | None = None, matchers=None) -> list[str]:
    """Texts generated for each prompt (a string, or a chat message list rendered with the chat template).

    Stops at the end-of-turn / end-of-text tokens, at any of the `stop` strings (cut from the text), or after
    `max_new_tokens`. `matchers`: per prompt an `engine.structured.Matcher` (grammar-constrained) or None.
    """
    single = isinstance(prompts, str) or (prompts and isinstance(prompts[0], dict))
    if single:
        prompts = [prompts]
    ids = encode_prompts(tokenizer, prompts)
    check = None
    if stop:
        def check(i, toks):  # decode only the tail: a stop string spans at most a few tokens
            return any(s in tokenizer.decode(toks[-(len(s) + 8):]) for s in stop)
    new = generate_ids(model, ids, max_new_tokens, temperature, top_p, tokenizer.stop_ids, check, seed,
                       matchers=matchers)
    texts = []
    for toks in new:
        text = tokenizer.decode(toks)
        for s in stop or ():
            if s in text:
                text = text[: text.index(s)]
        texts.append(text)
    return texts[0] if single else texts


def check_sampling(max_new_tokens: int, temperature: float, top_p: float) -> str | None:
    """The reason CLI sampling settings are invalid, or None (checked before the model loads)."""
    if max_new_tokens < 1:
        return f"--max-new-tokens must be >= 1, got {max_new_tokens}"
    if not temperature >= 0:
        return f"--temperature must be >= 0, got {temperature}"
    if not 0 < top_p <= 1:
        return f"--top-p must be in (0, 1], got {top_p} (1 keeps every token)"
    return None


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m engine.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="preset, HF checkpoint dir, or .gguf file")
    p.add_argument("--adapter", help="PEFT LoRA adapter directory to apply")
    p.add_argument("--prompt", action="append", required=True, help="user message (repeat for a batch)")
    p.add_argument("--system", help="system message")
    p.add_argument("--raw", action="store_true", help="send the prompt as raw text, without the chat template")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--random-init", action="store_true", help="random weights (throughput tests)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (under torchrun)")
    p.add_argument("--quantize", choices=["nf4"], default=None, help="NF4 base weights (QLoRA's format)")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help=DTYPE_HELP)
    a = p.parse_args(argv)
    bad = check_sampling(a.max_new_tokens, a.temperature, a.top_p)
    if bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    try:
        import engine

        from .loader import resolve_dtype

        model, tok = engine.load(a.model, adapter=a.adapter, random_init=a.random_init, tp=a.tp,
                                 quantize=a.quantize, dtype=resolve_dtype(a.dtype, announce=True))
        prompts = []
        for text in a.prompt:
            if a.raw:
                prompts.append(text)
            else:
                prompts.append(([{"role": "system", "content": a.system}] if a.system else [])
                               + [{"role": "user", "content": text}])
        outs = generate(model, tok, prompts, a.max_new_tokens, a.temperature, a.top_p, seed=a.seed)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from .parallel.dist import is_rank0

    if is_rank0():
        for text in outs:
            print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
