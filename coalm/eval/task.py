"""The benchmark interface: a `Task` subclass beside each benchmark, with its options and its prompt styles.

    task = get_task("bfcl")                                   # coalm.eval.registry
    examples = task.load(data_root, task.Options(category="simple"), style="coalm")
    report = task.score(examples, responses)                  # {"summary": {...}, "items": [...]}

Prompt styles: "official" (the benchmark's own prompts and parsers) and "coalm" (the CoALM-IT formats a model trained
on CoALM-IT data knows); each benchmark keeps its CoALM style in its own package (`<bench>/coalm_style.py`) and says
which styles it builds in `styles`. Examples are dicts with at least "id" and "messages" (the conversation to send)
and the "style" they were built in. Generation is the runner's (`coalm.eval.runner`): one `chat` call per item, or,
for an item that needs several model steps (`multi_step`), the task's `generate_multi`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from coalm.eval.base import EvalError
from engine.tool_formats import ToolFormatError, parse_la

STYLES = ("official", "coalm")


class HandlerError(ValueError):
    """Model output that does not decode in the format it was asked for (scored as wrong, with its error type)."""


def decode_la(text) -> list[dict]:
    """The CoALM style's answer to a call prompt: the first JSON list of {"name", "arguments"} in `text` (a ```
    fence and trailing text are tolerated: `engine.tool_formats.parse_la`, tolerant mode)."""
    try:
        return parse_la(text, tolerant=True)
    except ToolFormatError as e:
        raise HandlerError(str(e)) from None


@dataclass
class NoOptions:
    """A benchmark without options of its own."""


class Task:
    name = ""
    Options = NoOptions
    styles: tuple[str, ...] = ("official",)
    responses_suffix = ".json"  # the benchmark's own saved-output format

    def check_style(self, style: str) -> str:
        if style not in STYLES:
            raise EvalError(f"unknown prompt style {style!r}; choose one of {', '.join(STYLES)}")
        if style not in self.styles:
            raise EvalError(f"{self.name} has no {style!r} prompt style; it has {', '.join(self.styles)}")
        return style

    # The benchmark's module of functions; the methods below call them by these names: load_examples(root, options,
    # style), read_responses(path), write_responses(path, examples, responses), evaluate(examples, responses), and
    # where the benchmark has them, responses_from_texts(examples, texts) and test_queries(root).
    module = None

    def load(self, root: Path, options, style: str = "official") -> list[dict]:
        """The benchmark's examples in `style`; `options` an instance of `self.Options`."""
        return self.module.load_examples(root, options, self.check_style(style))

    def read_responses(self, path) -> dict:
        """{example id: saved model output} from a file in the benchmark's own format."""
        return self.module.read_responses(path)

    def write_responses(self, path, examples: list[dict], responses: dict) -> Path:
        return self.module.write_responses(path, examples, responses)

    def responses_from_texts(self, examples: list[dict], texts: list) -> dict:
        """Generated outputs (texts[i] of examples[i]) as the mapping `read_responses` gives."""
        own = getattr(self.module, "responses_from_texts", None)
        return own(examples, texts) if own else {ex["id"]: t for ex, t in zip(examples, texts)}

    def score(self, examples: list[dict], responses: dict) -> dict:
        return self.module.evaluate(examples, responses)

    def test_queries(self, root) -> list[str]:
        """The benchmark's test-set user texts (kept out of training data); [] when it has none."""
        own = getattr(self.module, "test_queries", None)
        return own(root) if own else []

    # ---- generation hooks (coalm.eval.runner)
    def constraint(self, example: dict) -> dict | None:
        """What `--constrained on` constrains this item's answer to: {"tools", "tool_choice", "fmt"} (a call list
        of the item's tools), {"json_schema", "prefix"} (one JSON value after a fixed text), or None (this task or
        item has no constrained form). engine.structured builds the grammar."""
        return None

    def multi_step(self, example: dict) -> bool:
        """Whether the item needs several model calls (then `generate_multi` runs it)."""
        return False

    def prompt(self, example: dict):
        """What the item's output depends on (fingerprinted by the runner's cache)."""
        return example["messages"]

    def generate_multi(self, examples: list[dict], backend, max_new_tokens: int, on_step=None) -> dict:
        """{id: output} of multi-step items; `on_step(finished, failed)` after every step ({id: output}, {id: msg})."""
        raise NotImplementedError
