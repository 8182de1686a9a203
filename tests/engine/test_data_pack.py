"""engine.data.pack_varlen: packed rows round-trip to their sequences, count exactly the targets the loss averages
over, and a packed forward of the debug model matches each sequence run alone (the prefill use)."""

import random

import pytest
import torch

from engine.data.pack import IGNORE, Batch, pack_varlen


def _random_seqs(rng: random.Random, n: int, max_len: int) -> list[list[int]]:
    return [[rng.randrange(49152) for _ in range(rng.randint(1, max_len))] for _ in range(n)]


@pytest.mark.parametrize("n", [1, 2, 7, 33])
def test_round_trip_positions_and_boundaries(n):
    rng = random.Random(1000 + n)
    seqs = _random_seqs(rng, n, 97)
    labels = [[t if rng.random() < 0.4 else IGNORE for t in s] for s in seqs]
    b = pack_varlen(seqs, labels)
    assert b.input_ids.shape == b.labels.shape == b.position_ids.shape == (1, sum(map(len, seqs)))
    assert b.input_ids.dtype == b.labels.dtype == b.position_ids.dtype == torch.int64
    assert b.cu_seqlens.dtype == torch.int32 and b.num_seqs == n
    assert b.max_seqlen == max(map(len, seqs)) and b.weight == 1.0
    cu = b.cu_seqlens.tolist()
    assert cu[0] == 0 and all(cu[k + 1] - cu[k] == len(seqs[k]) for k in range(n))
    for k in range(n):
        assert b.input_ids[0, cu[k]:cu[k + 1]].tolist() == seqs[k]
        assert b.labels[0, cu[k]:cu[k + 1]].tolist() == labels[k]
        assert b.position_ids[0, cu[k]:cu[k + 1]].tolist() == list(range(len(seqs[k])))
    assert b.seq_index().tolist() == [k for k in range(n) for _ in seqs[k]]
    assert b.seq_lens().tolist() == [len(s) for s in seqs]
    # what the shifted loss averages over: positions 1.. of each sequence whose label is a target
    assert b.n_targets == sum(t != IGNORE for y in labels for t in y[1:])


def test_tensor_inputs_prefill_and_padding_copy():
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(0, 500, (n,), generator=g) for n in (5, 1, 13)]
    b = pack_varlen(seqs, device="cpu")
    assert b.labels is None and b.n_targets == 0
    assert torch.equal(b.input_ids[0], torch.cat(seqs))
    pad = b.as_padding()
    assert pad.weight == 0.0 and pad.n_targets == 0 and pad.input_ids is b.input_ids
    assert isinstance(b.to("cpu"), Batch) and torch.equal(b.to("cpu").cu_seqlens, b.cu_seqlens)


@pytest.mark.parametrize("seqs, labels, match", [
    ([], None, "no sequences"),
    ([[1, 2], []], None, "sequence 1 is empty"),
    ([[1, 2]], [[1, 2], [3]], "2 label sequences for 1"),
    ([[1, 2], [3]], [[1, 2], [3, 4]], "sequence 1 has 1 tokens but 2 labels"),
    ([torch.zeros(2, 2, dtype=torch.long)], None, "1-D integer tensor"),
    ([torch.zeros(3)], None, "1-D integer tensor"),
])
def test_bad_input_is_a_clear_error(seqs, labels, match):
    with pytest.raises(ValueError, match=match):
        pack_varlen(seqs, labels)


def test_text_instead_of_ids_is_a_type_error():
    with pytest.raises(TypeError, match="sequence 0: expected token ids, got str"):
        pack_varlen(["abc"])


def test_packed_forward_and_loss_match_each_sequence_alone():
    """The packed row attends within each sequence only: logits and the token-mean loss equal per-sequence runs."""
    import engine

    model, _ = engine.load("debug", random_init=True, dtype=torch.float32, device="cpu", seed=5)
    model.eval()
    rng = random.Random(7)
    seqs = _random_seqs(rng, 4, 61)
    seqs[0] = seqs[0][:1] + [rng.randrange(49152) for _ in range(40)]  # at least one long one
    labels = [[IGNORE if rng.random() < 0.3 else t for t in s] for s in seqs]
    b = pack_varlen(seqs, labels)
    with torch.no_grad():
        packed = model(b.input_ids, b.position_ids, cu_seqlens=b.cu_seqlens, max_seqlen=b.max_seqlen)[0]
        loss = model.loss(b.input_ids, b.labels, b.position_ids, b.cu_seqlens, b.max_seqlen)
        nll, count = 0.0, 0
        for k, s in enumerate(seqs):
            x = torch.tensor([s])
            alone = model(x)[0]
            lo, hi = b.cu_seqlens[k].item(), b.cu_seqlens[k + 1].item()
            torch.testing.assert_close(packed[lo:hi], alone, rtol=1e-4, atol=1e-4)
            logp = torch.log_softmax(alone.double(), -1)
            for i in range(1, len(s)):
                if labels[k][i] != IGNORE:
                    nll -= logp[i - 1, labels[k][i]].item()
                    count += 1
    assert count == b.n_targets
    assert abs(loss.item() - nll / count) < 1e-4 * max(1.0, nll / count)
