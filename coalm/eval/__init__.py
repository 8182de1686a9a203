"""Benchmark evaluators: one module per benchmark, registered by name.

Each module exposes the same small interface (see `coalm.eval.base`):
  add_arguments(parser)                 extra CLI flags of that benchmark (optional)
  load_examples(data_root, args)        -> list of examples, dicts with at least "id" and "messages"
  read_responses(path)                  -> {example id: saved model output}, in the benchmark's own format
  responses_from_texts(examples, texts) -> the same mapping, built from freshly generated texts
  write_responses(path, examples, responses)  saves them in the benchmark's own format
  evaluate(examples, responses)         -> report {"summary": {...}, "items": [{"id", "verdict"|"score", "error"}]}
  generate(examples, backend, args, save)  (optional) -> responses, for tasks with several model steps per item;
                                        `backend.chat(conversations, max_new_tokens)` (coalm.eval.backends) gives
                                        the model's texts, `save(done_examples, responses)` checkpoints them
"""

import importlib

# name -> module; imported on use so that one benchmark's optional dependencies never block another.
REGISTRY = {
    "bfcl": "coalm.eval.bfcl",
    "api-bank": "coalm.eval.api_bank",
    "multiwoz": "coalm.eval.multiwoz",
}


def get_task(name: str):
    if name not in REGISTRY:
        raise ValueError(f"unknown benchmark {name!r}; choose one of: {', '.join(REGISTRY)}")
    return importlib.import_module(REGISTRY[name])
