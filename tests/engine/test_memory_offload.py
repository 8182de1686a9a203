"""Activation offload's CPU-side logic, the policy flags and the budget parsing (no GPU needed).

On a CPU, `HostStore(force=True)` copies what a GPU run would send to pinned host memory; these tests check which
tensors go (one per block: its input), that each comes back once in the backward pass, and that the gradients equal
those of the plain (no checkpointing) step.
"""

from __future__ import annotations

import pytest
import torch

import engine
from engine.lora import apply_lora, lora_modules
from engine.memory.offload import HostStore
from engine.memory.plan import parse_bytes
from engine.memory.policy import POLICIES, set_policy


def _model(dtype=torch.float32):
    model, _ = engine.load("debug", random_init=True, dtype=dtype, device="cpu", seed=1)
    apply_lora(model, rank=4, alpha=8)
    g = torch.Generator().manual_seed(2)
    for m in lora_modules(model).values():
        m.lora_B.data = torch.randn(m.lora_B.shape, generator=g, dtype=m.lora_B.dtype) * 0.1
    return model.train()


def _grads(model, policy, store=None):
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, model.args.vocab_size, (1, 97), generator=g)
    cu = torch.tensor([0, 40, 97], dtype=torch.int32)
    pos = torch.cat([torch.arange(40), torch.arange(57)])[None]
    set_policy(model, policy, store)
    model.zero_grad(set_to_none=True)
    model.loss(x, x, pos, cu, 57).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_offload_sends_each_block_input_to_the_host_and_back_once():
    model = _model()
    store = HostStore(force=True, pin=False)
    got = _grads(model, "offload", store)
    assert store.packed == [((1, 97, model.args.dim), torch.float32)] * model.args.n_layers
    assert store.unpacked == model.args.n_layers
    ref = _grads(model, "none")
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=0, atol=0)


def test_every_policy_gives_the_gradients_of_plain_autograd():
    """Recomputation runs the same ops on the same inputs: the gradients are bitwise those of no checkpointing."""
    model = _model()
    ref = _grads(model, "none")
    for policy in POLICIES[1:]:
        got = _grads(model, policy, HostStore(force=True, pin=False))
        for n in ref:
            assert torch.equal(got[n], ref[n]), (policy, n)


def test_on_cpu_without_force_nothing_is_copied():
    model = _model()
    store = HostStore(pin=False)
    _grads(model, "offload", store)
    assert store.packed == [] and store.unpacked == 0


def test_eval_and_no_grad_ignore_the_policy():
    model = _model()
    set_policy(model, "full")
    x = torch.randint(0, model.args.vocab_size, (2, 33))
    with torch.no_grad():
        a = model(x)
    set_policy(model, "none")
    with torch.no_grad():
        b = model(x)
    assert torch.equal(a, b)


@pytest.mark.parametrize("text", ["-1", "lots", "0", "", "80XB", "nan"])
def test_bad_budgets_are_one_line_errors(text):
    with pytest.raises(ValueError, match="--memory-budget") as e:
        parse_bytes(text)
    assert "\n" not in str(e.value)


def test_budgets_parse_in_binary_units():
    assert parse_bytes("80GB") == parse_bytes("80GiB") == 80 * 2**30
    assert parse_bytes("512MB") == 512 * 2**20 and parse_bytes("1.5t") == int(1.5 * 2**40) and parse_bytes("4096") == 4096


def test_train_cli_rejects_nonsense_before_loading(capsys):
    from engine.train import main

    for argv in (["--memory-budget", "lots"], ["--memory-budget", "-1"], ["--activation-checkpointing", "most"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --") and "\n" not in err


def test_explicit_policy_is_honoured_and_bare_flag_means_full():
    from engine.memory.cli import choose_policy
    from engine.train import parse_config

    for argv, want in ((["--activation-checkpointing", "selective"], "selective"),
                       (["--activation-checkpointing"], "full"), (["--activation-checkpointing", "none"], "none")):
        assert choose_policy(parse_config(argv), torch.device("cpu")) == want
    assert parse_config([]).activation_checkpointing == "auto"


@pytest.mark.slow
def test_auto_refuses_a_run_that_fits_nowhere_with_a_change_that_fits(tmp_path, monkeypatch):
    import re

    from engine.memory.cli import choose_policy
    from engine.train import parse_config

    monkeypatch.setenv("COALM_CACHE", str(tmp_path))
    base = ["--model", "debug", "--random-init", "--lora", "--max-seq-len", "1024", "--memory-budget", "900MB"]
    cfg = parse_config([*base, "--micro-batch-size", "8", "--global-batch-size", "8"])
    with pytest.raises(ValueError, match=r"does not fit .* under any activation checkpointing policy") as e:
        choose_policy(cfg, torch.device("cpu"))
    msg = str(e.value)
    assert "\n" not in msg
    change = re.search(r"try (--[a-z-]+ \d+(?: --micro-batch-size 1)?)$", msg)
    assert change, msg
    flags = change.group(1).split()
    fixed = dict(zip(flags[::2], flags[1::2], strict=True))
    mbs = fixed.get("--micro-batch-size", "8")
    argv = [*base, "--micro-batch-size", mbs, "--global-batch-size", mbs]
    if "--max-seq-len" in fixed:
        argv += ["--max-seq-len", fixed["--max-seq-len"]]
    assert choose_policy(parse_config(argv), torch.device("cpu")) in ("none", "selective", "full")


def test_cpu_malloc_setting_is_applied_or_left_alone(monkeypatch):
    import sys

    from engine.memory.host import return_freed_memory

    monkeypatch.setenv("COALM_CPU_MALLOC", "default")
    assert return_freed_memory() is False
    monkeypatch.delenv("COALM_CPU_MALLOC")
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6")
        except OSError:
            pytest.skip("not glibc")
        assert return_freed_memory() is True
