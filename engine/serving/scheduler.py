"""Continuous batching with chunked prefill: the one decode loop of the engine (the server runs it on a background
thread; `engine.serving.offline.generate_ids` steps it in the caller's thread).

Each `step`: (1) admit waiting requests, first come first served, while a slot is free and the KV cache budget
holds what the request reserves (prompt + max_tokens); a request that does not fit waits in the queue; (2) one
packed forward: a decode token for every sequence whose prompt is in, plus prompt chunks of at most
`max_prefill_tokens` in all, shortest remaining prompt first, so a short request is not stuck behind a long prompt
and running requests keep streaming while it is prefilled (vLLM's chunked prefill); (3) sample a token for every
sequence that reached the end of its prompt; (4) free the slots of finished and cancelled sequences.

Isolation: sampling, stop checks and text decoding run per sequence; an exception there fails that sequence only
(`Sequence.error` holds it; `RequestError` means bad input, 400; anything else, 500). A forward that raises fails
the sequences it carried. Each sequence's new text goes to its `on_event(delta, finish)` callback; `finish` is None
while running, then "stop", "length", or "error" (the message in `delta`).
"""

from __future__ import annotations

import collections
import logging
import queue
import threading

import torch

from ..structured.matcher import mask_logits, prefetch_masks
from .sampling import Params, RequestError, bad_rows, new_generator, sample

__all__ = ["Params", "RequestError", "Scheduler", "Sequence", "TextTracker"]
log = logging.getLogger("engine.serve")
MAX_PREFILL_TOKENS = 256  # prompt tokens per step: bounds how much a long prompt delays the running streams


class Sequence:
    """One request inside the scheduler."""

    def __init__(self, prompt_ids: list[int], params: Params, on_event=None, prompt_text: str = "", stop_check=None,
                 matcher=None):
        self.prompt_ids, self.params, self.prompt_text = list(prompt_ids), params, prompt_text
        self.matcher = matcher  # engine.structured.Matcher: only tokens its grammar allows (None: unconstrained)
        self.on_event = on_event or (lambda delta, finish: None)
        self.stop_check = stop_check  # ids -> bool: ends the sequence (offline generation's stop strings)
        self.ids: list[int] = []
        self.text, self.sent = "", 0  # decoded text so far, and how much of it went out
        self.cancelled = False
        self.finish: str | None = None
        self.error: BaseException | None = None
        self.generator = None
        self.slot: int | None = None
        self.done_prompt = 0  # prompt tokens already in the cache
        self.next: int | None = None  # the sampled token the next decode step feeds in

    def emit(self, delta: str, finish: str | None = None):
        self.finish = finish
        if delta or finish:
            self.on_event(delta, finish)

    def fail(self, e: BaseException):
        if self.finish is None:
            self.error = e
            self.emit(f"{type(e).__name__}: {e}", "error")


class TextTracker:
    """Token ids -> new text to send: holds back a possibly incomplete UTF-8 character and any tail that could
    still become a stop string; finds stop strings. Without a tokenizer, only ids (offline `generate_ids`)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer

    def push(self, seq: Sequence, token: int, is_stop_token: bool) -> str | None:
        """Feed one token; returns the finish reason if the sequence ends ("stop" / "length") else None."""
        p = seq.params
        if is_stop_token:
            return self._finish(seq, seq.text, "stop")
        seq.ids.append(token)
        if seq.stop_check is not None and seq.stop_check(seq.ids):
            return self._finish(seq, seq.text, "stop")
        if self.tok is None:
            return self._finish(seq, "", "length") if len(seq.ids) >= p.max_tokens else None
        seq.text = self.tok.decode(seq.ids)
        for s in p.stop:
            i = seq.text.find(s, max(0, seq.sent - len(s)))
            if i >= 0:
                return self._finish(seq, seq.text[:i], "stop")
        if len(seq.ids) >= p.max_tokens:
            return self._finish(seq, seq.text, "length")
        end = len(seq.text.rstrip("\ufffd"))  # a multi-byte character split across tokens decodes to U+FFFD
        if p.stop:
            end = min(end, len(seq.text) - max(len(s) for s in p.stop) + 1)
        if end > seq.sent:
            seq.emit(seq.text[seq.sent:end])
            seq.sent = end
        return None

    def _finish(self, seq, text, reason):
        seq.text = text
        seq.emit(text[seq.sent:], reason)
        seq.sent = len(text)
        return reason


class Scheduler:
    def __init__(self, runner, tokenizer, max_batch: int, max_prefill_tokens: int = MAX_PREFILL_TOKENS,
                 stop_ids=None):
        if max_batch < 1 or max_prefill_tokens < 1:
            raise ValueError(f"max_batch and max_prefill_tokens must be >= 1, got {max_batch}, {max_prefill_tokens}")
        self.runner, self.tok, self.max_batch = runner, tokenizer, max_batch
        self.max_prefill_tokens = max_prefill_tokens
        self.text = TextTracker(tokenizer)
        self.stop_ids = set(tokenizer.stop_ids if stop_ids is None else stop_ids)
        self.waiting: queue.Queue[Sequence] = queue.Queue()
        self._head: collections.deque[Sequence] = collections.deque()  # taken from the queue, not admitted yet
        self.running: list[Sequence] = []
        self._free = list(range(max_batch))[::-1]
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="engine-serve-scheduler", daemon=True)
        self.steps = 0

    # ----------------------------------------------------------------------------------------------- public API
    def start(self):
        self.thread.start()
        return self

    def shutdown(self):
        self._stop.set()
        self.waiting.put(None)
        self.thread.join(timeout=10)
        if hasattr(self.runner, "release_followers"):  # tensor parallel: let the other ranks return
            self.runner.release_followers()

    def submit(self, seq: Sequence):
        """Queue a sequence; a request that can never run raises RequestError here, in the caller's thread."""
        cache = self.runner.cache
        n, vocab = len(seq.prompt_ids), self.runner.model.args.vocab_size
        if n == 0:
            raise RequestError("the prompt is empty")
        if not all(isinstance(t, int) and 0 <= t < vocab for t in seq.prompt_ids):
            raise RequestError(f"prompt token ids must be integers in [0, {vocab})")
        reserve = n + seq.params.max_tokens
        if reserve > cache.max_len:
            raise RequestError(f"the prompt is {n} tokens and max_tokens is {seq.params.max_tokens}, which exceeds "
                               f"the context of {cache.max_len} tokens")
        if cache.need_bytes(reserve) > cache.budget:
            raise RequestError(f"the prompt ({n} tokens) + max_tokens ({seq.params.max_tokens}) need "
                               f"{cache.need_bytes(reserve) / 2**20:.0f} MiB of KV cache, more than the budget of "
                               f"{cache.budget / 2**20:.0f} MiB (--kv-cache-memory)")
        seq.generator = new_generator(seq.params, self.runner.device)
        self.waiting.put(seq)

    def cancel(self, seq: Sequence):
        seq.cancelled = True  # read by the scheduler thread at its next step

    def stats(self) -> dict:
        c = self.runner.cache
        return {"running": len(self.running), "waiting": self.waiting.qsize() + len(self._head),
                "slots": self.max_batch, "decode_steps": self.steps, "kv_cache_reserved_bytes": c.used_bytes(),
                "kv_cache_budget_bytes": c.budget}

    def idle(self) -> bool:
        return not self.running and not self._head and self.waiting.empty()

    # ------------------------------------------------------------------------------------------------ the loop
    def _loop(self):
        while not self._stop.is_set():
            try:
                self.step(block=True)
            except Exception:  # never reached by a request's own failure (step isolates those): keep serving
                log.exception("scheduler step failed")

    def step(self, block: bool = False):
        """Admit, run one forward, sample, reap. With `block`, wait (briefly) for work when there is none."""
        self._admit(block and not self.running)
        self._reap()
        if not self.running:
            if block:
                self.runner.reset()  # idle (nothing admitted): also keeps tensor-parallel followers' collectives alive
            return
        segs, owners = self._plan()
        try:
            logits = self.runner.forward(segs)
        except Exception as e:  # the forward carried these sequences: they fail, the others wait their turn
            log.exception("forward failed")
            for s in owners:
                s.fail(e)
            self._reap()
            return
        # decode_steps counts forwards that decoded (prefill-only ones not): what /health has always reported
        self.steps += any(len(ids) == 1 and s.next is not None for (_, ids, _), s in zip(segs, owners))
        ready = [(i, s) for i, s in enumerate(owners) if s.done_prompt == len(s.prompt_ids)]
        if ready:
            rows = torch.tensor([i for i, _ in ready], device=logits.device)
            self._sample(logits.index_select(0, rows), [s for _, s in ready])
        self._reap()

    def _take(self, block: bool) -> Sequence | None:
        if self._head:
            return self._head[0]
        try:
            s = self.waiting.get(block=block, timeout=0.5 if block else None)
        except queue.Empty:
            return None
        if s is not None:
            self._head.append(s)
        return s

    def _admit(self, block: bool):
        cache = self.runner.cache
        while self._free:
            s = self._take(block)
            block = False
            if s is None:
                break
            if s.cancelled:
                self._head.popleft()
                continue
            reserve = len(s.prompt_ids) + s.params.max_tokens
            if not cache.fits(reserve):
                break  # first come, first served: it waits until running sequences free their reservations
            self._head.popleft()
            s.slot = self._free.pop()
            try:
                self.runner.open(s.slot, len(s.prompt_ids), reserve)
            except Exception as e:  # noqa: BLE001 - this request fails alone (its cache could not be allocated)
                s.fail(e)
                self.runner.close(s.slot)
                self._free.append(s.slot)
                continue
            self.running.append(s)

    def _plan(self):
        """This step's segments: every decode, then prompt chunks, shortest remaining prompt first."""
        segs, owners = [], []
        for s in self.running:
            if s.done_prompt == len(s.prompt_ids) and s.next is not None:
                pos = len(s.prompt_ids) + len(s.ids) - 1  # the sampled token goes after the prompt and the others
                segs.append((s.slot, [s.next], pos))
                owners.append(s)
        budget = self.max_prefill_tokens
        for s in sorted((s for s in self.running if s.done_prompt < len(s.prompt_ids)),
                        key=lambda s: len(s.prompt_ids) - s.done_prompt):
            if budget <= 0:
                break
            chunk = s.prompt_ids[s.done_prompt:s.done_prompt + budget]
            segs.append((s.slot, chunk, s.done_prompt))
            owners.append(s)
            s.done_prompt += len(chunk)
            budget -= len(chunk)
        return segs, owners

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]):
        matchers = [s.matcher if s.finish is None and not s.cancelled else None for s in seqs]
        if any(m is not None for m in matchers):  # grammar rows get -inf on every token they forbid; others untouched
            mask_logits(logits, matchers)
        greedy = logits.argmax(-1).tolist()  # one device sync for every greedy row
        bad = bad_rows(logits)
        for i, s in enumerate(seqs):
            try:
                if s.cancelled or s.finish is not None:
                    continue
                tok = greedy[i] if s.params.greedy and not bad[i] else sample(logits[i], s.params, s.generator)
                s.next = tok
                stop = tok in self.stop_ids
                if matchers[i] is not None and not stop and not matchers[i].accept(tok):
                    stop = True  # the grammar admitted nothing (its row allowed only an end token): end with the text
                self.text.push(s, tok, stop)
                if matchers[i] is not None and s.finish is None and matchers[i].is_terminated:
                    self.text.push(s, tok, True)  # the grammar is complete: only an end token could follow
            except Exception as e:  # noqa: BLE001 - whatever it is, it fails this sequence only
                log.warning("sequence failed: %s: %s", type(e).__name__, e)
                s.fail(e)
        if any(m is not None for m in matchers):  # the next step's masks, computed while its forward runs
            prefetch_masks([s.matcher if s.finish is None and not s.cancelled else None for s in seqs],
                           logits.shape[-1])

    def _reap(self):
        keep = []
        for s in self.running:
            if s.finish is None and not s.cancelled:
                keep.append(s)
                continue
            self.runner.close(s.slot)
            self._free.append(s.slot)
        self.running = keep
