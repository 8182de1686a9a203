"""MultiWOZ evaluation: zero-shot dialogue state tracking (JGA, slot F1) and responses (Inform, Success, BLEU).

Data: a MultiWOZ 2.1/2.4 `data.json`-style file `{dialogue_id: {"goal", "log"}}` (the shared copy,
`mwz21_test_shared900.json`, holds 900 MultiWOZ **2.1** test dialogues; every summary carries `data_version`, and a
2.1 number is never a 2.4 number). Dialogues are restricted to `testListFile.txt` when it is present. Ids are
lowercased without ".json" ("sng0073"), as mwzeval expects. One example per system turn: turn t's gold state is the
`metadata` of system turn t (the cumulative state after user turn t), restricted to the usual 30 slots of five
domains (`ONTOLOGY`; book slots are named "book day", ...), values lowercased, the dontcare spellings unified.

Tasks (`--multiwoz-task`): "dst" asks for the state as JSON `{domain: {slot: value}}` given the history up to the user
turn; "response" asks for the next system reply, delexicalised with [name], [phone], ... placeholders. Saved outputs
are the mwzeval dict `{dialogue_id: [{"response", "state", "active_domains"?}, ...]}`, one entry per system turn.
A predicted state keeps its values as written; only domain and slot names are made canonical ("leaveAt", "leave at"
-> "leaveat", "price range" -> "pricerange", "book_day" -> "book day", {"hotel-area": v} accepted) and empty values
("", "none", "not mentioned") dropped.

- strict JGA, as TRADE computes it: the turn's set of (domain, slot, value) equals the gold set, values compared
  exactly, case included; slot precision/recall/F1 (strict) micro-averaged over turns next to it;
- fuzzy JGA and slot P/R/F1, as mwzeval's `get_dst`: both states through mwzeval's `normalize_data` (see
  `norm`), the reference without "dontcare" slots (mwzeval's MultiWOZ 2.2 gold states omit them), same
  keys and every value with fuzzywuzzy's `partial_ratio > 95` (python-Levenshtein flavour);
- Inform / Success as mwzeval's `get_success` on states normalised the same way, BLEU with sacrebleu as `get_bleu`
  (see `success`). BLEU references are delexicalised here from the 2.1 `span_info`, not mwzeval's
  MultiWOZ 2.2 references, so the number is not comparable to published mwzeval BLEU; without predicted states the
  2.1 gold states stand in for mwzeval's 2.2 ones.

A responses file whose turns are not objects, a non-string response, a non-list `active_domains` or an unreadable
state is reported (file and dialogue) or scored as that turn's error; it never stops the report.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from coalm.eval.base import EvalError, benchmark_dir, clip, loads_json
from coalm.eval.multiwoz import coalm_style
from coalm.eval.multiwoz.norm import (  # noqa: F401 - re-exported: the module's public names
    EMPTY_VALUES,
    ONTOLOGY,
    gold_state,
    mwz_state,
    norm_slot,
    norm_value,
    normalize_state,
    partial_ratio,
)
from coalm.eval.multiwoz.success import (  # noqa: F401 - VenueDatabase re-exported
    VenueDatabase,
    bleu,
    dialog_inform_success,
    estimate_domains,
    load_database,
    normalize_response,
    parse_goal,
)
from coalm.eval.options import opt
from coalm.eval.task import Task

DEFAULT_FILE = "mwz21_test_shared900.json"
TASKS = ("dst", "response")
RESPONSES_SUFFIX = ".json"
FUZZY_STATE = 95  # mwzeval DST: a value matches when partial_ratio > 95
MAX_STATE_TEXT = 100_000  # characters of a model output searched for a JSON state


def _flat(state: dict) -> dict:
    return {(d, s): v for d, slots in state.items() for s, v in slots.items()}


def compare_states(pred: dict, gold: dict) -> dict:
    """Strict (TRADE) and fuzzy (mwzeval) comparison of a predicted state (see `normalize_state`) with the gold one."""
    p, g = _flat(pred), _flat(gold)
    tp = sum(1 for k in g if p.get(k) == g[k])
    err = None
    for k in sorted(g):
        if k not in p:
            err = err or f"missing_slot:{k[0]}-{k[1]}"
        elif p[k] != g[k]:
            err = err or f"wrong_value:{k[0]}-{k[1]}"
    for k in sorted(set(p) - set(g), key=str):
        err = err or clip(f"extra_slot:{k[0]}-{k[1]}", 200)
    mp = _flat(mwz_state(pred))
    mg = _flat(mwz_state({d: {s: v for s, v in slots.items() if v != "dontcare"} for d, slots in gold.items()}))
    ftp = sum(1 for k, v in mp.items() if k in mg and partial_ratio(v, mg[k]) > FUZZY_STATE)
    return {"strict": p == g, "fuzzy": mp.keys() == mg.keys() and ftp == len(mg),
            "tp": tp, "fp": len(p) - tp, "fn": len(g) - tp, "ftp": ftp, "ffp": len(mp) - ftp, "ffn": len(mg) - ftp,
            "error": err}


def parse_state_text(text: str):
    """The first JSON object in a model output as a state (see `normalize_state`), or None when there is none."""
    dec = json.JSONDecoder()
    text = (text if isinstance(text, str) else "")[:MAX_STATE_TEXT]
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = dec.raw_decode(text, m.start())
        except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
            continue
        if isinstance(obj, dict):
            return normalize_state(obj)
    return None


# ---------------------------------------------------------------- reference responses

def delexicalize(turn: dict) -> str:
    words = turn["text"].split()
    spans = sorted((s for s in turn.get("span_info", []) if s[2] != "dontcare"), key=lambda s: s[3])
    out, pos = [], 0
    for act, slot, _, start, end in spans:
        if start < pos or end >= len(words):
            continue
        out += words[pos:start] + [f"[{act.split('-')[0].lower()}_{slot.lower()}]"]
        pos = end + 1
    return " ".join(out + words[pos:])


# ---------------------------------------------------------------- the module interface


@dataclass
class Options:
    multiwoz_task: str = opt("dst", "dst (JGA) or response (Inform/Success)", choices=TASKS)
    multiwoz_file: str = opt(DEFAULT_FILE, "dialogue file under the multiwoz data folder")
    multiwoz_version: str | None = opt(None, "MultiWOZ version label of --multiwoz-file (2.1 or 2.4); the shared "
                                             "file is 2.1")
    multiwoz_subset: str = opt("all", "quick: the 200 dialogues of quick_subset200_ids.txt", choices=("all", "quick"))


def dialogue_key(dial_id: str) -> str:
    return str(dial_id).lower().removesuffix(".json")


def _history(log, t):
    lines = []
    for i, turn in enumerate(log[: 2 * t + 1]):
        lines.append(("User: " if i % 2 == 0 else "System: ") + turn["text"])
    return "\n".join(lines)


def _dst_messages(log, t):
    slots = "; ".join(f"{d}: {', '.join(s)}" for d, s in ONTOLOGY.items())
    system = ("You track the dialogue state of a Cambridge travel-information dialogue. Reply with one JSON object "
              "{domain: {slot: value}} holding every slot the user has constrained so far (use \"dontcare\" when "
              f"the user has no preference) and nothing else. Domains and slots: {slots}.")
    return [{"role": "system", "content": system},
            {"role": "user", "content": _history(log, t) + "\n\nDialogue state as JSON:"}]


def _response_messages(log, t):
    system = ("You are the system of a Cambridge travel-information service (restaurants, hotels, attractions, "
              "trains, taxis). Write the next system reply to the user, delexicalised: write [name], [phone], "
              "[address], [postcode], [reference] and [trainid] in place of the actual values.")
    return [{"role": "system", "content": system}, {"role": "user", "content": _history(log, t) + "\nSystem:"}]


def load_examples(data_root, options: Options | None = None, style: str = "official") -> list[dict]:
    options = options or Options()
    folder = benchmark_dir(data_root, "multiwoz")
    task = options.multiwoz_task
    if task not in TASKS:
        raise EvalError(f"unknown MultiWOZ task {task!r}; choose one of {', '.join(TASKS)}")
    name = options.multiwoz_file
    path = Path(name) if Path(name).is_absolute() else folder / name
    if not path.is_file():
        raise EvalError(f"MultiWOZ dialogue file {path} not found")
    version = options.multiwoz_version or ("2.1" if path.name == DEFAULT_FILE else "unknown")
    data = json.loads(path.read_text())
    keep = None
    if (folder / "testListFile.txt").is_file():
        keep = {dialogue_key(x) for x in (folder / "testListFile.txt").read_text().split()}
    if options.multiwoz_subset == "quick":
        quick = {dialogue_key(x) for x in (folder / "quick_subset200_ids.txt").read_text().split()}
        keep = quick if keep is None else keep & quick
    booked = {}
    if (folder / "booked_domains.json").is_file():
        booked = json.loads((folder / "booked_domains.json").read_text())
    examples = []
    for raw_id, dial in data.items():
        did = dialogue_key(raw_id)
        if keep is not None and did not in keep:
            continue
        log = dial["log"]
        goal = parse_goal(dial.get("goal", {}))
        n_sys = len(log) // 2
        booked_d = booked.get(did, [[] for _ in range(n_sys)])
        for t in range(n_sys):
            sys_turn = log[2 * t + 1]
            msgs = _dst_messages(log, t) if task == "dst" else _response_messages(log, t)
            if style == "coalm" and task == "dst":
                msgs = coalm_style.multiwoz_messages(log, t, ONTOLOGY)
            examples.append({
                "id": f"{did}:{t}", "dialogue_id": did, "turn": t, "task": task, "data_version": version,
                "style": style, "messages": msgs, "gold_state": gold_state(sys_turn.get("metadata", {})),
                "gold_response": sys_turn["text"], "gold_response_delex": delexicalize(sys_turn),
                "goal": goal, "booked_domains": booked_d[t] if t < len(booked_d) else [],
                "db_dir": str(folder / "mwzeval_database"),
            })
    if not examples:
        raise EvalError(f"no MultiWOZ test dialogues selected from {path}")
    return examples


def test_queries(root) -> list[str]:
    """The user turns of the test dialogues in `<root>/multiwoz/<DEFAULT_FILE>` ([] when absent), for keeping them
    out of training data."""
    path = Path(root) / "multiwoz" / DEFAULT_FILE
    if not path.is_file():
        return []
    return [t["text"] for d in json.loads(path.read_text(encoding="utf-8")).values() for t in d["log"][0::2]]


test_queries.__test__ = False  # a data function, not a pytest test


def _check_turn(turn, where: str) -> None:
    if not isinstance(turn, dict):
        raise EvalError(f"{where}: a turn must be an object {{response, state}}, got {type(turn).__name__}")
    if "response" in turn and not isinstance(turn["response"], str):
        raise EvalError(f"{where}: 'response' must be a string, got {type(turn['response']).__name__}")
    if "state" in turn and not isinstance(turn["state"], dict):
        raise EvalError(f"{where}: 'state' must be an object {{domain: {{slot: value}}}}")
    doms = turn.get("active_domains", [])
    if not isinstance(doms, list) or not all(isinstance(d, str) for d in doms):
        raise EvalError(f"{where}: 'active_domains' must be a list of domain names")


def read_responses(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"responses file {path} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise EvalError(f"{path}: not UTF-8 text ({e.reason})") from None
    data = loads_json(text, str(path), whole_file=True)
    if not isinstance(data, dict):
        raise EvalError(f"{path}: expected the mwzeval dict {{dialogue_id: [{{response, state}}, ...]}}")
    out = {}
    for did, turns in data.items():
        if not isinstance(turns, list):
            raise EvalError(f"{path}: dialogue {clip(did, 100)!r} must map to a list of {{response, state}} turns")
        for t, turn in enumerate(turns):
            _check_turn(turn, f"{path}: dialogue {clip(did, 100)!r}, turn {t}")
            out[f"{dialogue_key(did)}:{t}"] = turn
    return out


def responses_from_texts(examples, texts) -> dict:
    """texts[i] belongs to examples[i]; a shorter list (a run still generating) covers the first examples."""
    if len(texts) > len(examples):
        raise EvalError(f"{len(texts)} generated texts for {len(examples)} examples")
    if examples and examples[0].get("style") == "coalm" and examples[0]["task"] == "dst":
        return coalm_style.multiwoz_responses(examples, texts)  # per-turn domain states merged along each dialogue
    out = {}
    for ex, text in zip(examples, texts):
        if ex["task"] == "dst":
            state = parse_state_text(text)
            out[ex["id"]] = {"response": "", "state": state if state is not None else {}, "raw": text,
                             "parse_error": state is None}
        else:
            out[ex["id"]] = {"response": text}
    return out


def write_responses(path, examples, responses) -> Path:
    dialogs: dict = {}
    for ex in examples:
        turns = dialogs.setdefault(ex["dialogue_id"], [])
        turns.append({k: v for k, v in responses.get(ex["id"], {"response": "", "state": {}}).items()
                      if k in ("response", "state", "active_domains")})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dialogs, indent=1, ensure_ascii=False))
    return path


def _ratio(a, b):
    return a / b if b else None


def _dst_item(ex: dict, r) -> tuple[dict, dict]:
    item = {"id": ex["id"], "kind": "dst_turn"}
    if r is None or "state" not in r:
        item.update(verdict="incorrect", fuzzy=False, error_type="missing_output")
        return item, compare_states({}, ex["gold_state"])
    cmp_ = compare_states(normalize_state(r["state"]), ex["gold_state"])
    err = "parse_error" if r.get("parse_error") else cmp_["error"]
    item.update(verdict="correct" if cmp_["strict"] else "incorrect", fuzzy=cmp_["fuzzy"], error_type=err)
    return item, cmp_


def _f1(p, r):
    return 2 * p * r / (p + r) if p and r else 0.0


def evaluate(examples, responses) -> dict:
    version = examples[0]["data_version"] if examples else "unknown"
    items, tot = [], Counter()
    has_states = any("state" in (responses.get(ex["id"]) or {}) for ex in examples)
    for ex in examples if has_states else []:
        try:
            item, cmp_ = _dst_item(ex, responses.get(ex["id"]))
        except Exception as e:  # noqa: BLE001 - one turn's failure is that turn's error, never the run's end
            item = {"id": ex["id"], "kind": "dst_turn", "verdict": "incorrect", "fuzzy": False,
                    "error_type": "scorer_error", "error": clip(f"{type(e).__name__}: {e}")}
            cmp_ = compare_states({}, ex["gold_state"])
        tot.update({k: int(v) for k, v in cmp_.items() if k != "error"})
        tot["turns"] += 1
        items.append(item)
    summary = {"benchmark": "multiwoz", "data_version": version,
               "note": "MultiWOZ 2.1 labels are not MultiWOZ 2.4" if version == "2.1" else None,
               "turns": len(examples), "dialogues": len({ex["dialogue_id"] for ex in examples})}
    if has_states:
        p, r_ = _ratio(tot["tp"], tot["tp"] + tot["fp"]), _ratio(tot["tp"], tot["tp"] + tot["fn"])
        fp_, fr_ = _ratio(tot["ftp"], tot["ftp"] + tot["ffp"]), _ratio(tot["ftp"], tot["ftp"] + tot["ffn"])
        summary.update(jga_strict=tot["strict"] / tot["turns"], jga_fuzzy=tot["fuzzy"] / tot["turns"],
                       slot_precision=p, slot_recall=r_, slot_f1=_f1(p, r_),
                       slot_precision_fuzzy=fp_, slot_recall_fuzzy=fr_, slot_f1_fuzzy=_f1(fp_, fr_),
                       jga_strict_rule="TRADE: exact (domain, slot, value) set, case included",
                       fuzzy_rule=f"mwzeval get_dst: normalize_data, partial_ratio > {FUZZY_STATE}")
    has_resp = any(isinstance((responses.get(ex["id"]) or {}).get("response"), str)
                   and responses[ex["id"]]["response"] for ex in examples)
    if has_resp:
        summary.update(_response_metrics(examples, responses, items))
    return {"summary": summary, "items": items}


def _dialogue(exs: list[dict], turns: list[dict], db) -> tuple[bool, bool]:
    utts = [normalize_response(t.get("response", "")) for t in turns]
    states = [mwz_state(normalize_state(t["state"]) if "state" in t else ex["gold_state"])
              for t, ex in zip(turns, exs)]
    if all("active_domains" in t for t in turns):
        domains = [list(t["active_domains"]) for t in turns]
    else:
        domains = estimate_domains(states)
    return dialog_inform_success(exs[0]["goal"], [ex["booked_domains"] for ex in exs], utts, states, domains, db)


def _response_metrics(examples, responses, items) -> dict:
    db = load_database(str(examples[0]["db_dir"]))
    by_dialog: dict = {}
    for ex in examples:
        by_dialog.setdefault(ex["dialogue_id"], []).append(ex)
    informs, successes, hyps, refs = [], [], [], []
    for did, exs in by_dialog.items():
        turns = [r if isinstance(r := responses.get(ex["id"]), dict) else {} for ex in exs]
        try:
            inform, success = _dialogue(exs, turns, db)
            err = None if success else "no_inform" if not inform else "missing_requestable"
        except Exception as e:  # noqa: BLE001 - one dialogue's failure is that dialogue's error
            inform = success = False
            err = "scorer_error: " + clip(f"{type(e).__name__}: {e}")
        informs.append(inform)
        successes.append(success)
        items.append({"id": did, "kind": "dialogue", "score": {"inform": inform, "success": success},
                      "error_type": err})
        hyps += [normalize_response(t.get("response", "")) for t in turns]
        refs += [normalize_response(ex["gold_response_delex"]) for ex in exs]
    return {"inform": sum(informs) / len(informs), "success": sum(successes) / len(successes),
            "bleu_vs_delex_2.1_refs": bleu(hyps, refs),
            "bleu_rule": "sacrebleu corpus_bleu on mwzeval-normalised responses (as get_bleu), 2.1 references"}


class MultiwozTask(Task):
    name = "multiwoz"
    Options = Options
    styles = ("official", "coalm")
    responses_suffix = RESPONSES_SUFFIX
    module = sys.modules[__name__]  # load_examples, read_responses, write_responses, evaluate, ...

    def constraint(self, example):
        # a DST answer: System: {"domain": one of the listed domains, "slot_values": that domain's slots only},
        # categorical slots (MultiWOZ 2.2's) limited to the ontology's values and dontcare, the others free text
        if example.get("style") != "coalm" or example.get("task") != "dst":
            return None
        return {"json_schema": dst_schema(str(Path(example["db_dir"]).parent)), "prefix": "System: "}


CATEGORICAL = {"area", "pricerange", "parking", "internet", "stars", "type", "day", "book day", "book people",
               "book stay"}


@functools.lru_cache(maxsize=4)
def dst_schema(folder: str) -> dict:
    """The JSON schema of one DST answer over `ONTOLOGY`'s domains and slots, values from the benchmark's ontology
    file (`ontology_mwz21_convlab2.json`: "domain-semi|book-slot" -> values; a value with "|" is two values)."""
    path = Path(folder) / "ontology_mwz21_convlab2.json"
    values: dict[tuple[str, str], list[str]] = {}
    if path.is_file():
        for key, vals in json.loads(path.read_text()).items():
            domain, kind, slot = key.split("-", 2)
            slot = (f"book {slot}" if kind == "book" else slot).lower()
            values[(domain, slot)] = sorted({v for v in vals if "|" not in v} | {"dontcare"})
    alts = []
    for domain, slots in ONTOLOGY.items():
        props = {s: {"enum": values[(domain, s)]} if s in CATEGORICAL and (domain, s) in values else {"type": "string"}
                 for s in slots}
        alts.append({"type": "object", "properties": {
            "domain": {"const": domain},
            "slot_values": {"type": "object", "properties": props, "additionalProperties": False}},
            "required": ["domain", "slot_values"], "additionalProperties": False})
    return {"anyOf": alts}


TASK = MultiwozTask()
