"""Where the evaluators' text comes from: a model loaded in this process, or an OpenAI-compatible endpoint.

Every benchmark generates through one small interface, so a task never knows which it talks to:

    backend = make_backend(model, base_url, run_options, model_options)   # coalm.eval.options
    texts = backend.chat(conversations, max_new_tokens=128)   # OpenAI-style message lists in, assistant texts out

`chat` is greedy (temperature 0) and returns texts in input order; an endpoint puts an `ItemError` in place of the
text of a conversation whose request failed. Tasks that need several model steps per item
(BFCL multi-turn) call it once per step with the batch of items still running.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Protocol

from coalm.eval.base import EvalError, ItemError  # noqa: F401 - ItemError: what chat() may return


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

    def chat(self, conversations: list[list[dict]], max_new_tokens: int, constraints=None) -> list[str]:
        """`constraints`: per conversation None or {"tools", "tool_choice", "fmt"} (grammar-constrained answer)."""
        import engine

        if constraints is not None:
            if self.mesh is not None:  # whole batches dealt over the DP replicas; a replica's TP ranks run each alike
                return engine.map_data_parallel(
                    lambda chunk: _constrained_chat(self, [c for c, _ in chunk], max_new_tokens, [k for _, k in chunk]),
                    list(zip(conversations, constraints)), self.batch_size, self.mesh)
            return _constrained_chat(self, conversations, max_new_tokens, constraints)

        def batch(convs):
            return engine.generate(self.model, self.tokenizer, convs, max_new_tokens=max_new_tokens, temperature=0.0)

        if self.mesh is not None:
            return engine.map_data_parallel(batch, conversations, self.batch_size, self.mesh)
        return [text for i in range(0, len(conversations), self.batch_size)
                for text in batch(conversations[i:i + self.batch_size])]


def _constrained_chat(backend, conversations, max_new_tokens, constraints) -> list[str]:
    import engine
    from engine.structured import GrammarCompiler, GrammarError, json_grammar

    if getattr(backend, "_compiler", None) is None:
        backend._compiler = GrammarCompiler(backend.tokenizer, backend.model.args.vocab_size)
    out = []
    for i in range(0, len(conversations), backend.batch_size):
        convs, cons = conversations[i:i + backend.batch_size], constraints[i:i + backend.batch_size]
        matchers = []
        for c in cons:
            try:
                if c is None:
                    matchers.append(None)
                elif "json_schema" in c:  # an answer of one JSON value after a fixed prefix (MultiWOZ DST)
                    matchers.append(backend._compiler.matcher(json_grammar(c["json_schema"], True, c.get("prefix", ""))))
                else:
                    matchers.append(backend._compiler.for_request(tools=c["tools"], fmt=c.get("fmt", "la"),
                                                                  tool_choice=c.get("tool_choice", "auto")))
            except GrammarError as e:  # this item decodes freely; the others keep their grammars
                logging.getLogger("coalm.eval").warning("constrained decoding off for one item: %s", e)
                matchers.append(None)
        out += engine.generate(backend.model, backend.tokenizer, convs, max_new_tokens=max_new_tokens,
                               temperature=0.0, matchers=matchers)
    return out


def is_rank0() -> bool:
    """Whether this process writes reports (always, outside torchrun)."""
    import sys

    dist = sys.modules.get("torch.distributed")  # never imports torch: scoring saved outputs needs none
    return dist is None or not dist.is_initialized() or dist.get_rank() == 0


def make_backend(model: str | None = None, base_url: str | None = None, run=None, model_options=None) -> Backend:
    """`base_url` -> an endpoint client (coalm.eval.endpoint); else `model` loaded in this process.
    `run`: coalm.eval.options.RunOptions; `model_options`: coalm.eval.options.ModelOptions (defaults when None)."""
    from coalm.eval.options import ModelOptions, RunOptions

    run = run or RunOptions()
    if base_url:
        from coalm.eval.endpoint import EndpointBackend

        return EndpointBackend(base_url, model_name=run.model_name, api_key=run.api_key, concurrency=run.concurrency,
                               timeout=run.timeout, retries=run.retries, backoff=run.retry_backoff,
                               max_chars=run.max_response_chars)
    if not model:
        raise EvalError("give a model, an endpoint (base_url) or saved responses")
    m = model_options or ModelOptions()
    kwargs = {"quantize": m.quantize} if m.quantize else {}
    return LocalBackend(model, adapter=m.adapter, batch_size=run.batch_size, tp=m.tp, dtype=m.dtype, **kwargs)
