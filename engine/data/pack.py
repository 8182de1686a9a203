"""The one batch type (`Batch`) and the one packer (`pack_varlen`): several token sequences in one padding-free row.

    pack_varlen(seqs, labels=None, *, device=None, weight=1.0) -> Batch

`seqs` is a non-empty list of non-empty token sequences (lists of ints or 1-D integer tensors); `labels`, when
given, one sequence per input of the same length, aligned to it (labels[i] is the target of position i itself,
`IGNORE` where there is no loss; `Transformer.loss` shifts). The returned `Batch`, on `device` (default CPU):

    input_ids    (1, total) int64   the sequences concatenated, no padding
    labels       (1, total) int64   concatenated labels, or None when none were given (prefill)
    position_ids (1, total) int64   0..len-1 restarting for every sequence (RoPE positions)
    cu_seqlens   (n + 1,)   int32   sequence k is input_ids[0, cu_seqlens[k]:cu_seqlens[k + 1]]
    max_seqlen   int                the longest sequence
    n_targets    int                tokens the loss averages over: labels != IGNORE, not counting each sequence's
                                    first position (nothing in its sequence precedes it); 0 without labels
    weight       float              scale of this batch's share of a step's loss (0 for FSDP's padding batches)

Used by training (`engine.data.batching`), and shaped for the prefill of generation and of the server: the model's
`forward(batch.input_ids, batch.position_ids, cu_seqlens=batch.cu_seqlens, max_seqlen=batch.max_seqlen, ...)`,
with `batch.seq_index()` naming the sequence of each token (its KV-cache row).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

IGNORE = -100  # label of a position without loss (the convention of torch's cross_entropy ignore_index)


@dataclass(eq=False)  # tensors have no single truth value: batches compare by identity
class Batch:
    """Packed sequences with varlen-attention metadata; see the module docstring for the shapes."""

    input_ids: torch.Tensor
    labels: torch.Tensor | None
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    n_targets: int
    weight: float = 1.0

    @property
    def num_seqs(self) -> int:
        return self.cu_seqlens.numel() - 1

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[-1]

    def seq_lens(self) -> torch.Tensor:
        """(n,) int32: the length of each packed sequence."""
        return self.cu_seqlens[1:] - self.cu_seqlens[:-1]

    def seq_index(self) -> torch.Tensor:
        """(total,) int64: which sequence each token belongs to (e.g. its row in a KV cache)."""
        n = self.num_seqs
        return torch.repeat_interleave(torch.arange(n, device=self.cu_seqlens.device), self.seq_lens().long())

    def to(self, device, non_blocking: bool = False) -> Batch:
        def move(t):
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return replace(self, input_ids=move(self.input_ids), labels=move(self.labels),
                       position_ids=move(self.position_ids), cu_seqlens=move(self.cu_seqlens))

    def as_padding(self) -> Batch:
        """The same tensors with weight 0 and no targets: a micro-batch that runs the model's collectives (FSDP)
        but adds nothing to the step's loss or gradients."""
        return replace(self, n_targets=0, weight=0.0)


def _as_list(seq, what: str, k: int) -> list[int]:
    if isinstance(seq, torch.Tensor):
        if seq.dim() != 1 or seq.is_floating_point() or seq.is_complex():
            raise ValueError(f"{what} {k}: expected a 1-D integer tensor, got {tuple(seq.shape)} {seq.dtype}")
        return seq.tolist()
    if isinstance(seq, (str, bytes)):
        raise TypeError(f"{what} {k}: expected token ids, got {type(seq).__name__}")
    return list(seq)


def pack_varlen(seqs: Sequence[Sequence[int] | torch.Tensor], labels: Sequence[Sequence[int] | torch.Tensor] | None
                = None, *, device: torch.device | str | None = None, weight: float = 1.0) -> Batch:
    """Concatenate `seqs` (and `labels`) into one row with per-sequence positions and cu_seqlens (module docstring).

    Raises ValueError for no sequences, an empty sequence, a tensor that is not 1-D integer, or labels whose count or
    lengths differ from `seqs`; TypeError for text where token ids belong.
    """
    if len(seqs) == 0:
        raise ValueError("pack_varlen: no sequences to pack")
    ids = [_as_list(s, "sequence", k) for k, s in enumerate(seqs)]
    lens = [len(s) for s in ids]
    if min(lens) == 0:
        raise ValueError(f"pack_varlen: sequence {lens.index(0)} is empty")
    flat_labels = None
    if labels is not None:
        if len(labels) != len(ids):
            raise ValueError(f"pack_varlen: {len(labels)} label sequences for {len(ids)} sequences")
        flat_labels = []
        for k, y in enumerate(labels):
            y = _as_list(y, "labels", k)
            if len(y) != lens[k]:
                raise ValueError(f"pack_varlen: sequence {k} has {lens[k]} tokens but {len(y)} labels")
            flat_labels += y
    # Built on the CPU and moved once per tensor: one small host-to-device copy each, no per-sequence launches.
    lens_t = torch.tensor(lens, dtype=torch.int64)
    cu = torch.zeros(len(lens) + 1, dtype=torch.int64)
    torch.cumsum(lens_t, 0, out=cu[1:])
    total = int(cu[-1])
    positions = torch.arange(total, dtype=torch.int64) - torch.repeat_interleave(cu[:-1], lens_t)
    labels_t = None if flat_labels is None else torch.tensor(flat_labels, dtype=torch.int64)
    n_targets = 0
    if labels_t is not None:
        has_loss = labels_t != IGNORE
        has_loss[cu[:-1]] = False  # a sequence's first label has no earlier position in its sequence to predict it
        n_targets = int(has_loss.sum())
    batch = Batch(
        input_ids=torch.tensor([t for s in ids for t in s], dtype=torch.int64)[None],
        labels=None if labels_t is None else labels_t[None],
        position_ids=positions[None],
        cu_seqlens=cu.to(torch.int32),
        max_seqlen=max(lens),
        n_targets=n_targets,
        weight=float(weight),
    )
    return batch if device is None else batch.to(device)
