"""The continuous-batching scheduler in process, on the tiny debug model: sequences that join at different steps,
finish at different lengths, outgrow their slot's first capacity, are prefilled in chunks, use stop strings or
seeded sampling, or are cancelled, each get exactly what `generate_ids` gives them alone."""

import random
import threading

import pytest
import torch

import engine
from engine.serving.offline import generate_ids
from engine.serving.runner import Runner
from engine.serving.scheduler import Params, RequestError, Scheduler, Sequence


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
    new = [90, 12, 1, 9, 14, 3, 11, 7, 2, 10]  # 90: more answer than a slot gets at first
    prompts = [torch.randint(0, 49152, (n,), generator=g).tolist() for n in lens]
    runner = Runner(model, max_len=1024)
    grown, ensure = [], runner.cache._ensure  # record each slot's growth: (slot, capacity before, after)
    runner.cache._ensure = lambda slot, n: (cap := runner.cache.capacity(slot), ensure(slot, n),
                                            grown.append((slot, cap, runner.cache.capacity(slot))))
    sched = Scheduler(runner, tok, max_batch=4, max_prefill_tokens=50).start()  # prompts of 60+ go in chunks
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
    # a slot is allocated for its prompt + 64 answer tokens and grows alone: only the 90-token answer's slot grew
    assert {slot for slot, before, after in grown if after > before} == {seqs[0][0].slot}
    assert not runner.cache.store and runner.cache.used_bytes() == 0  # every slot freed when its sequence ended


def test_seeded_sampling_stop_strings_and_cancel(debug):
    model, tok = debug
    g = torch.Generator().manual_seed(12)
    prompts = [torch.randint(0, 49152, (n,), generator=g).tolist() for n in (7, 21, 13)]
    sched = Scheduler(Runner(model, max_len=256), tok, max_batch=3).start()
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
    """A runner whose first forward raises (as an out-of-memory would)."""

    def __init__(self, runner):
        self.runner, self.failed = runner, False

    def forward(self, segments):
        if not self.failed:
            self.failed = True
            raise RuntimeError("boom")
        return self.runner.forward(segments)

    def __getattr__(self, name):
        return getattr(self.runner, name)


def test_a_failed_step_fails_its_requests_not_the_server(debug):
    model, tok = debug
    prompt = torch.randint(0, 49152, (9,), generator=torch.Generator().manual_seed(13)).tolist()
    sched = Scheduler(_FailOnce(Runner(model, max_len=64)), tok, max_batch=2).start()
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


# extreme but valid settings: zero, subnormal, the greedy threshold and just above it, huge, float64's largest
TEMPERATURES = [0.0, 5e-324, 2.2250738585072014e-308, 1e-300, 9.99e-6, 1e-5, 1.0000001e-5, 3.0, 1e300,
                1.7976931348623157e308]
TOP_PS = [0.0, 5e-324, 1e-300, 1e-9, 0.5, 0.9999999999999999, 1.0]
SEEDS = [None, 0, 2**64 - 1, -(2**63), 12345]


def test_extreme_requests_leave_the_others_byte_identical(debug):
    """Random extreme parameters (and one request whose stop check raises) mixed into a batch of normal requests:
    every extreme one finishes without an error, the poisoned one fails alone, and the normal ones are exactly
    what they are alone."""
    model, tok = debug
    rnd, g = random.Random(21), torch.Generator().manual_seed(21)
    prompt = lambda: torch.randint(0, 49152, (rnd.randint(1, 40),), generator=g).tolist()
    normal = [(prompt(), Params(9)), (prompt(), Params(7, temperature=0.8, top_p=0.9, seed=5)),
              (prompt(), Params(8, temperature=1.3, seed=6)), (prompt(), Params(6))]
    extreme = [(prompt(), Params(rnd.randint(1, 12), rnd.choice(TEMPERATURES), rnd.choice(TOP_PS), [],
                                 rnd.choice(SEEDS))) for _ in range(10)]

    def boom(ids):
        raise RuntimeError("stop check exploded")

    sched = Scheduler(Runner(model, max_len=256), tok, max_batch=16, max_prefill_tokens=64).start()
    try:
        seqs = [Sequence(p, prm, _Collect()) for p, prm in normal + extreme]
        poisoned = Sequence(prompt(), Params(5, temperature=1.0), _Collect(), stop_check=boom)
        order = seqs[:2] + [poisoned] + seqs[2:]
        rnd.shuffle(order)
        for s in order:
            sched.submit(s)
        with pytest.raises(RequestError):  # NaN-adjacent settings never reach the batch
            Params(4, temperature=float("nan"))
        for s in order:
            assert s.on_event.done.wait(120)
    finally:
        sched.shutdown()
    assert poisoned.finish == "error" and isinstance(poisoned.error, RuntimeError)
    assert poisoned.on_event.text == "RuntimeError: stop check exploded"
    for s in seqs:
        assert s.finish in ("stop", "length") and s.error is None, (s.params, s.on_event.text)
    for s, (p, prm) in zip(seqs, normal):
        alone = generate_ids(model, [p], prm.max_tokens, prm.temperature, prm.top_p, tok.stop_ids, seed=prm.seed)[0]
        assert s.ids == alone and s.on_event.text == tok.decode(alone)


def test_long_prompt_is_prefilled_in_chunks_while_others_stream(debug):
    model, tok = debug
    g = torch.Generator().manual_seed(22)
    long_p, short_p = (torch.randint(0, 49152, (n,), generator=g).tolist() for n in (601, 5))
    runner = Runner(model, max_len=1024)
    sizes, forward = [], runner.forward  # prompt tokens per forward (decode segments are one token)
    runner.forward = lambda segs: (sizes.append(sum(len(t) for _, t, _ in segs if len(t) > 1)), forward(segs))[1]
    sched = Scheduler(runner, tok, max_batch=4, max_prefill_tokens=32)  # stepped here, no thread
    long, short = Sequence(long_p, Params(6), _Collect()), Sequence(short_p, Params(8), _Collect())
    sched.submit(long)
    sched.step()
    sched.submit(short)
    while short.finish is None:
        sched.step()
    assert long.finish is None and long.done_prompt < len(long_p)  # the short request finished during the prefill
    while long.finish is None:
        sched.step()
    assert max(sizes) <= 32 and sum(sizes) == len(long_p) + len(short_p)
    for s, p, n in ((long, long_p, 6), (short, short_p, 8)):
        assert s.ids == generate_ids(model, [p], max_new_tokens=n, stop_ids=tok.stop_ids)[0]


def test_admission_waits_for_the_kv_cache_budget(debug):
    model, tok = debug
    g = torch.Generator().manual_seed(23)
    runner = Runner(model, max_len=256)
    runner.cache.budget = 100 * runner.cache.bytes_per_token  # room for 100 positions
    sched = Scheduler(runner, tok, max_batch=4)
    a = Sequence(torch.randint(0, 49152, (60,), generator=g).tolist(), Params(30), _Collect())  # reserves 90
    b = Sequence(torch.randint(0, 49152, (20,), generator=g).tolist(), Params(20), _Collect())  # 40: must wait
    with pytest.raises(RequestError, match="KV cache"):  # 110 positions can never fit
        sched.submit(Sequence(a.prompt_ids + a.prompt_ids[:30], Params(20), _Collect()))
    sched.submit(a)
    sched.submit(b)
    sched.step()
    assert sched.running == [a] and sched.stats()["waiting"] == 1
    while a.finish is None:
        assert b.slot is None and runner.cache.used_bytes() <= runner.cache.budget
        sched.step()
    while b.finish is None:
        sched.step()
    for s, n in ((a, 30), (b, 20)):
        assert s.ids == generate_ids(model, [s.prompt_ids], max_new_tokens=n, stop_ids=tok.stop_ids)[0]
