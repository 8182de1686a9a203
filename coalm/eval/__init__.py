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

# In code: `coalm.eval.evaluate("bfcl", "report.json", model="smollm2-135m", limit=8)` runs one benchmark as the CLI
# does and returns its report (the demo scores through it).
import contextlib
import importlib
import io
import json
from pathlib import Path

# name -> module; imported on use so that one benchmark's optional dependencies never block another.
REGISTRY = {
    "bfcl": "coalm.eval.bfcl",
    "api-bank": "coalm.eval.api_bank",
    "multiwoz": "coalm.eval.multiwoz",
    "sample": "coalm.eval.sample",  # the embedded CoALM-IT sample's held-out split (the demo's before/after)
}


def get_task(name: str):
    if name not in REGISTRY:
        raise ValueError(f"unknown benchmark {name!r}; choose one of: {', '.join(REGISTRY)}")
    return importlib.import_module(REGISTRY[name])


def evaluate(bench: str, out, quiet: bool = True, **flags) -> dict:
    """Run one benchmark as `python -m coalm.eval --bench BENCH --out OUT --flag value ...` does and return its
    report. Flags use the CLI names with underscores (`model=`, `adapter=`, `limit=`, `max_new_tokens=`); True
    gives a bare flag, None and False leave it out."""
    from coalm.eval.__main__ import run

    argv = ["--bench", bench, "--out", str(out)]
    for key, value in flags.items():
        if value is None or value is False:
            continue
        argv += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        run(argv)
    return json.loads(Path(out).read_text(encoding="utf-8"))
