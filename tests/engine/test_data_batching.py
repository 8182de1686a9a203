"""engine.data.StepBatches: the data-parallel ranks' shares of each step cover its rows once, weights make the step's
token mean, FSDP padding weighs nothing; and a training step on the packed Batches gives the loss and LoRA
gradients of an independent fp64 computation, row by row without packing."""

import random

import pytest
import torch

from engine.data import IGNORE, StepBatches, load, render_rows
from engine.parallel.mesh import Mesh


def _fake_rendered(rng: random.Random, n: int, max_len: int) -> list[tuple[list[int], list[int]]]:
    out = []
    for _ in range(n):
        L = rng.randint(2, max_len)
        k = rng.randint(1, L - 1)  # a prompt of >= 1 token, then a target of >= 1, as rendering makes them
        ids = [rng.randrange(1000) for _ in range(L)]
        out.append((ids, [IGNORE] * k + ids[k:]))
    return out


@pytest.mark.parametrize("n_rows, global_bs, micro_bs", [(23, 7, 3), (10, 10, 4), (5, 8, 8), (31, 6, 1)])
def test_rank_shares_cover_every_row_once(n_rows, global_bs, micro_bs):
    rng = random.Random(n_rows * 31 + global_bs)
    rendered = _fake_rendered(rng, n_rows, 40)
    sb = StepBatches(rendered, global_bs, micro_bs, seed=rng.randrange(100))
    for epoch in range(2):
        epoch_rows = []
        for step in range(epoch * sb.steps_per_epoch, (epoch + 1) * sb.steps_per_epoch):
            rows = [i for mb in sb.step_rows(step) for i in mb]
            epoch_rows += rows
            targets = sum(sum(t != IGNORE for t in rendered[i][1][1:]) for i in rows)
            for dp in (1, 2, 3, 5):
                meshes = [Mesh(dp=dp, dp_rank=r) for r in range(dp)]
                shares = [sb.rank_rows(step, m) for m in meshes]
                assert [i for s in shares for mb in s for i in mb] == rows  # each row on one rank, once, in order
                assert all(len(mb) <= micro_bs for s in shares for mb in s)
                batches = [sb.step(step, m) for m in meshes]
                weight = 0.0
                for share, bs in zip(shares, batches):
                    assert len(bs) == len(share)
                    for idx, b in zip(share, bs):
                        assert b.input_ids[0].tolist() == [t for i in idx for t in rendered[i][0]]
                        assert b.labels[0].tolist() == [t for i in idx for t in rendered[i][1]]
                        assert b.n_targets == sum(sum(t != IGNORE for t in rendered[i][1][1:]) for i in idx)
                        assert b.weight == pytest.approx(b.n_targets / targets)
                        weight += b.weight
                assert weight == pytest.approx(1.0)
                padded = [sb.step(step, m, pad=True) for m in meshes]
                assert len({len(p) for p in padded}) == 1  # FSDP: every rank runs as many forwards
                for bs, ps in zip(batches, padded):
                    assert [(p.input_ids.tolist(), p.weight) for p in ps[:len(bs)]] == [
                        (b.input_ids.tolist(), b.weight) for b in bs]
                    assert all(p.weight == 0.0 and p.n_targets == 0 for p in ps[len(bs):])
        assert sorted(epoch_rows) == list(range(n_rows))  # one epoch: every row exactly once


def test_bad_sizes_and_empty_data():
    with pytest.raises(ValueError, match="no rows"):
        StepBatches([], 4, 2)
    with pytest.raises(ValueError, match="batch sizes must be >= 1"):
        StepBatches([([1, 2], [IGNORE, 2])], 4, 0)


def test_packed_step_matches_unpacked_fp64_rows(tmp_path):
    """Loss and LoRA gradients of one optimizer step, summed over simulated DP ranks and their micro-batches, equal
    the token mean over the step's rows computed by transformers + PEFT in fp64, one unpadded row at a time, with
    plain cross-entropy."""
    import engine
    from engine.lora import apply_lora, lora_modules, save_adapter
    from engine.model import peft_lora_name
    from engine.weights import save_hf

    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    model, tok = engine.load("debug", random_init=True, seed=3, dtype=torch.float32, device="cpu")
    save_hf(model, tmp_path / "base", dtype=torch.float32)
    torch.manual_seed(3)
    apply_lora(model, rank=4, alpha=8)
    for m in lora_modules(model).values():
        torch.nn.init.normal_(m.lora_B, std=0.05)  # nonzero B: gradients reach both factors
    save_adapter(model, tmp_path / "adapter", base_model=str(tmp_path / "base"))
    model.train()
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float64)
    ref = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter", is_trainable=True).double().train()
    ref_params = {n.replace(".default", ""): p for n, p in ref.named_parameters() if p.requires_grad}
    ours = {peft_lora_name(name, f): getattr(m, f) for name, m in lora_modules(model).items()
            for f in ("lora_A", "lora_B")}
    assert set(ours) == set(ref_params)

    rendered, _ = render_rows(load("sample")[:30], tok, max_len=128)
    sb = StepBatches(rendered, global_batch_size=7, micro_batch_size=3, seed=7)
    step = 1
    ref.zero_grad()
    nll, count = 0, 0
    for i in (i for mb in sb.step_rows(step) for i in mb):
        ids, labels = rendered[i]
        logits = ref(input_ids=torch.tensor([ids])).logits[0, :-1]  # (T - 1, vocab): position t predicts t + 1
        target = torch.tensor(labels[1:])
        nll = nll + torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum")
        count += int((target != IGNORE).sum())
    (nll / count).backward()

    for dp in (1, 3):
        model.zero_grad()
        loss_sum = 0.0
        for r in range(dp):
            for b in sb.step(step, Mesh(dp=dp, dp_rank=r), pad=dp > 1):
                loss = model.loss(input_ids=b.input_ids, labels=b.labels, position_ids=b.position_ids,
                                  cu_seqlens=b.cu_seqlens, max_seqlen=b.max_seqlen)
                (loss * b.weight).backward()
                loss_sum += loss.item() * b.weight
        assert loss_sum == pytest.approx((nll / count).item(), rel=1e-5)
        for n, p in ours.items():
            want = ref_params[n].grad
            assert (p.grad.double() - want).norm() <= 1e-4 * want.norm(), n
