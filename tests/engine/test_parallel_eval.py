"""`coalm.eval --model` under torchrun: two ranks (DP 2) split the examples and write the report a single process
writes: the same items, summary and raw responses, in the same order; also with `--constrained on` (grammars).

The model is the `debug` preset with random weights and SmolLM2's vocabulary (its outputs are noise, but greedy
and deterministic); the batches each replica runs are exactly those of the single process (engine.map_data_parallel
deals whole batches), so even batch-dependent numerics agree. Both sides run one thread per process.
"""

import json

import pytest
import torch

from coalm.eval.__main__ import main as eval_main
from engine.config import get_config
from engine.model import build_model
from engine.parallel.data_parallel import map_data_parallel
from engine.parallel.mesh import Mesh
from engine.tokenizer import load_tokenizer
from engine.weights import save_hf
from tests.engine.dist_launch import run_torchrun

pytestmark = pytest.mark.slow  # starts torchrun ranks

ARGS = ["--bench", "bfcl", "--category", "simple", "--limit", "5", "--max-new-tokens", "6", "--batch-size", "2"]


@pytest.fixture
def ckpt(tmp_path):
    model = build_model(get_config("debug"))
    model.to_empty(device="cpu")
    model.init_weights(std=0.05, generator=torch.Generator().manual_seed(9))
    d = save_hf(model, tmp_path / "ckpt", dtype=torch.float32)
    tok = load_tokenizer("smollm2-135m")  # as tokenizer.json: each rank reads it at once (the GGUF takes seconds)
    tok._backend.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": tok.chat_template, "bos_token": tok.bos_token, "eos_token": tok.eos_token}))
    return d


@pytest.mark.parametrize("extra", [[], ["--prompt-style", "coalm", "--constrained", "on", "--max-new-tokens", "24"]],
                         ids=["free", "constrained"])
def test_two_ranks_write_the_single_process_report(ckpt, tmp_path, extra):
    args = ARGS + extra  # (a later --max-new-tokens wins)
    rc, out, err = run_torchrun(2, ["-m", "coalm.eval", *args, "--model", ckpt, "--out", tmp_path / "dp2.json"],
                                timeout=300)
    assert rc == 0, f"{out[-2000:]}\n{err[-4000:]}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert eval_main([*args, "--model", str(ckpt), "--out", str(tmp_path / "one.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    one, dp2 = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "dp2"))
    assert len(one["items"]) == 5
    assert dp2["items"] == one["items"] and dp2["summary"] == one["summary"]
    raw = [(tmp_path / f"{n}.responses.jsonl").read_text() for n in ("one", "dp2")]
    assert raw[1] == raw[0] and raw[0].count("\n") == 5
    # one writer: the report, its responses and the runner's per-item cache
    assert sorted(p.name for p in tmp_path.glob("dp2*")) == ["dp2.cache.jsonl", "dp2.json", "dp2.responses.jsonl"]


def test_map_data_parallel_deals_whole_chunks_in_order():
    items = list(range(11))
    seen = []

    def fn(chunk):
        seen.append(chunk)
        return [x * 10 for x in chunk]

    assert map_data_parallel(fn, items, 3) == [x * 10 for x in items]
    assert seen == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10]]
    seen.clear()
    with pytest.raises(KeyError):  # replica 1 of 2 alone runs chunks 1 and 3; the others' come from the gather
        map_data_parallel(fn, items, 3, Mesh(dp=2, dp_rank=1))
    assert seen == [[3, 4, 5], [9, 10]]
