"""Continuous batching: one background thread runs the model; requests join the running batch at the next step and
leave it when they finish or are cancelled.

Each loop iteration: (1) admit waiting requests into free slots with one packed prefill (their first token comes
from it); (2) one decode step for every running sequence; (3) drop finished and cancelled sequences, moving the
last running slot into each hole so the running set stays 0..n-1 (see `runner.SlotCache`). Tokens are turned into
text here (stop strings need the text), and each sequence's new text goes to its `on_event(delta, finish)` callback,
which the server forwards to the request's asyncio queue. `finish` is None while running, then "stop", "length",
or "error" (the message in `delta`).

Sampling is per sequence (its own temperature, top-p and seeded generator), so a request's tokens do not depend on
which other requests share its steps; greedy rows take one argmax for the whole batch.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field

import torch

from ..generation import _sample

log = logging.getLogger("engine.serve")


@dataclass
class Params:
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


class Sequence:
    """One request inside the scheduler."""

    def __init__(self, prompt_ids: list[int], params: Params, on_event, prompt_text: str = ""):
        self.prompt_ids, self.params, self.on_event, self.prompt_text = prompt_ids, params, on_event, prompt_text
        self.ids: list[int] = []
        self.text, self.sent = "", 0  # decoded text so far, and how much of it went out
        self.cancelled = False
        self.finish: str | None = None
        self.generator = None

    def emit(self, delta: str, finish: str | None = None):
        self.finish = finish
        if delta or finish:
            self.on_event(delta, finish)


class TextTracker:
    """Token ids -> new text to send: holds back a possibly incomplete UTF-8 character and any tail that could
    still become a stop string; finds stop strings."""

    def __init__(self, tokenizer):
        self.tok = tokenizer

    def push(self, seq: Sequence, token: int, is_stop_token: bool) -> str | None:
        """Feed one token; returns the finish reason if the sequence ends ("stop" / "length") else None."""
        p = seq.params
        if is_stop_token:
            return self._finish(seq, seq.text, "stop")
        seq.ids.append(token)
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
        seq.emit(text[seq.sent:], reason)
        seq.sent = len(text)
        return reason


class Scheduler:
    def __init__(self, runner, tokenizer, max_batch: int, max_prefill_tokens: int = 4096):
        self.runner, self.tok, self.max_batch = runner, tokenizer, max_batch
        self.max_prefill_tokens = max_prefill_tokens
        self.text = TextTracker(tokenizer)
        self.stop_ids = set(tokenizer.stop_ids)
        self.waiting: queue.Queue[Sequence] = queue.Queue()
        self.running: list[Sequence] = []  # running[i] occupies cache slot i
        self.last: list[int] = []  # the token each running sequence feeds into the next step
        self._held: Sequence | None = None  # taken from the queue but not admitted yet (prefill budget)
        self._admitting: list[Sequence] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="engine-serve-scheduler", daemon=True)
        self.steps = 0

    def start(self):
        self.thread.start()
        return self

    def shutdown(self):
        self._stop.set()
        self.waiting.put(None)
        self.thread.join(timeout=10)
        if hasattr(self.runner, "close"):  # tensor parallel: release the follower ranks
            self.runner.close()

    def submit(self, seq: Sequence):
        if seq.params.seed is not None:
            seq.generator = torch.Generator(device=self.runner.device).manual_seed(seq.params.seed)
        self.waiting.put(seq)

    def cancel(self, seq: Sequence):
        seq.cancelled = True  # read by the scheduler thread at its next step

    def stats(self) -> dict:
        return {"running": len(self.running), "waiting": self.waiting.qsize() + (self._held is not None),
                "slots": self.max_batch, "decode_steps": self.steps}

    def _loop(self):
        while not self._stop.is_set():
            try:
                self._admit(block=not self.running)
                self._reap()  # a sequence can end on its first token
                if self.running:
                    self._decode()
                self._reap()
            except Exception as e:  # a failed step fails its sequences, not the server
                log.exception("scheduler step failed")
                for s in self.running + self._admitting:
                    if s.finish is None:
                        s.emit(f"{type(e).__name__}: {e}", "error")
                self.running, self.last, self._admitting = [], [], []
                self.runner.reset()

    def _take(self, block: bool) -> Sequence | None:
        if self._held is not None:
            s, self._held = self._held, None
            return s
        try:
            return self.waiting.get(block=block, timeout=0.5 if block else None)
        except queue.Empty:
            return None

    def _admit(self, block: bool):
        new, budget = [], self.max_prefill_tokens
        while len(self.running) + len(new) < self.max_batch:
            s = self._take(block and not new)
            if s is None:
                break
            if s.cancelled:
                continue
            if new and len(s.prompt_ids) > budget:
                self._held = s  # next step: one long prefill must not stall the running batch forever
                break
            new.append(s)
            budget -= len(s.prompt_ids)
        if not new:
            if not self.running:
                self.runner.reset()  # idle: give back cache memory grown for long sequences
            return
        slots = list(range(len(self.running), len(self.running) + len(new)))
        self._admitting = new  # failed together if the prefill raises
        logits = self.runner.prefill([s.prompt_ids for s in new], slots)
        self.running += new
        self._admitting = []
        self.last += self._sample(logits, new)
        self._push(slots, new)

    def _decode(self):
        logits = self.runner.decode(self.last)
        self.steps += 1
        self.last = self._sample(logits, self.running)
        self._push(range(len(self.running)), self.running)

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        greedy = logits.argmax(-1).tolist()  # one device sync for every greedy row
        return [g if s.params.temperature <= 0 else
                int(_sample(logits[i:i + 1], s.params.temperature, s.params.top_p, s.generator)[0])
                for i, (g, s) in enumerate(zip(greedy, seqs))]

    def _push(self, slots, seqs):
        for i, s in zip(slots, seqs):
            if not s.cancelled and s.finish is None:
                self.text.push(s, self.last[i], self.last[i] in self.stop_ids)

    def _reap(self):
        i = 0
        while i < len(self.running):
            s = self.running[i]
            if s.finish is None and not s.cancelled:
                i += 1
                continue
            last = len(self.running) - 1
            if i != last:  # keep the running slots contiguous: the last one fills the hole
                self.runner.move(last, i)
                self.running[i], self.last[i] = self.running[last], self.last[last]
            self.running.pop()
            self.last.pop()
