"""Shared fixtures: the embedded SmolLM2 model (ours and transformers', from the same GGUF), loaded once."""

import pytest
import torch


@pytest.fixture(scope="session")
def smol():
    import engine

    return engine.load("smollm2-135m", dtype=torch.float32, device="cpu")


@pytest.fixture(scope="session")
def smol_hf():
    transformers = pytest.importorskip("transformers")
    from engine.weights import smollm2_gguf_path

    p = smollm2_gguf_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    return model.eval(), tok
