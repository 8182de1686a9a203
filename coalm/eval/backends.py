"""Where the evaluators' text comes from: a model loaded in this process, or an OpenAI-compatible endpoint.

Every benchmark generates through one small interface, so a task never knows which it talks to:

    backend = make_backend(args)                  # from the CLI flags (--model/--adapter, or --base-url)
    texts = backend.chat(conversations, max_new_tokens=128)   # OpenAI-style message lists in, assistant texts out

`chat` is greedy (temperature 0) and returns texts in input order. Tasks that need several model steps per item
(BFCL multi-turn) call it once per step with the batch of items still running.
"""

from __future__ import annotations

import os
import sys
from typing import Protocol


class Backend(Protocol):
    name: str

    def chat(self, conversations: list[list[dict]], max_new_tokens: int) -> list[str]:
        ...


class LocalBackend:
    """A model loaded with `engine.load`, generating in batches of `batch_size` conversations.

    Under torchrun the processes form a (dp, tp) grid: the `tp` ranks of a replica serve one model together and the
    batches of each `chat` call are dealt over the DP replicas; every rank gets all texts back, in input order."""

    def __init__(self, model: str, adapter: str | None = None, batch_size: int = 8, tp: int = 1, dtype: str = "auto",
                 **load_kwargs):
        import engine  # imported here: scoring saved outputs needs no torch
        from engine.loader import describe_dtype, resolve_dtype

        self.dtype = resolve_dtype(dtype)  # the rule engine.generate and engine.serve use
        load_kwargs["dtype"] = self.dtype
        self.name = model if adapter is None else f"{model}+{adapter}"
        self.batch_size = max(1, int(batch_size))
        self.mesh = None  # a single process: no grid
        if tp != 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            self.mesh = engine.init_mesh(tp)  # a world that tp does not divide fails here, before loading
            self.per_call = self.batch_size * self.mesh.dp  # conversations per chat() that keep every replica busy
            load_kwargs["tp"] = tp
        self.model, self.tokenizer = engine.load(model, adapter=adapter, **load_kwargs)
        print(describe_dtype(dtype, self.dtype), file=sys.stderr, flush=True)

    def chat(self, conversations: list[list[dict]], max_new_tokens: int) -> list[str]:
        import engine

        def batch(convs):
            return engine.generate(self.model, self.tokenizer, convs, max_new_tokens=max_new_tokens, temperature=0.0)

        if self.mesh is not None:
            return engine.map_data_parallel(batch, conversations, self.batch_size, self.mesh)
        return [text for i in range(0, len(conversations), self.batch_size)
                for text in batch(conversations[i:i + self.batch_size])]


def is_rank0() -> bool:
    """Whether this process writes reports (always, outside torchrun)."""
    import sys

    dist = sys.modules.get("torch.distributed")  # never imports torch: scoring saved outputs needs none
    return dist is None or not dist.is_initialized() or dist.get_rank() == 0


def load_kwargs(args) -> dict:
    """engine.load options given on the command line (only those set, so older engines keep working)."""
    out = {}
    if getattr(args, "quantize", None):
        out["quantize"] = args.quantize
    if getattr(args, "dtype", None):
        out["dtype"] = args.dtype
    return out


def make_backend(args) -> Backend:
    """--base-url -> an endpoint client (coalm.eval.endpoint); else --model loaded in this process."""
    if getattr(args, "base_url", None):
        from coalm.eval.endpoint import EndpointBackend

        return EndpointBackend(args.base_url, model_name=getattr(args, "model_name", None),
                               api_key=getattr(args, "api_key", None),
                               concurrency=getattr(args, "concurrency", 4))
    return LocalBackend(args.model, adapter=args.adapter, batch_size=args.batch_size, tp=getattr(args, "tp", 1),
                        **load_kwargs(args))
