"""The continuous-batching scheduler in process, on the tiny debug model: sequences that join at different steps,
finish at different lengths (slots compacted), outgrow the cache's first capacity, use stop strings or seeded
sampling, or are cancelled, each get exactly what `generate_ids` gives them alone."""

import threading

import pytest
import torch

import engine
from engine.generation import generate_ids
from engine.serving.runner import Runner
from engine.serving.scheduler import Params, Scheduler, Sequence


@pytest.fixture(scope="module")
def debug():
    model, tok = engine.load("debug", random_init=True, dtype=torch.float32, device="cpu", seed=5)
    with torch.no_grad():  # spread the logits so greedy choices are far from ties
        model.lm_head.weight.mul_(20)
    return model, tok


class _Collect:
    def __init__(self):
        self.text, self.finish, self.done = "", None, threading.Event()

    def __call__(self, delta, finish):
        self.text += delta
        if finish:
            self.finish = finish
            self.done.set()


def test_joins_leaves_grows_and_equals_alone(debug):
    model, tok = debug
    g = torch.Generator().manual_seed(11)
    lens = [3, 300, 17, 1, 45, 120, 9, 270, 60, 33]  # 300 and 270 outgrow the first cache capacity (256)
    new = [5, 12, 1, 9, 14, 3, 11, 7, 2, 10]
    prompts = [torch.randint(0, 49152, (n,), generator=g).tolist() for n in lens]
    runner = Runner(model, slots=4, max_len=1024)
    grown, alloc = [], runner.cache._alloc  # record the cache's re-allocations: (capacity, positions kept)
    runner.cache._alloc = lambda cap, keep=0: (grown.append((cap, keep)), alloc(cap, keep))[1]
    sched = Scheduler(runner, tok, max_batch=4, max_prefill_tokens=350).start()
    try:
        seqs = []
        for i, (p, n) in enumerate(zip(prompts, new)):
            c = _Collect()
            s = Sequence(p, Params(max_tokens=n), c)
            sched.submit(s)
            seqs.append((s, c))
            if i % 3 == 2:  # later arrivals join a batch that is already decoding
                seqs[-2][1].done.wait(60)
        for s, c in seqs:
            assert c.done.wait(120)
    finally:
        sched.shutdown()
    for (s, c), p, n in zip(seqs, prompts, new):
        alone = generate_ids(model, [p], max_new_tokens=n, stop_ids=tok.stop_ids)[0]
        assert s.ids == alone and c.text == tok.decode(alone)
        assert c.finish == ("length" if len(alone) == n else "stop")
    assert (512, 256) in grown  # doubled for the 300-token prompt, keeping what the running sequences held
    runner.reset()  # what the idle scheduler does: give the memory back
    assert runner.cache.capacity == 256 and not runner.cache.lengths.any()


def test_seeded_sampling_stop_strings_and_cancel(debug):
    model, tok = debug
    g = torch.Generator().manual_seed(12)
    prompts = [torch.randint(0, 49152, (n,), generator=g).tolist() for n in (7, 21, 13)]
    sched = Scheduler(Runner(model, slots=3, max_len=256), tok, max_batch=3).start()
    try:
        def sample(seed, others):
            c, extra = _Collect(), []
            for p in others:  # different company in the batch must not change a seeded sequence
                e = Sequence(p, Params(max_tokens=20), _Collect())
                sched.submit(e)
                extra.append(e)
            s = Sequence(prompts[0], Params(max_tokens=12, temperature=2.0, top_p=0.9, seed=seed), c)
            sched.submit(s)
            assert c.done.wait(60)
            return s.ids

        assert sample(3, []) == sample(3, prompts[1:]) != sample(4, [])
        free = _Collect()
        s = Sequence(prompts[1], Params(max_tokens=16), free)
        sched.submit(s)
        assert free.done.wait(60)
        stop = free.text[len(free.text) // 2:len(free.text) // 2 + 2]
        assert len(stop) == 2
        cut = _Collect()
        sched.submit(Sequence(prompts[1], Params(max_tokens=16, stop=[stop]), cut))
        assert cut.done.wait(60) and cut.finish == "stop" and cut.text == free.text[:free.text.index(stop)]
        gone = Sequence(prompts[2], Params(max_tokens=200), _Collect())
        sched.submit(gone)
        keep = _Collect()
        sched.submit(Sequence(prompts[2], Params(max_tokens=8), keep))
        sched.cancel(gone)
        assert keep.done.wait(60)
    finally:
        sched.shutdown()
    assert gone.finish is None and len(gone.ids) < 200 and sched.stats()["running"] == 0


class _FailOnce:
    """A runner whose first prefill raises (as an out-of-memory would)."""

    def __init__(self, runner):
        self.runner, self.failed = runner, False

    def prefill(self, prompts, slots):
        if not self.failed:
            self.failed = True
            raise RuntimeError("boom")
        return self.runner.prefill(prompts, slots)

    def __getattr__(self, name):
        return getattr(self.runner, name)


def test_a_failed_step_fails_its_requests_not_the_server(debug):
    model, tok = debug
    prompt = torch.randint(0, 49152, (9,), generator=torch.Generator().manual_seed(13)).tolist()
    sched = Scheduler(_FailOnce(Runner(model, slots=2, max_len=64)), tok, max_batch=2).start()
    try:
        first, second = _Collect(), _Collect()
        s1 = Sequence(prompt, Params(max_tokens=5), first)
        sched.submit(s1)
        assert first.done.wait(60) and first.finish == "error" and first.text == "RuntimeError: boom"
        s2 = Sequence(prompt, Params(max_tokens=5), second)
        sched.submit(s2)
        assert second.done.wait(60) and second.finish == "length"
    finally:
        sched.shutdown()
    assert s2.ids == generate_ids(model, [prompt], max_new_tokens=5, stop_ids=tok.stop_ids)[0]
