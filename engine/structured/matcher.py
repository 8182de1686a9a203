"""Per-sequence grammar state and the batched logits mask.

A `Matcher` wraps one llguidance matcher for one sequence: fill its token bitmask, mask a logits row, accept the chosen
token, and say when it is done. `mask_logits(logits, matchers)` masks a whole decode step: rows whose matcher is None
are not touched (unconstrained sequences pay nothing), the constrained rows' bitmasks are computed together by
llguidance's executor and applied in one masked fill.

A grammar that admits no token at some step (a schema that only llguidance finds unsatisfiable, or an internal limit)
never stalls a sequence: its row then allows only the end-of-turn token, so the sequence ends with finish_reason
"stop" and the text so far, and the event is logged.

The bit unpacking is written here (numpy's unpackbits) rather than taken from `llguidance.torch`, whose
`apply_token_bitmask_inplace` is wrapped in `torch.compile` (a compile on first use, and a C++ toolchain on CPU).
"""

from __future__ import annotations

import concurrent.futures
import logging

import llguidance
import numpy as np
import torch

log = logging.getLogger(__name__)
_executor = None
_prefetcher = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar-mask")


def _get_executor() -> llguidance.LLExecutor:
    global _executor
    if _executor is None:
        _executor = llguidance.LLExecutor(num_threads=max(1, torch.get_num_threads()))
    return _executor


def bitmask_words(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(R, W) CPU int32 bitmask (bit j of word w = token 32w+j, little-endian words) -> (R, vocab_size) bool allowed.
    numpy's unpackbits: 1.5-2x faster here than shifting an (R, W, 32) int32 tensor."""
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=-1, bitorder="little")[:, :vocab_size]  # (R, V) 0/1
    return torch.from_numpy(bits.view(np.bool_))


class Matcher:
    """The grammar state of one sequence. `stop_ids`: the end tokens allowed when the grammar is complete (and,
    when it admits nothing, the one forced to end the sequence)."""

    def __init__(self, ll: llguidance.LLMatcher, stop_ids):
        self._ll = ll
        self.stop_ids = list(stop_ids)
        self.dead = False  # the grammar admitted no token: the sequence was made to stop
        self._pending = None  # (future, bitmask, row): this state's mask, computed ahead by `prefetch_masks`

    @property
    def ll(self) -> llguidance.LLMatcher:
        """The llguidance matcher, once no prefetch is using it (it is not safe to share between threads)."""
        if self._pending is not None:
            self._pending[0].result()
        return self._ll

    def _take_prefetched(self, words: int) -> torch.Tensor | None:
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        future, bitmask, row = pending
        future.result()
        return bitmask[row] if bitmask.shape[1] == words else None

    @property
    def is_terminated(self) -> bool:
        """True when the grammar is complete (only an end token may follow), failed, or admitted nothing."""
        return self.dead or self.ll.is_stopped() or self.ll.is_error()

    @property
    def is_accepting(self) -> bool:
        """True when the text so far is a whole value of the grammar (an end token may follow)."""
        return self.ll.is_accepting()

    @property
    def error(self) -> str:
        return self.ll.get_error()

    def fill_bitmask(self, bitmask: torch.Tensor, row: int = 0) -> None:
        """Write this sequence's allowed-token bits into row `row` of a CPU int32 (R, W) bitmask."""
        if bitmask.dtype != torch.int32 or bitmask.device.type != "cpu" or not bitmask.is_contiguous():
            raise ValueError("the bitmask must be a contiguous CPU int32 tensor")
        v = bitmask[row]
        self.ll.unsafe_compute_mask_ptr(v.data_ptr(), v.numel() * 4)

    def apply(self, logits: torch.Tensor) -> None:
        """Mask one logits row (V,) in place: disallowed tokens get -inf."""
        mask_logits(logits[None], [self])

    def accept(self, token: int) -> bool:
        """Advance with the chosen token; False (and the matcher in its error state) when the grammar forbids it."""
        self._take_prefetched(0)  # a mask computed ahead belongs to the state this token leaves
        if token in self.stop_ids and (self.ll.is_accepting() or self.ll.is_stopped()):
            return True
        ok = self.ll.consume_token(int(token))
        if not ok:
            log.warning("structured: token %d rejected by the grammar: %s", token, self.ll.get_error()[:200])
        return ok

    def accept_text(self, token_ids) -> bool:
        """Advance over tokens that are already part of the output (a forced prefix such as a named call's head)."""
        self._take_prefetched(0)
        return self.ll.consume_tokens([int(t) for t in token_ids])


def mask_logits(logits: torch.Tensor, matchers) -> None:
    """Mask the rows of `logits` (B, V) whose matcher is not None, in place; other rows are left as they are."""
    rows = [i for i, m in enumerate(matchers) if m is not None]
    if not rows:
        return
    vocab = logits.shape[-1]
    words = bitmask_words(vocab)
    bitmask = torch.empty((len(rows), words), dtype=torch.int32)
    ms = [matchers[i] for i in rows]
    todo = []
    for k, m in enumerate(ms):  # masks computed during the forward (prefetch_masks) are ready; the rest now
        ready = m._take_prefetched(words)
        if ready is not None:
            bitmask[k] = ready
        else:
            todo.append((m.ll, k))
    if todo:
        _get_executor().unsafe_compute_mask_ptr(todo, bitmask.data_ptr(), words * 4, len(rows))
    allowed = unpack_bitmask(bitmask, vocab)  # (R, V)
    for k, m in enumerate(ms):
        if m.dead or not bool(allowed[k].any()):
            if not m.dead:
                log.warning("structured: the grammar admits no token (%s); ending the sequence with stop",
                            m.error.splitlines()[0][:200] if m.error else "no continuation")
            m.dead = True
            allowed[k] = False
            allowed[k, m.stop_ids[0]] = True
    allowed = allowed.to(logits.device, non_blocking=True)
    if len(rows) == logits.shape[0]:  # every row constrained: mask in place, no gather/scatter
        logits.masked_fill_(~allowed, float("-inf"))
    else:
        idx = torch.tensor(rows, device=logits.device)
        logits[idx] = logits[idx].masked_fill(~allowed, float("-inf"))


def prefetch_masks(matchers, vocab_size: int) -> None:
    """Start computing the next step's masks of `matchers` (None entries skipped) in a worker thread, so that they
    are ready when the model's forward, which runs meanwhile, returns (llguidance drops the GIL, as torch does).
    `mask_logits` then takes them; `accept` and every other use of a matcher wait for its prefetch first."""
    ms = [m for m in matchers if m is not None and not m.dead and m._pending is None]
    if not ms:
        return
    words = bitmask_words(vocab_size)
    bitmask = torch.empty((len(ms), words), dtype=torch.int32)
    lls = [(m._ll, k) for k, m in enumerate(ms)]
    future = _prefetcher.submit(_get_executor().unsafe_compute_mask_ptr, lls, bitmask.data_ptr(), words * 4, len(ms))
    for k, m in enumerate(ms):
        m._pending = (future, bitmask, k)
