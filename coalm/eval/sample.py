"""The embedded CoALM-IT sample's held-out split as a benchmark: exact match per CoALM-IT format.

    python -m coalm.eval --bench sample --model smollm2-135m --adapter runs/demo/adapter --max-new-tokens 64

Formats and their parsed comparison: function-calling JSON lists (`la`, order-free), dialogue-state JSON (`dst`),
ReAct actions (`cra_action`) and templated replies (`cra_response`). The prediction must be the whole output: text
around a JSON list makes it unparsable. Needs no data root (the sample ships in engine/data/sample/).
Saved outputs: JSON Lines `{"id", "result"}` (the row's meta id and the model's text), as BFCL's result files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from coalm.data import formats as F
from coalm.data import load_sample
from coalm.eval.base import EvalError, read_jsonl
from coalm.eval.task import Task
from engine.data.render import messages

RESPONSES_SUFFIX = ".jsonl"


def _canon_calls(calls: list[dict]) -> list:
    return sorted(json.dumps(c, sort_keys=True, ensure_ascii=False) for c in calls)


def _parse(fmt: str, text: str):
    if fmt == "la":
        calls = F.parse_calls(text)
        return None if calls is None else _canon_calls(calls)
    if fmt == "dst":
        return F.parse_dst(text)
    if fmt == "cra_action":
        return F.parse_action(text)
    if fmt == "cra_response":
        t = text.strip()
        return " ".join(t[len("System:"):].split()) if t.startswith("System:") else None
    return None


def score_sample(rows: list[dict], predictions: list[str]) -> dict:
    """Exact match per format on parsed outputs: {format: {"n", "parsed", "exact"}, ..., "overall": {...}};
    `parsed` counts predictions in the right shape, `exact` those equal to the reference after parsing (rates are
    fractions of n)."""
    return _score(rows, predictions)[0]


def _score(rows: list[dict], predictions: list) -> tuple[dict, list[dict]]:
    if len(rows) != len(predictions):
        raise EvalError(f"score_sample: {len(rows)} rows but {len(predictions)} predictions")
    stats: dict[str, dict] = {}
    items = []
    for row, pred in zip(rows, predictions):
        fmt = F.row_format(row)
        ref = _parse(fmt, row["output"])
        rid = (row.get("meta") or {}).get("id")
        if ref is None:
            raise EvalError(f"score_sample: reference output of row {rid} does not parse as {fmt}")
        got = _parse(fmt, pred if isinstance(pred, str) else "")
        s = stats.setdefault(fmt, {"n": 0, "parsed": 0, "exact": 0})
        s["n"] += 1
        s["parsed"] += got is not None
        s["exact"] += got is not None and got == ref
        verdict = "correct" if got is not None and got == ref else "wrong" if got is not None else "unparsable"
        items.append({"id": rid, "format": fmt, "verdict": verdict, "error": None if verdict == "correct" else verdict})
    total = {k: sum(s[k] for s in stats.values()) for k in ("n", "parsed", "exact")}
    out = {}
    for fmt, s in sorted(stats.items()) + [("overall", total)]:
        n = max(s["n"], 1)
        out[fmt] = {"n": s["n"], "parsed": s["parsed"] / n, "exact": s["exact"] / n}
    return out, items


# ---- the coalm.eval task interface -------------------------------------------------------------------------------
def load_examples(data_root=None, options=None, style: str = "official") -> list[dict]:
    """The held-out rows; they carry their own CoALM-IT prompts, so the prompt style changes nothing."""
    return [{"id": r["meta"]["id"], "messages": messages(r), "row": r, "style": style} for r in load_sample("eval")]


def read_responses(path) -> dict:
    return {r["id"]: r["result"] for r in read_jsonl(path, keys=("id", "result"))}


def write_responses(path, examples: list[dict], responses: dict) -> Path:
    lines = [json.dumps({"id": ex["id"], "result": responses[ex["id"]]}, ensure_ascii=False)
             for ex in examples if ex["id"] in responses]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(ln + "\n" for ln in lines), encoding="utf-8")
    return Path(path)


def evaluate(examples: list[dict], responses: dict) -> dict:
    """A missing response scores as unparsable."""
    summary, items = _score([ex["row"] for ex in examples], [responses.get(ex["id"], "") for ex in examples])
    return {"summary": summary, "items": items}


class SampleTask(Task):
    name = "sample"
    styles = ("official", "coalm")  # the rows' own prompts either way
    responses_suffix = RESPONSES_SUFFIX
    module = sys.modules[__name__]  # load_examples, read_responses, write_responses, evaluate, ...


TASK = SampleTask()
