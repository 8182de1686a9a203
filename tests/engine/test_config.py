"""Presets carry the published shapes; unknown names and keys raise with the valid choices."""

import pytest

from engine.config import ModelArgs, get_config


@pytest.mark.parametrize("name,params_b", [("8b", 8.03), ("70b", 70.55), ("405b", 405.85), ("llama-3.2-1b", 1.236),
                                           ("llama-3.2-3b", 3.21), ("smollm2-135m", 0.1345)])
def test_published_parameter_counts(name, params_b):
    assert get_config(name).num_params() / 1e9 == pytest.approx(params_b, rel=2e-3)


def test_llama3_and_smollm2_shapes():
    a = get_config("llama-3.1-8b")
    assert (a.vocab_size, a.rope_theta, a.rope_scaling["factor"], a.n_kv_heads) == (128256, 500000.0, 8.0, 8)
    s = get_config("smollm2-135m")
    assert (s.dim, s.n_layers, s.n_heads, s.n_kv_heads, s.ffn_dim, s.vocab_size, s.rope_theta, s.tie_embeddings) == (
        576, 30, 9, 3, 1536, 49152, 100000.0, True)
    assert get_config("debug").rope_scaling is not None


def test_unknown_name_and_keys():
    with pytest.raises(ValueError, match="unknown model preset 'llama-9b'.*llama-3.1-8b"):
        get_config("llama-9b")
    with pytest.raises(ValueError, match=r"unknown ModelArgs keys \['hidden'\]"):
        get_config("debug", hidden=3)
    with pytest.raises(ValueError, match="unknown ModelArgs keys"):
        ModelArgs.from_dict({"dim": 8, "layers": 2})


def test_overrides_do_not_leak():
    a = get_config("8b", n_layers=2)
    a.rope_scaling["factor"] = 1.0
    assert get_config("8b").n_layers == 32 and get_config("8b").rope_scaling["factor"] == 8.0
