"""The benchmarks by name: each entry is a module whose `TASK` is a `coalm.eval.task.Task`. Modules are imported on
use, so that one benchmark's optional dependencies never block another."""

from __future__ import annotations

import importlib

from coalm.eval.base import EvalError

REGISTRY = {
    "bfcl": "coalm.eval.bfcl",
    "api-bank": "coalm.eval.api_bank",
    "multiwoz": "coalm.eval.multiwoz",
    "sample": "coalm.eval.sample",  # the embedded CoALM-IT sample's held-out split (the demo's before/after)
}


def get_task(name: str):
    """The benchmark's `Task`; an unknown name or a benchmark that cannot be imported is an EvalError."""
    if name not in REGISTRY:
        raise EvalError(f"unknown benchmark {name!r}; choose one of: {', '.join(REGISTRY)}")
    try:
        return importlib.import_module(REGISTRY[name]).TASK
    except ImportError as e:
        raise EvalError(f"benchmark {name!r} cannot be loaded: {e}") from None
