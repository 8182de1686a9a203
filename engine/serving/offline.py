"""Offline generation on the serving engine (as vLLM's `LLM` runs on its server's engine): the same scheduler,
runner, KV cache and sampler as `engine.serve`, stepped in the caller's thread until every prompt is answered.

    texts = engine.generate(model, tokenizer, prompts, max_new_tokens=64, temperature=0.0)
    python -m engine.generate --model smollm2-135m --prompt "What is the capital of France?"   (CLI: main below)

Each prompt is one request with its own sampling stream: with a `seed`, every prompt samples from a generator
seeded with it, so a prompt's answer does not depend on the other prompts of the call.
"""

from __future__ import annotations

import argparse
import sys

import torch

from ..loader import DTYPE_CHOICES, DTYPE_HELP
from ..structured import cli as structured_cli
from .runner import Runner
from .sampling import Params, RequestError
from .scheduler import Scheduler, Sequence

PREFILL_TOKENS = 4096  # prompt tokens per forward: nothing streams here, so chunks only bound activation memory


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


def _run(model, seqs: list[Sequence], tokenizer=None, stop_ids=()) -> list[Sequence]:
    """Every sequence to its end on a fresh runner; the first failure is raised once all others finished."""
    runner = Runner(model, model.args.max_seq_len)
    sched = Scheduler(runner, tokenizer, max_batch=len(seqs), max_prefill_tokens=PREFILL_TOKENS, stop_ids=stop_ids)
    for s in seqs:
        sched.submit(s)
    while any(s.finish is None for s in seqs):
        sched.step()
    for s in seqs:
        if s.error is not None:
            raise s.error
    return seqs


def generate_ids(model, prompt_ids: list[list[int]], max_new_tokens: int = 64, temperature: float = 0.0,
                 top_p: float = 1.0, stop_ids=(), stop_check=None, seed: int | None = None,
                 matchers=None) -> list[list[int]]:
    """New token ids per prompt (stop token excluded). `stop_check(i, ids) -> bool` ends sequence i early.
    `matchers`: per prompt an `engine.structured.Matcher` (grammar-constrained) or None."""
    params = Params(max_new_tokens, temperature, top_p, seed=seed)
    matchers = matchers or [None] * len(prompt_ids)
    seqs = [Sequence(p, params, stop_check=None if stop_check is None else (lambda ids, i=i: stop_check(i, ids)),
                     matcher=matchers[i])
            for i, p in enumerate(prompt_ids)]
    return [s.ids for s in _run(model, seqs, stop_ids=stop_ids)]


def generate(model, tokenizer, prompts, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
             stop: list[str] | None = None, seed: int | None = None, matchers=None) -> list[str]:
    """Texts generated for each prompt (a string, or a chat message list rendered with the chat template).

    Stops at the end-of-turn / end-of-text tokens, at any of the `stop` strings (cut from the text), or after
    `max_new_tokens`. `matchers`: per prompt an `engine.structured.Matcher` (grammar-constrained) or None.
    """
    single = isinstance(prompts, str) or (prompts and isinstance(prompts[0], dict))
    if single:
        prompts = [prompts]
        matchers = None if matchers is None else [matchers]
    params = Params(max_new_tokens, temperature, top_p, list(stop or []), seed)
    ids = encode_prompts(tokenizer, prompts)
    matchers = matchers or [None] * len(ids)
    seqs = [Sequence(p, params, matcher=m) for p, m in zip(ids, matchers)]
    texts = [s.text for s in _run(model, seqs, tokenizer, tokenizer.stop_ids)]
    return texts[0] if single else texts


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m engine.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="preset, HF checkpoint dir, or .gguf file")
    p.add_argument("--adapter", help="PEFT LoRA adapter directory to apply")
    p.add_argument("--prompt", action="append", required=True, help="user message (repeat for a batch)")
    p.add_argument("--system", help="system message")
    p.add_argument("--raw", action="store_true", help="send the prompt as raw text, without the chat template")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="below 1e-5: greedy")
    p.add_argument("--top-p", type=float, default=1.0, help="in [0, 1]; the top token always stays")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--random-init", action="store_true", help="random weights (throughput tests)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (under torchrun)")
    p.add_argument("--quantize", choices=["nf4"], default=None, help="NF4 base weights (QLoRA's format)")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help=DTYPE_HELP)
    structured_cli.add_arguments(p)
    a = p.parse_args(argv)
    try:  # the request rules of the server, checked before the model loads
        Params(a.max_new_tokens, a.temperature, a.top_p, seed=a.seed)
    except RequestError as e:
        print(f"error: {e} (--max-new-tokens, --temperature, --top-p, --seed)", file=sys.stderr)
        return 2
    try:
        import engine

        from ..loader import describe_dtype, resolve_dtype

        dtype = resolve_dtype(a.dtype)
        model, tok = engine.load(a.model, adapter=a.adapter, random_init=a.random_init, tp=a.tp,
                                 quantize=a.quantize, dtype=dtype)
        # said once the model loaded: a bad --model gets one line, not two
        print(describe_dtype(a.dtype, dtype), file=sys.stderr, flush=True)
        prompts = []
        for text in a.prompt:
            if a.raw:
                prompts.append(text)
            else:
                prompts.append(([{"role": "system", "content": a.system}] if a.system else [])
                               + [{"role": "user", "content": text}])
        constrained = structured_cli.requests(a, tok, model.args.vocab_size)
        with torch.inference_mode():
            if constrained is None:
                outs = generate(model, tok, prompts, a.max_new_tokens, a.temperature, a.top_p, seed=a.seed)
            else:  # the forced opening of a named tool_choice is part of the answer
                ids, matchers, prefixes = constrained
                new = generate_ids(model, ids, a.max_new_tokens, a.temperature, a.top_p, tok.stop_ids, seed=a.seed,
                                   matchers=matchers)
                outs = [pre + tok.decode(n) for pre, n in zip(prefixes, new)]
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from ..parallel.dist import is_rank0

    if is_rank0():
        for text in outs:
            print(text)
    return 0
