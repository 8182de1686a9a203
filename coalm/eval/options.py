"""Evaluation options, each default written once: dataclasses whose fields are both the library's keyword arguments
and the CLI's flags (`max_new_tokens` <-> `--max-new-tokens`).

- `RunOptions`: what every benchmark shares (data root, limit, output budget, batching, the endpoint client);
- `ModelOptions`: how `--model` is loaded in this process;
- each benchmark's own options (`coalm.eval.bfcl.Options`, ...) sit beside it, as small dataclasses of the same kind.

`build(cls, values)` makes an instance from keyword arguments (CLI-style strings are converted to the field's type,
so `limit="8"` works), refusing unknown names with the valid ones listed. `add_flags(group, cls)` adds one flag per
field to an argparse group.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field

from coalm.eval.base import EvalError


def opt(default, help: str, choices=None, positive: bool = False):
    """A dataclass field with its flag's help text (and choices, or a must-be-positive rule)."""
    return field(default=default, metadata={"help": help, "choices": choices, "positive": positive})


@dataclass
class RunOptions:
    data_root: str | None = opt(None, "benchmark data root (default: $COALM_DATA, ../shared/data)")
    limit: int | None = opt(None, "score only the first N examples", positive=True)
    max_new_tokens: int = opt(256, "output budget per model call, in tokens", positive=True)
    batch_size: int = opt(8, "conversations per generate call of --model", positive=True)
    # the endpoint client (--base-url)
    model_name: str | None = opt(None, "model name sent to --base-url (default: its first model)")
    api_key: str | None = opt(None, "bearer token for --base-url (default: $OPENAI_API_KEY)")
    concurrency: int = opt(4, "requests in flight against --base-url", positive=True)
    timeout: float = opt(600.0, "seconds to wait for one --base-url request", positive=True)
    retries: int = opt(4, "retries of a request that failed with 429, 5xx or a connection error (with backoff)")
    retry_backoff: float = opt(0.5, "seconds before the first retry, doubling after each", positive=True)
    max_errors: int | None = opt(None, "stop after this many items failed to generate (default: never; the "
                                       "failed items are recorded in the report)", positive=True)
    max_response_chars: int = opt(100_000, "longer --base-url answers are per-item errors", positive=True)
    constrained: str = opt("off", "on: grammar-constrained decoding of the answers that have a constrained form "
                                  "(--prompt-style coalm: BFCL single-turn items, API-Bank call samples, MultiWOZ DST); "
                                  "with --base-url sent as response_format json_schema", choices=("off", "on"))


@dataclass
class ModelOptions:
    adapter: str | None = opt(None, "LoRA adapter dir to apply to --model")
    quantize: str | None = opt(None, "store --model's base linear weights in NF4", choices=("nf4",))
    dtype: str = opt("auto", "--model's dtype (engine.loader.resolve_dtype); auto: bf16 on GPUs and AVX512-BF16/AMX "
                             "CPUs, else fp32", choices=("auto", "bf16", "fp16", "fp32"))
    tp: int = opt(1, "tensor-parallel degree of --model under torchrun; the replicas (world size / tp) split the "
                     "examples, rank 0 writes the report", positive=True)


def _type(cls, f):
    hint = typing.get_type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _convert(cls, f, value):
    if value is None:
        return value
    kind = _type(cls, f)
    if isinstance(value, bool) and kind is not bool:
        raise EvalError(f"--{f.name.replace('_', '-')} must be {kind.__name__}, got {value!r}")
    try:
        value = kind(value) if kind in (int, float) and not isinstance(value, kind) else value
    except (TypeError, ValueError):
        raise EvalError(f"--{f.name.replace('_', '-')} must be {kind.__name__}, got {value!r}") from None
    if kind is str and not isinstance(value, str):
        value = str(value)
    choices, positive = f.metadata.get("choices"), f.metadata.get("positive")
    if choices and value not in choices:
        raise EvalError(f"--{f.name.replace('_', '-')} must be one of {', '.join(choices)}, got {value!r}")
    if positive and (value < 1 if kind is int else value <= 0):
        raise EvalError(f"--{f.name.replace('_', '-')} must be positive, got {value}")
    if kind is int and value < 0:
        raise EvalError(f"--{f.name.replace('_', '-')} must be >= 0, got {value}")
    return value


def build(cls, values: dict):
    """`cls` from keyword arguments (None keeps the default); unknown names are an EvalError naming the valid ones."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise EvalError(f"unknown option {unknown[0]!r}; valid: {', '.join(names)}")
    return cls(**{k: _convert(cls, names[k], v) for k, v in values.items() if v is not None})


def take(cls, values: dict) -> dict:
    """The entries of `values` that name fields of `cls` (removed from `values`)."""
    return {f.name: values.pop(f.name) for f in dataclasses.fields(cls) if f.name in values}


def add_flags(group, cls, suppress: bool = False) -> None:
    """One flag per field. With `suppress`, an absent flag stays out of the namespace (its default lives in `cls`)."""
    for f in dataclasses.fields(cls):
        kind = _type(cls, f)
        default = argparse.SUPPRESS if suppress else f.default
        shown = "" if f.default is None else f" (default: {f.default})"
        choices = f.metadata.get("choices")
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=default,
                           metavar=None if choices else f.name.upper(), type=kind if kind in (int, float) else str,
                           choices=choices, help=f.metadata["help"] + shown)


def option_choices(cls, name: str):
    """The allowed values of field `name` of `cls` (None when any value goes)."""
    return next(f.metadata.get("choices") for f in dataclasses.fields(cls) if f.name == name)


def flag_names(cls) -> list[str]:
    return [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(cls)]
