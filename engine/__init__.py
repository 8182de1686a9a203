"""coalm-engine: model, weights, tokenizer, LoRA/QLoRA, tensor parallelism, training and generation.

    import engine
    model, tokenizer = engine.load("smollm2-135m")      # preset with embedded weights, HF dir, or .gguf path
    logits = model(tokens)                               # (B, T) LongTensor -> (B, T, vocab) float logits
    texts = engine.generate(model, tokenizer, prompts, max_new_tokens=64, temperature=0.0)

Under torchrun: `engine.init_mesh(tp)` builds the (dp, tp) process grid, `engine.load(..., tp=tp)` loads this rank's
part of the model, and `engine.map_data_parallel(fn, items, chunk)` shares work out over the DP replicas.
"""

from .parallel.data_parallel import map_data_parallel  # noqa: F401
from .serving.offline import generate  # noqa: F401
from .loader import inference_dtype, load  # noqa: F401
from .parallel.mesh import init_mesh  # noqa: F401
