"""Reports before and after a refactor of coalm.eval: the same prompts, items, verdicts and scores.

    python tests/coalm/eval_snapshot.py save DIR      # before: scripted-model runs of every benchmark and style
    python tests/coalm/eval_snapshot.py compare DIR   # after: the same runs again; any difference is printed, rc 1

Each run goes through the CLI (`python -m coalm.eval`) with the model replaced by a scripted one: it answers each
prompt with its gold output, a wrong or malformed one, or nothing, chosen by a hash of the prompt, so every verdict
kind shows up. `save` keeps the answer of every prompt; `compare` answers from that map only, so a prompt that
changed fails the run. Both the generating run and a `--responses` rescoring of its saved outputs are compared
(everything but the report's `meta`, which names paths and times). Needs the shared data (../shared/data).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sys
from pathlib import Path
from typing import ClassVar

from coalm.data import formats as F
from coalm.eval import backends
from coalm.eval.__main__ import run

CONFIGS = {  # name -> CLI flags (the model path adds --model scripted; --responses the saved file)
    "bfcl-official": ["--bench", "bfcl", "--per-category-limit", "3"],
    "bfcl-coalm": ["--bench", "bfcl", "--per-category-limit", "3", "--prompt-style", "coalm", "--category",
                   "simple,irrelevance,parallel,multiple,parallel_multiple,live,multi_turn_base,multi_turn_miss_func"],
    "api-bank-official": ["--bench", "api-bank", "--limit", "40"],
    "api-bank-coalm": ["--bench", "api-bank", "--limit", "40", "--prompt-style", "coalm"],
    "api-bank-l2": ["--bench", "api-bank", "--apibank-levels", "2", "--limit", "20"],
    "multiwoz-official": ["--bench", "multiwoz", "--limit", "40"],
    "multiwoz-coalm": ["--bench", "multiwoz", "--limit", "40", "--prompt-style", "coalm"],
    "multiwoz-response": ["--bench", "multiwoz", "--multiwoz-task", "response", "--limit", "40"],
    "sample": ["--bench", "sample", "--limit", "40"],
}
SUITE = ["--suite", "coalm", "--model", "scripted", "--limit-per-bench", "3", "--prompt-style", "coalm"]
WRONG = ['[{"name": "nope", "arguments": {}}]', "System: I do not know.", "[f(x=1)]", '{"hotel": {}}', "```json\n[",
         "I cannot help with that."]


def _h(conv) -> int:
    return int(hashlib.sha256(json.dumps(conv, sort_keys=True).encode()).hexdigest()[:8], 16)


def _gold(ex: dict, style: str) -> str | None:
    if "answer" in ex:
        answer = ex["answer"]
        if answer is not None and not (isinstance(answer, list) and all(isinstance(a, dict) for a in answer)):
            return None  # multi-turn: several steps per item, answered from the wrong pool
        calls = [] if answer is None else [
            (n, {k: next(v for v in acc if v != "") for k, acc in p.items() if any(v != "" for v in acc)})
            for n, p in (next(iter(a.items())) for a in answer if isinstance(a, dict))]
        if style == "coalm":
            return F.la_output([{"name": n, "arguments": a} for n, a in calls])
        if answer is None:
            return "I cannot help with that."
        return "[" + ", ".join(n + "(" + ", ".join(f"{k}={v!r}" for k, v in a.items()) + ")" for n, a in calls) + "]"
    if "gold" in ex:
        g = ex["gold"]
        if "api_name" in g:
            from coalm.eval.api_bank import render_call

            return (F.la_output([{"name": g["api_name"], "arguments": g["param_dict"]}]) if style == "coalm"
                    else render_call(g["api_name"], g["param_dict"]))
        return ("System: " if style == "coalm" else "") + g.get("text", "")
    if "gold_state" in ex:
        state = ex["gold_state"]
        if style == "coalm":
            d = next(iter(state), "hotel")
            return F.dst_output(d, state.get(d, {}))
        return json.dumps(state)
    if "output" in ex:
        return ex["output"]
    return None


class Scripted:
    """Stands in for backends.LocalBackend: answers from `answers` (compare) or invents and records them (save)."""

    answers: ClassVar[dict] = {}
    gold: ClassVar[dict] = {}
    recording = True

    def __init__(self, *a, **k):
        self.name = "scripted"

    def chat(self, conversations, max_new_tokens):
        out = []
        for conv in conversations:
            key = json.dumps(conv, sort_keys=True, ensure_ascii=False)
            if not self.recording:
                if key not in self.answers:
                    raise SystemExit(f"prompt not seen before: {key[:300]}")
                out.append(self.answers[key])
                continue
            h = _h(conv)
            gold = self.gold.get(key)
            text = gold if gold is not None and h % 3 else ("" if h % 7 == 0 else WRONG[h % len(WRONG)])
            self.answers[key] = text
            out.append(text)
        return out


def _strip(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "meta"}


def _run(argv) -> dict:
    out = argv[argv.index("--out") + 1]
    with contextlib.redirect_stdout(io.StringIO()):
        rc = run(argv)
    assert rc == 0, argv
    return _strip(json.loads(Path(out).read_text(encoding="utf-8")))


def _gold_map(flags) -> dict:
    from coalm.eval.base import data_root

    try:
        from coalm.eval.registry import get_task
    except ImportError:  # the code before the refactor: a module per benchmark, options as argparse flags
        from coalm.eval import get_task
        from coalm.eval.__main__ import _parser

        task = get_task(flags[flags.index("--bench") + 1])
        args = _parser(task).parse_args(flags + ["--model", "x"])
        return {json.dumps(ex["messages"], sort_keys=True, ensure_ascii=False): _gold(ex, args.prompt_style)
                for ex in task.load_examples(data_root(None), args)}

    opts = dict(zip((f.removeprefix("--").replace("-", "_") for f in flags[::2]), flags[1::2]))
    task = get_task(opts.pop("bench"))
    style = opts.pop("prompt_style", "official")
    opts.pop("limit", None)
    return {json.dumps(ex["messages"], sort_keys=True, ensure_ascii=False): _gold(ex, style)
            for ex in task.load(data_root(None), task.Options(**opts), style)}


def _suite(folder: Path) -> dict:
    from coalm.eval import suite

    with contextlib.redirect_stdout(io.StringIO()):
        rc = suite.main(SUITE + ["--out", str(folder)])
    assert rc == 0
    return json.loads((folder / "scorecard.json").read_text())["models"]


def main(mode: str, folder: str) -> int:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    backends.LocalBackend = Scripted
    bad = 0
    for name, flags in CONFIGS.items():
        work = folder / ("now" if mode == "compare" else "then") / name
        work.mkdir(parents=True, exist_ok=True)
        if mode == "save":
            Scripted.recording, Scripted.answers = True, {}
            Scripted.gold.update(_gold_map(flags))
        else:
            Scripted.recording = False
            Scripted.answers = json.loads((folder / f"{name}.answers.json").read_text(encoding="utf-8"))
        gen = _run(flags + ["--model", "scripted", "--out", str(work / "report.json")])
        responses = next(work.glob("report.responses*"))
        rescored = _run(flags + ["--responses", str(responses), "--out", str(work / "rescored.json")])
        if mode == "save":
            (folder / f"{name}.answers.json").write_text(json.dumps(Scripted.answers, ensure_ascii=False))
            (folder / f"{name}.json").write_text(json.dumps({"generated": gen, "rescored": rescored}, indent=1))
            print(f"{name}: {len(gen['items'])} items, summary {json.dumps(gen['summary'])[:150]}")
            continue
        then = json.loads((folder / f"{name}.json").read_text())
        for kind, now in (("generated", gen), ("rescored", rescored)):
            same = json.dumps(now, indent=1) == json.dumps(then[kind], indent=1)
            bad += not same
            print(f"{name} {kind}: {'same' if same else 'DIFFERENT'} ({len(now['items'])} items)")
    # the suite (CoALM style) answers from every prompt seen above plus its own
    work = folder / ("now" if mode == "compare" else "then") / "suite"
    if mode == "save":
        Scripted.recording, Scripted.answers = True, {}
        (folder / "suite.json").write_text(json.dumps(_suite(work), indent=1))
        (folder / "suite.answers.json").write_text(json.dumps(Scripted.answers, ensure_ascii=False))
    else:
        Scripted.recording = False
        Scripted.answers = json.loads((folder / "suite.answers.json").read_text(encoding="utf-8"))
        same = json.dumps(_suite(work), indent=1) == (folder / "suite.json").read_text()
        bad += not same
        print(f"suite scorecard: {'same' if same else 'DIFFERENT'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
