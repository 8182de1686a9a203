"""Benchmark evaluators (BFCL V3, API-Bank, MultiWOZ, the CoALM-IT sample) behind one pipeline.

    from coalm.eval import evaluate
    report = evaluate("bfcl", "reports/bfcl.json", model="smollm2-135m", category="simple", limit=8)
    report = evaluate("api-bank", responses="preds.jsonl", style="coalm")

`evaluate` is what `python -m coalm.eval --bench ...` runs; `coalm.eval.registry` names the benchmarks, each a
`coalm.eval.task.Task` beside its data code; `coalm.eval.runner` is the one generation loop (with its per-item
cache), shared with the suite (`python -m coalm.eval --suite coalm`).
"""

from coalm.eval.pipeline import evaluate  # noqa: F401
from coalm.eval.registry import REGISTRY, get_task  # noqa: F401
