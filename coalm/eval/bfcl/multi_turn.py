"""BFCL V3 multi-turn: loading the items and running a model on them, step by step, as the leaderboard does.

Per item (bfcl-eval 2025.6.8, `BaseHandler.inference_multi_turn_prompting` with the Llama prompt handler): the
system prompt lists the docs of the item's API classes (those held back by `miss_func` removed); each turn adds
its user messages (a held-back turn instead gets a user message with the docs of the functions added there,
`DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_PROMPTING`); within a turn the model answers in steps, each step's
calls run on the item's live instances and their results come back as tool messages; the turn ends when a step
does not decode to calls, and a turn that runs past `MAXIMUM_STEP_LIMIT` executed steps ends the item ("forced to
quit": its result then has fewer turns and scores as `multi_turn:force_terminated`).

The saved result of an item is the official one: `[[raw text of each step] for each turn]`.
"""

from __future__ import annotations

from pathlib import Path

from coalm.eval.base import EvalError, ItemError, read_jsonl
from coalm.eval.bfcl.executor import Backends, class_doc_files, decode_execute
from coalm.eval.bfcl.prompts import build_messages


def _limits():
    from bfcl_eval.constants.default_prompts import (
        DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_PROMPTING,
        MAXIMUM_STEP_LIMIT,
    )

    return MAXIMUM_STEP_LIMIT, DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_PROMPTING


def _docs(root: Path, classes: list, cache: dict) -> list[dict]:
    files = class_doc_files()
    out = []
    for cls in classes:
        if cls not in cache:
            path = root / "multi_turn_func_doc" / files.get(cls, f"{cls}.json")
            if not path.is_file():
                raise EvalError(f"missing BFCL multi-turn function docs {path}")
            cache[cls] = read_jsonl(path, keys=("name",))
        out.extend(cache[cls])
    return out


def load_multi_turn(root: Path, cat: str, per_cat: int | None) -> list[dict]:
    path = root / f"BFCL_v3_{cat}.json"
    ans_path = root / "possible_answer" / f"BFCL_v3_{cat}.json"
    for p in (path, ans_path):
        if not p.is_file():
            raise EvalError(f"missing BFCL file {p}")
    rows = read_jsonl(path, keys=("id", "question", "initial_config", "involved_classes"))
    rows = rows[:per_cat] if per_cat else rows
    answers = {r["id"]: r["ground_truth"] for r in read_jsonl(ans_path, keys=("id", "ground_truth"))}
    cache: dict = {}
    examples = []
    for row in rows:
        if row["id"] not in answers:
            raise EvalError(f"{path}: item {row['id']} has no possible answer in {ans_path}")
        if len(answers[row["id"]]) != len(row["question"]):
            raise EvalError(f"{path}: item {row['id']} has {len(row['question'])} turns but "
                            f"{len(answers[row['id']])} ground-truth turns")
        functions = [dict(d) for d in _docs(root, row["involved_classes"], cache)]
        missed = {}
        for turn, names in (row.get("missed_function") or {}).items():
            missed[str(turn)] = [d for d in functions if d["name"] in names]
            functions = [d for d in functions if d["name"] not in names]
        examples.append({
            "id": row["id"], "category": cat, "functions": functions, "missed": missed,
            "turns": row["question"], "initial_config": row["initial_config"],
            "involved_classes": row["involved_classes"], "answer": answers[row["id"]],
            "messages": build_messages(row["question"][0], functions, cat),
        })
    return examples


def long_context(example: dict) -> bool:
    return "long_context" in example["category"] or "composite" in example["category"]


class Run:
    """One item in flight: its conversation, its live instances and its result so far."""

    def __init__(self, example: dict):
        self.ex = example
        self.step_limit, self._more_functions = _limits()
        self.backends = Backends(example["involved_classes"], example["initial_config"], long_context(example))
        self.messages: list[dict] = []
        self.result: list[list[str]] = []
        self.turn, self.steps, self.done, self.forced = -1, 0, False, False
        self._next_turn()

    def _next_turn(self) -> None:
        self.turn += 1
        self.steps = 0
        if self.turn >= len(self.ex["turns"]):
            self.done = True
            return
        msgs = [dict(m) for m in self.ex["turns"][self.turn]]
        if str(self.turn) in self.ex["missed"]:
            # Upstream formats the added docs as they are (no language hint), str() of the list.
            msgs = [{"role": "user", "content": self._more_functions.format(
                functions=self.ex["missed"][str(self.turn)])}]
        if self.turn == 0:
            msgs = build_messages(msgs, self.ex["functions"], self.ex["category"])
        self.messages += msgs
        self.result.append([])

    def step(self, text: str) -> None:
        """Feed one model answer: run its calls, or end the turn when it has none."""
        self.messages.append({"role": "assistant", "content": text})
        self.result[-1].append(text)
        try:
            calls = decode_execute(text)
        except Exception:  # noqa: BLE001 - text that does not decode ends the turn, as upstream
            calls = []
        if not calls:
            self._next_turn()
            return
        self.messages += [{"role": "tool", "content": r} for r in self.backends.execute(calls)]
        self.steps += 1
        if self.steps > self.step_limit:
            self.done = self.forced = True


def generate_multi_turn(examples: list[dict], backend, max_new_tokens: int, on_step=None) -> dict:
    """Run every item to its end, one model call per step with all items still running batched together.

    A backend may answer an `ItemError` (coalm.eval.backends) for one conversation: that item stops and is left out
    of the results. `on_step(finished, failed)` gets, after every step, {id: result} of the items finished so far and
    {id: message} of those that failed."""
    from tqdm import tqdm

    runs = [Run(ex) for ex in examples]
    failed: dict = {}
    bar = tqdm(total=len(runs), desc="bfcl multi-turn", unit="item", disable=len(runs) < 2 and on_step is None)
    step = 0
    while True:
        active = [r for r in runs if not r.done]
        if not active:
            break
        texts = backend.chat([r.messages for r in active], max_new_tokens)
        if len(texts) != len(active):
            raise RuntimeError(f"backend returned {len(texts)} texts for {len(active)} conversations")
        for run, text in zip(active, texts):
            if isinstance(text, ItemError):
                run.done, failed[run.ex["id"]] = True, str(text)
                continue
            run.step(text if isinstance(text, str) else str(text))
        step += 1
        bar.set_postfix(step=step, running=sum(not r.done for r in runs))
        bar.update(sum(r.done for r in active))
        if on_step is not None:
            on_step({r.ex["id"]: r.result for r in runs if r.done and r.ex["id"] not in failed}, dict(failed))
    bar.close()
    return {r.ex["id"]: r.result for r in runs if r.ex["id"] not in failed}


def check_result_shape(result, where: str, max_turns: int | None = None) -> None:
    """A saved multi-turn result: a list of turns, each a list of step texts (an official inference error is
    a string, scored as such)."""
    if isinstance(result, str):
        return
    limit = _limits()[0] + 1
    if not isinstance(result, list) or not all(isinstance(t, list) for t in result):
        raise EvalError(f"{where}: a multi-turn result must be a list of turns, each a list of step texts")
    if max_turns is not None and len(result) > max_turns:
        raise EvalError(f"{where}: {len(result)} turns, but the item has {max_turns}")
    for i, turn in enumerate(result):
        if len(turn) > limit:
            raise EvalError(f"{where}: turn {i} has {len(turn)} steps; at most {limit} fit the step limit")
        if not all(isinstance(s, str) for s in turn):
            raise EvalError(f"{where}: turn {i} holds a step that is not a string")
