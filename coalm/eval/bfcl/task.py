"""BFCL as a coalm.eval task: its options, loading (single- and multi-turn items, either prompt style), result files
(BFCL result JSONL `{"id", "result"}`) and the `Task` the registry serves."""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

from coalm.eval.base import EvalError, benchmark_dir, json_text, read_jsonl_lines
from coalm.eval.bfcl import coalm_style
from coalm.eval.bfcl.aggregate import evaluate  # noqa: F401 (BfclTask.module.evaluate)
from coalm.eval.bfcl.multi_turn import check_result_shape, generate_multi_turn, load_multi_turn
from coalm.eval.bfcl.prompts import (
    GROUPS,
    MULTI_TURN,
    RELEVANCE,
    RESPONSES_SUFFIX,
    SINGLE_TURN,
    _read_jsonl,
    _unique_ids,
    build_messages,
    parse_categories,
)
from coalm.eval.bfcl.queries import test_queries  # noqa: F401 (BfclTask.module.test_queries)
from coalm.eval.options import opt
from coalm.eval.task import Task


@dataclass
class Options:
    category: str = opt("all", f"BFCL categories or groups, comma-separated: {', '.join(GROUPS)}, "
                               f"{', '.join(SINGLE_TURN + MULTI_TURN)}")
    per_category_limit: int | None = opt(None, "keep the first N items of each category", positive=True)


def load_examples(data_root, options: Options | None = None, style: str = "official") -> list[dict]:
    options = options or Options()
    root = benchmark_dir(data_root, "bfcl")
    cats, multi = parse_categories(options.category or "all")
    per_cat = options.per_category_limit
    if style == "coalm" and {"java", "javascript"} & set(cats):
        raise EvalError("--prompt-style coalm covers BFCL's Python categories; java and javascript answers are "
                        "Java/JavaScript source text (use --prompt-style official for them)")
    per_category = []
    for cat in cats:
        examples = []
        per_category.append(examples)
        path = root / f"BFCL_v3_{cat}.json"
        if not path.is_file():
            raise EvalError(f"missing BFCL file {path}")
        rows = _read_jsonl(path)[:per_cat] if per_cat else _read_jsonl(path)
        answers = {}
        if cat not in RELEVANCE:
            ans_path = root / "possible_answer" / f"BFCL_v3_{cat}.json"
            if not ans_path.is_file():
                raise EvalError(f"missing BFCL possible answers {ans_path}")
            answers = {r["id"]: r["ground_truth"] for r in _read_jsonl(ans_path)}
        for uid, row in zip(_unique_ids([r["id"] for r in rows]), rows):
            if cat not in RELEVANCE and row["id"] not in answers:
                raise EvalError(f"{path}: item {row['id']} has no possible answer in {root / 'possible_answer'}")
            examples.append({
                "id": uid, "category": cat, "functions": row["function"], "answer": answers.get(row["id"]),
                "messages": coalm_style.bfcl_messages(row["question"][0], row["function"]) if style == "coalm"
                else build_messages(row["question"][0], row["function"], cat), "style": style,
            })
    per_category += [load_multi_turn(root, cat, per_cat) for cat in multi]
    # Round robin over the categories, each in file order: `--limit N` then samples every category asked for.
    return [ex for group in itertools.zip_longest(*per_category) for ex in group if ex is not None]


# ---------------------------------------------------------------- saved responses (BFCL result JSONL)

class Responses(dict):
    """{item id: saved result}, remembering the file:line of each (for errors found once the items are known)."""

    def __init__(self):
        super().__init__()
        self.where: dict[str, str] = {}


def read_responses(path) -> Responses:
    """BFCL result JSONL `{"id", "result", ...}`, or a directory of official `BFCL_v3_<cat>_result.json` files."""
    path = Path(path)
    files = sorted(path.glob("**/BFCL_v3_*_result.json")) if path.is_dir() else [path]
    if not files:
        raise EvalError(f"no BFCL_v3_*_result.json files under {path}")
    out = Responses()
    for f in files:
        rows = read_jsonl_lines(f, keys=("id",))
        for lineno, row in rows:
            if not isinstance(row["id"], str):
                raise EvalError(f"{f}:{lineno}: 'id' must be a string, got {type(row['id']).__name__}")
            if "result" not in row:
                raise EvalError(f"{f}:{lineno}: row (id {row['id'][:100]}) has no 'result'")
            if row["id"].startswith("multi_turn"):
                check_result_shape(row["result"], f"{f}:{lineno}")
        for uid, (lineno, row) in zip(_unique_ids([r["id"] for _, r in rows]), rows):
            out[uid] = row["result"]
            out.where[uid] = f"{f}:{lineno}"
    return out


def responses_from_texts(examples, texts) -> dict:
    return {ex["id"]: text for ex, text in zip(examples, texts)}


def write_responses(path, examples, responses) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            if ex["id"] in responses:
                f.write(json_text({"id": ex["id"].split("#")[0], "result": responses[ex["id"]]}) + "\n")
    return path


class BfclTask(Task):
    name = "bfcl"
    Options = Options
    styles = ("official", "coalm")
    responses_suffix = RESPONSES_SUFFIX
    module = sys.modules[__name__]  # load_examples, read_responses, write_responses, evaluate, ...

    def multi_step(self, example):
        return "turns" in example

    def constraint(self, example):
        # the LA answer of a single-turn item: a list of calls of its own functions ([] allowed: it may decline)
        if example.get("style") != "coalm" or "turns" in example:
            return None
        from coalm.eval.bfcl.schemas import function_tool

        return {"tools": [function_tool(f, example["category"]) for f in example["functions"]],
                "tool_choice": "auto", "fmt": "la"}

    def prompt(self, example):
        if "turns" in example:  # later turns and the functions added mid-dialogue shape the outputs too
            return {"messages": example["messages"], "turns": example["turns"], "missed": example["missed"]}
        return example["messages"]

    def generate_multi(self, examples, backend, max_new_tokens, on_step=None):
        return generate_multi_turn(examples, backend, max_new_tokens, on_step)


TASK = BfclTask()
