"""API-Bank level-1 (API descriptions given) and level-2 (ToolSearcher) evaluation, scored offline.

Samples follow the official construction (`api-bank/evaluator.py`, `Sample.from_chat_history`): in each dialogue file,
every `API` line i yields two samples, history[:i] -> line i, then history[:i+1] -> line i+1. A sample's `id` is its
index in that list; its kind comes from the role of its target: `API` -> "api_call" (scored by call accuracy, "Rate"),
`AI` -> "response" (Rouge-L); the few samples whose target is a `User` line are scored by neither (as officially) and
are not loaded. Prompts and the history rendering are the official ones; level-2 call samples see only the
ToolSearcher description. The official prompt lists the dialogue's APIs from a Python set (order varies run to run);
we list them in order of first use.

Calls (parsing and value rules: `coalm.eval.api_bank.calls`) are parsed as the official `parse_api_call` does
(regexes only; nothing is evaluated): the first `[Name(...)]` on one line, then `key='v'` / `key="v"` (value up to
the next quote of either kind), `key=[...]` (greedy) or `key=word`; every value is a string.

Call accuracy. The official scorer runs the call on simulated back-ends and applies each API class's
`check_api_call_correctness`. Offline we compare the parsed call with the gold call: same API name, same parameter
names (a predicted parameter the API marks "[Optional]" may be added), and every value equal under its rule:
  exact      string equality (tokens, passwords, ids, urls; times the official code strptime-checks, then compares)
  strip      equality after strip (patient/doctor names, appointment ids)
  upper      upper()+strip (user_id, stock_code)      lower   strip()+lower() (symptom, search keywords)
  date       strip, zero-fill a short year, parse %Y-%m-%d, compare normalised (so "2023-3-5" == "2023-03-05")
  datetime   the same with %Y-%m-%d %H:%M:%S            month_day  %Y-%m-%d or %m-%d, compared as %m-%d
  strict_datetime  equal strings that also parse as %Y-%m-%d %H:%M:%S (no other format is accepted)
  words / words_lower  word-set Jaccard (split on " ", optionally lowercased) > 0.5 (free-text content/topics)
  list       both parsed as JSON after ' -> " and equal;  health  list of {name, value} compared as sorted strings
  int / bool the official type conversion (digits -> int; "True" -> True);  ignore  not compared
`_RULES` names, per API, the parameters whose rule is not `exact`; `_RULE_SOURCE` says whether the rule was read
from the API's official class ("official") or inferred from a sibling API of the same family ("inferred"), or
approximates a check that needs the network or an embedding model ("approx": Dictionary, Translate, SearchEngine,
Wiki, ToolSearcher, DocumentQA, Calculator). Known departures, by design: DeleteMeeting's official check reads a
missing `time` key and so fails every successful call; gold TimedSwitch/CancelTimedSwitch calls use `device_id`,
which the official API rejects. Ours accepts the gold call in every case (the report counts gold calls that pass).

Text metrics: response samples get Rouge-L F (`rouge` package, the official choice; empty/degenerate -> 0). Call
samples additionally get the CoALM paper's LLaMA-Factory metrics (Rouge-1/2/L, BLEU-4) of the raw output against
the gold call rendered as `[Name(key='value', ...)]` (see `_text_metrics`).

Examples: "id" is "<file>#<index>" (unique across files; the CLI keys responses by it), "index" the official sample
index within the file, plus "file", "level", "kind", "messages", "gold". Saved outputs: JSONL rows
{"file", "id": index, "pred"}, the official sample index as "id".
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from coalm.eval._text_metrics import llamafactory_scores, rouge_f

# Call parsing and the value rules live in `calls`; re-exported here, where the tests find them.
from coalm.eval.api_bank import coalm_style
from coalm.eval.api_bank.calls import (  # noqa: F401
    _PARAM_RE,
    _RULES,
    MAX_CALL_CHARS,
    _call_match,
    _json_list,
    check_call,
    extract_call,
    parse_api_call,
    render_call,
    rule_source,
    value_matches,
)
from coalm.eval.base import EvalError, benchmark_dir, clip, read_jsonl
from coalm.eval.options import opt
from coalm.eval.task import HandlerError, Task

LEVEL_DIRS = {1: "level-1-given-desc", 2: "level-2-toolsearcher"}
KINDS = ("api_call", "response")
RESPONSES_SUFFIX = ".jsonl"

API_CALL_PROMPT = """
Based on the given API description and the existing conversation history 1..t, please generate the API request that the AI should call in step t+1 and output it in the format of [ApiName(key1='value1', key2='value2', ...)], replace the ApiName with the actual API name, and replace the key and value with the actual parameters. 
Your output should start with a square bracket "[" and end with a square bracket "]". Do not output any other explanation or prompt or the result of the API call in your output. 
This year is 2023.
Input: 
User: [User's utterence]
AI: [AI's utterence]

Expected output:
[ApiName(key1='value1', key2='value2', ...)]

API descriptions:
"""

RESPONSE_PROMPT = """
Based on the given API description and the existing conversation history 1..t, please generate the next dialog that the AI should response after the API call t.
This year is 2023.
Input: 
User: [User's utterence]
AI: [AI's utterence]
[ApiName(key1='value1', key2='value2', \u2026)]

Expected output:
AI: [AI's utterence]

API descriptions:
"""

def render_history_item(item: dict) -> dict:
    """One dialogue line as the official evaluator feeds it to the model."""
    role = item["role"]
    if role == "User":
        return {"role": "user", "content": item["text"]}
    if role == "AI":
        return {"role": "assistant", "content": item["text"]}
    if role == "API":
        args = ", ".join(f"{k}='{v}'" for k, v in item["param_dict"].items())
        return {"role": "system", "content": f"[{item['api_name']}({args})] Response: {item['result']['output']}"}
    raise EvalError(f"invalid chat role {role!r}; expected User, AI or API")


# ---------------------------------------------------------------- the module interface

@dataclass
class Options:
    apibank_levels: str = opt("1,2", "API-Bank levels to score: 1, 2 or 1,2")
    apibank_kinds: str = opt("api_call,response", "API-Bank sample kinds: api_call (Rate), response (Rouge-L), or both")


def _csv_choice(text: str, valid, what: str, cast=str):
    out = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            val = cast(part)
        except ValueError:
            val = None
        if val not in valid:
            raise EvalError(f"bad {what} {part!r}; choose from {', '.join(map(str, valid))}")
        out.append(val)
    return out


def _read_dialogue(path: Path) -> list[dict]:
    return read_jsonl(path, keys=("role",))


def official_samples(rows: list[dict]) -> list[tuple[list[dict], dict]]:
    """(history, target) pairs in the official order; the index in this list is the sample id."""
    out = []
    for i, item in enumerate(rows):
        if item["role"] == "API":
            out.append((rows[:i], item))
            if i + 1 < len(rows):
                out.append((rows[: i + 1], rows[i + 1]))
    return out


def load_examples(data_root, options: Options | None = None, style: str = "official") -> list[dict]:
    options = options or Options()
    root = benchmark_dir(data_root, "apibank")
    levels = _csv_choice(options.apibank_levels, tuple(LEVEL_DIRS), "API-Bank level", int)
    kinds = _csv_choice(options.apibank_kinds, KINDS, "API-Bank kind")
    desc_path = root / "api_descriptions.json"
    if not desc_path.is_file():
        raise EvalError(f"missing {desc_path}")
    descs = {d["name"]: d for d in json.loads(desc_path.read_text())}

    def describe(name):
        if name not in descs:
            raise EvalError(f"API {name!r} has no entry in {desc_path}")
        d = descs[name]
        return json.dumps({k: d[k] for k in ("name", "description", "input_parameters", "output_parameters")})

    examples = []
    for level in levels:
        folder = root / "lv1-lv2-samples" / LEVEL_DIRS[level]
        if not folder.is_dir():
            raise EvalError(f"missing {folder}")
        for path in sorted(folder.glob("*.jsonl")):
            rows = _read_dialogue(path)
            apis = list(dict.fromkeys(r["api_name"] for r in rows if r["role"] == "API"))
            for sid, (history, target) in enumerate(official_samples(rows)):
                kind = {"API": "api_call", "AI": "response"}.get(target["role"])
                if kind not in kinds:
                    continue
                if kind == "api_call":
                    api_text = describe("ToolSearcher") if level == 2 else "\n".join(map(describe, apis))
                    prompt = API_CALL_PROMPT + api_text
                    gold = {"api_name": target["api_name"], "param_dict": target["param_dict"]}
                else:
                    prompt = RESPONSE_PROMPT + "\n".join(map(describe, apis))
                    gold = {"text": target["text"]}
                messages = [{"role": "system", "content": prompt}] + [render_history_item(h) for h in history]
                if style == "coalm":  # CoALM-IT formats (coalm_style): LA calls, CRA replies
                    shown = [descs[n] for n in (["ToolSearcher"] if level == 2 and kind == "api_call" else apis)]
                    messages = (coalm_style.apibank_call_messages if kind == "api_call"
                                else coalm_style.apibank_response_messages)(history, shown)
                examples.append({"id": f"{path.name}#{sid}", "index": sid, "file": path.name, "level": level,
                                 "kind": kind, "messages": messages, "gold": gold, "style": style,
                                 "api_desc": descs.get(gold.get("api_name"))})
                if style == "coalm" and kind == "api_call":  # the APIs the prompt shows (--constrained on)
                    examples[-1]["shown"] = shown
    return examples


def test_queries(root) -> list[str]:
    """The `User` lines of every level-1/level-2 test dialogue under `<root>/apibank` ([] when absent), for keeping
    them out of training data."""
    folder = Path(root) / "apibank" / "lv1-lv2-samples"
    return [r["text"] for p in sorted(folder.glob("*/*.jsonl")) for r in _read_dialogue(p) if r["role"] == "User"]


test_queries.__test__ = False  # a data function, not a pytest test


def read_responses(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"responses file {path} not found")
    return {f"{row['file']}#{row['id']}": str(row["pred"]) for row in read_jsonl(path, keys=("file", "id", "pred"))}


def responses_from_texts(examples: list[dict], texts: list[str]) -> dict:
    """texts[i] belongs to examples[i]; a shorter list (a run still generating) covers the first examples."""
    if len(texts) > len(examples):
        raise EvalError(f"{len(texts)} generated texts for {len(examples)} examples")
    return {ex["id"]: t for ex, t in zip(examples, texts)}


def write_responses(path, examples: list[dict], responses: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for ex in examples:
            if ex["id"] in responses:
                row = {"file": ex["file"], "id": ex["index"], "pred": responses[ex["id"]]}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def _check_pred(ex: dict, pred: str):
    """(correct, error type) of a call sample's output, read in the sample's prompt style."""
    g = ex["gold"]
    if ex.get("style") == "coalm":  # the LA JSON list (coalm_style)
        try:
            parsed = coalm_style.apibank_call(pred)
        except HandlerError:
            return False, "decoder_failed"
    else:
        parsed = parse_api_call(pred)
    return check_call(parsed, g["api_name"], g["param_dict"], ex["api_desc"])


# ROUGE (the `rouge` package) is quadratic in pure Python: longer outputs are cut for it. A response keeps 1,500
# characters (a reply is a sentence or two); the LlamaFactory text metrics of a call keep 500 (a call is ~100).
MAX_METRIC_CHARS = 1500
MAX_CALL_METRIC_CHARS = 500


def _score_one(ex: dict, pred, item: dict, stats: dict) -> None:
    """Score one sample into `item` and the level's `stats`. The call is parsed from the whole output (linear
    time); ROUGE and the text metrics see its first MAX_METRIC_CHARS characters."""
    if pred is not None and not isinstance(pred, str):
        pred = str(pred)
    if ex["kind"] == "api_call":
        g = ex["gold"]
        if pred is None:
            ok, err = False, "missing_output"
            stats["missing"] += 1
        else:
            ok, err = _check_pred(ex, pred)
            gold_text = render_call(g["api_name"], g["param_dict"])
            stats["lf"].append(llamafactory_scores(pred[:MAX_CALL_METRIC_CHARS], gold_text))
        stats["calls"].append(ok)
        item.update(verdict="correct" if ok else "incorrect", error_type=err)
    else:
        if pred is None:
            score, err = 0.0, "missing_output"
            stats["missing"] += 1
        else:
            if ex.get("style") == "coalm":
                pred = coalm_style.apibank_reply(pred)  # the reply after "System:"
            score, err = (rouge_f(pred[:MAX_METRIC_CHARS], ex["gold"]["text"]) if pred.strip() else 0.0), None
        stats["rouge"].append(score)
        item.update(score=score, error_type=err)


def evaluate(examples: list[dict], responses: dict) -> dict:
    items = []
    per_level = {}
    gold_pass = gold_total = 0
    for ex in examples:
        pred = responses.get(ex["id"])
        item = {"id": ex["id"], "file": ex["file"], "index": ex["index"], "level": ex["level"], "kind": ex["kind"]}
        stats = per_level.setdefault(ex["level"], {"calls": [], "rouge": [], "lf": [], "missing": 0})
        if ex["kind"] == "api_call":
            g = ex["gold"]
            gold_ok, _ = check_call((g["api_name"], g["param_dict"]), g["api_name"], g["param_dict"], ex["api_desc"])
            gold_pass, gold_total = gold_pass + gold_ok, gold_total + 1
            item["rule_source"] = rule_source(g["api_name"])
        try:
            _score_one(ex, pred, item, stats)
        except Exception as e:  # noqa: BLE001 - one sample's failure is that sample's error, never the run's end
            item.update(error_type="scorer_error", error=clip(f"{type(e).__name__}: {e}"))
            if ex["kind"] == "api_call":
                item["verdict"] = "incorrect"
                stats["calls"].append(False)
            else:
                item["score"] = 0.0
                stats["rouge"].append(0.0)
        items.append(item)
    summary = {"benchmark": "api-bank", "levels": {}}
    for level, s in sorted(per_level.items()):
        lf = {m: _mean([x[m] for x in s["lf"]]) for m in ("rouge-1", "rouge-2", "rouge-l", "bleu-4")}
        summary["levels"][f"level-{level}"] = {
            "api_calls": len(s["calls"]),
            "rate": _mean([float(c) for c in s["calls"]]),
            "response_samples": len(s["rouge"]),
            "rouge_l": _mean(s["rouge"]),
            "call_text_metrics_llamafactory": lf if s["lf"] else None,
            "missing_outputs": s["missing"],
        }
    summary["gold_calls_passing_our_check"] = f"{gold_pass}/{gold_total}"
    summary["call_check"] = ("offline comparison with the gold call under the official per-API value rules "
                             "(not execution on the simulated back-ends)")
    summary["calls_by_rule_source"] = {
        src: sum(1 for it in items if it.get("rule_source") == src) for src in ("official", "inferred", "approx")}
    return {"summary": summary, "items": items}


class ApiBankTask(Task):
    name = "api-bank"
    Options = Options
    styles = ("official", "coalm")
    responses_suffix = RESPONSES_SUFFIX
    module = sys.modules[__name__]  # load_examples, read_responses, write_responses, evaluate, ...

    def constraint(self, example):
        # a call sample's LA answer: >= 1 call of the APIs shown, their argument names, the non-optional ones
        # required; "str" arguments are strings, other values stay free (API-Bank compares them as strings)
        if "shown" not in example:
            return None
        tools = []
        for d in example["shown"]:
            params = d.get("input_parameters") or {}
            required = [k for k, p in params.items() if not str(p.get("description", "")).startswith("[Optional]")]
            props = {k: {"type": "string"} if p.get("type") == "str" else {} for k, p in params.items()}
            tools.append({"name": d["name"], "parameters": {"type": "object", "properties": props,
                                                            "required": required}})
        return {"tools": tools, "tool_choice": "required", "fmt": "la"}


TASK = ApiBankTask()
