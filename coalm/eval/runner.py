"""The one generation loop of coalm.eval: examples -> model outputs, with a prompt-keyed per-item cache.

    outcome = generate(task, examples, backend, max_new_tokens=256, chunk=8, cache=ItemCache(path))
    outcome.responses   # {id: output}, every item answered (from the cache or the backend)
    outcome.errors      # {id: message} for items whose request failed (not cached: a rerun tries them again)

Single benchmarks (`coalm.eval.evaluate`) and the suite both run through `generate`. The cache is JSON Lines
`{"id", "prompt", "text"}`, appended after every chunk: `prompt` is a fingerprint of what the item's output depends
on, so a rerun reuses an output only for the very prompt that produced it (another prompt style, other data or a
changed prompt template regenerate the item), and a stopped run resumes where it stopped. A backend may return an
`ItemError` in place of a text (coalm.eval.backends); such items are recorded, the run goes on, and `max_errors` of
them stop it early.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from coalm.eval.backends import is_rank0
from coalm.eval.base import ItemError, json_text


def prompt_key(prompt) -> str:
    """A fingerprint of one item's prompt: cached text is reused only for the very prompt it answered."""
    return hashlib.sha256(json.dumps(prompt, ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:16]


class ItemCache:
    """Per-item outputs on disk, keyed by example id and prompt fingerprint (see the module docstring)."""

    def __init__(self, path):
        self.path = Path(path)

    def load(self, keys: dict[str, str]) -> dict:
        """{id: output} of the cached rows whose prompt fingerprint is `keys[id]` (a later row for an id wins)."""
        done = {}
        if not self.path.is_file():
            return done
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # a line cut by a killed run: that item is generated again
                continue
            if isinstance(row, dict) and "text" in row and row.get("prompt") == keys.get(row.get("id")):
                done[row["id"]] = row["text"]
        return done

    def add(self, rows: list[tuple[str, str, object]]) -> None:
        if not rows or not is_rank0():  # under torchrun every rank holds all outputs; one writes them
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json_text({"id": i, "prompt": k, "text": t}) + "\n" for i, k, t in rows))


@dataclass
class Outcome:
    responses: dict = field(default_factory=dict)  # {id: output}, in no particular order
    errors: dict = field(default_factory=dict)  # {id: message}
    stopped: str | None = None  # why generation stopped early (max_errors), else None


def generate(task, examples: list[dict], backend, *, max_new_tokens: int, chunk: int, cache: ItemCache | None = None,
             max_errors: int | None = None, longest_first: bool = False, on_chunk=None, desc: str = "",
             settings=None) -> Outcome:
    """Outputs for `examples`: cached ones reused, the others asked `chunk` conversations per `backend.chat` call
    (in input order, or longest prompts first so that a batch holds similar lengths), multi-step items through
    `task.generate_multi`. `on_chunk(outcome)` runs after every chunk (e.g. to save the outputs so far).
    `settings` (the model, dtype, output budget...) join each item's fingerprint: outputs cached under other settings
    are not reused."""
    from tqdm import tqdm

    keys = {ex["id"]: prompt_key(task.prompt(ex) if settings is None else [task.prompt(ex), settings])
            for ex in examples}
    out = Outcome(responses=cache.load(keys) if cache is not None else {})
    todo = [ex for ex in examples if ex["id"] not in out.responses]
    single = [ex for ex in todo if not task.multi_step(ex)]
    multi = [ex for ex in todo if task.multi_step(ex)]
    if longest_first:
        single.sort(key=lambda ex: -sum(len(m["content"]) for m in ex["messages"]))
    chunk = max(1, int(chunk))

    def record(pairs) -> None:
        rows = []
        for ex, value in pairs:
            if isinstance(value, ItemError):
                out.errors[ex["id"]] = str(value)
            else:
                out.responses[ex["id"]] = value
                out.errors.pop(ex["id"], None)
                rows.append((ex["id"], keys[ex["id"]], value))
        if cache is not None:
            cache.add(rows)
        if max_errors is not None and len(out.errors) >= max_errors and out.stopped is None:
            out.stopped = f"stopped after {len(out.errors)} failed items (--max-errors {max_errors})"

    bar = tqdm(total=len(examples), initial=len(examples) - len(todo), desc=desc or f"{task.name} generate",
               unit="ex", disable=not is_rank0() or not todo)
    for i in range(0, len(single), chunk):
        batch = single[i:i + chunk]
        constraints = [ex.get("constraint") for ex in batch]
        if any(constraints):  # engine.structured: a grammar per conversation (backends without it never get one)
            texts = backend.chat([ex["messages"] for ex in batch], max_new_tokens=max_new_tokens,
                                 constraints=constraints)
        else:
            texts = backend.chat([ex["messages"] for ex in batch], max_new_tokens=max_new_tokens)
        record(zip(batch, texts))
        bar.update(len(batch))
        if on_chunk is not None:
            on_chunk(out)
        if out.stopped:
            break
    if multi and not out.stopped:
        finished: set = set()

        def on_step(results: dict, failed: dict) -> None:
            new = [ex for ex in multi if ex["id"] not in finished and (ex["id"] in results or ex["id"] in failed)]
            finished.update(ex["id"] for ex in new)
            record([(ex, results[ex["id"]] if ex["id"] in results else ItemError(failed[ex["id"]])) for ex in new])
            bar.update(len(new))
            if on_chunk is not None:
                on_chunk(out)

        task.generate_multi(multi, backend, max_new_tokens, on_step=on_step)
    bar.close()
    return out
