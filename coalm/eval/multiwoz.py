"""MultiWOZ evaluation: zero-shot dialogue state tracking (JGA, slot F1) and responses (Inform, Success, BLEU).

Data: a MultiWOZ 2.1/2.4 `data.json`-style file `{dialogue_id: {"goal", "log"}}` (the shared copy,
`mwz21_test_shared900.json`, holds 900 MultiWOZ **2.1** test dialogues; every summary carries `data_version`, and a
2.1 number is never a 2.4 number). Dialogues are restricted to `testListFile.txt` when it is present. Ids are
lowercased without ".json" ("sng0073"), as mwzeval expects. One example per system turn: turn t's gold state is the
`metadata` of system turn t (the cumulative state after user turn t), restricted to the usual 30 slots of five
domains (`ONTOLOGY`; book slots are named "book day", ...).

Tasks (`--multiwoz-task`): "dst" asks for the state as JSON `{domain: {slot: value}}` given the history up to the user
turn; "response" asks for the next system reply, delexicalised with [name], [phone], ... placeholders (Inform and
Success only see placeholders, as in mwzeval; without predicted states the gold states are used). Saved outputs are the mwzeval dict
`{dialogue_id: [{"response", "state"}, ...]}`, one entry per system turn.

State comparison. Slot names are lowercased and a few spellings mapped ("leaveAt", "leave at", "leave" ->
"leaveat"; "price range"/"price" -> "pricerange"; "book_day"/"bookday" -> "book day"); values are lowercased and
stripped, "dont care"/"don't care"/"do n't care" -> "dontcare"; empty, "not mentioned" and "none" drop the slot.
- strict JGA: the turn's set of (domain, slot, value) equals the gold set;
- fuzzy JGA (mwzeval's DST rule): same (domain, slot) keys and every value matches the gold value with
  `partial_ratio > 95`, where `partial_ratio` is fuzzywuzzy's (difflib path, reimplemented here: the shorter string
  against each equal-length window of the longer one that a difflib matching block points to, best ratio, rounded
  to 0-100; 100 for identical strings, 0 if either is empty);
- slot precision/recall/F1: micro-averaged over all turns, strict values (and a fuzzy F1 next to it).

Inform / Success follow mwzeval's `get_dialog_success`: responses are lowercased and their delexicalised
placeholders (`[restaurant_name]`, `[value_phone]`, `[phone]`, plural suffixes) mapped to mwzeval's names (NAME,
PHONE, ...). A venue is offered when a turn whose active domain is d mentions NAME (TRAINID for trains); the offered
venues are the database matches of that turn's state (predicted state when given, else gold). Inform: for every goal
domain the last offered venues are a subset of the venues matching the goal constraints (goal names, and the taxi/
police/hospital domains, match automatically; a train with no TRAINID request and no offer matches). Success:
Inform, and every requested PHONE/ADDRESS/POST/TRAINID was mentioned and REFERENCE appears in a turn where
`booked_domains.json` marks the domain booked. Database matching as in mwzeval (`mwzeval_database/`): constraints
on the venue's columns, "dontcare" ignored, leave >= / arrive <= for trains, fuzzy names (partial_ratio >= 90).
Active domains are taken from "active_domains" when given, else estimated from state changes as mwzeval does.
mwzeval's `goals.json` is missing here; goals are rebuilt from each dialogue's raw goal the way the original
MultiWOZ evaluator parses them (info -> informable; requestables phone/address/postcode/reference(+ booking)/
trainID). Not reproduced: mwzeval's long list of venue-name spelling fixes and the Moses detokenisation.
BLEU (when responses are given): corpus BLEU-4 against references delexicalised here from the 2.1 `span_info`,
not mwzeval's MultiWOZ 2.2 references, so it is not comparable to published mwzeval BLEU.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections import Counter
from pathlib import Path
from typing import ClassVar

from coalm.eval._text_metrics import corpus_bleu4
from coalm.eval.base import EvalError, benchmark_dir

DEFAULT_FILE = "mwz21_test_shared900.json"
TASKS = ("dst", "response")
RESPONSES_SUFFIX = ".json"
ONTOLOGY = {
    "hotel": ["pricerange", "type", "parking", "book stay", "book day", "book people", "area", "stars", "internet",
              "name"],
    "train": ["destination", "day", "departure", "arriveby", "book people", "leaveat"],
    "attraction": ["area", "name", "type"],
    "restaurant": ["food", "pricerange", "area", "name", "book time", "book day", "book people"],
    "taxi": ["leaveat", "destination", "departure", "arriveby"],
}
EMPTY_VALUES = {"", "not mentioned", "none"}
FUZZY_STATE = 95  # mwzeval DST: a value matches when partial_ratio > 95
FUZZY_DB = 90  # mwzeval database: a venue column matches when partial_ratio >= 90
_SLOT_ALIASES = {"leave at": "leaveat", "leave": "leaveat", "arrive by": "arriveby", "arrive": "arriveby",
                 "price range": "pricerange", "price": "pricerange"}
_DONTCARE = {"dont care", "don't care", "do n't care", "do nt care", "dontcare", "don't care."}

# ---------------------------------------------------------------- string matching


@functools.lru_cache(maxsize=1 << 16)  # database look-ups repeat the same (column, value) pairs many times
def partial_ratio(a: str, b: str) -> int:
    """fuzzywuzzy's partial_ratio (difflib implementation), 0-100."""
    if not a or not b:
        return 0
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    best = 0.0
    for i, j, _ in difflib.SequenceMatcher(None, short, long_).get_matching_blocks():
        start = max(0, j - i)
        r = difflib.SequenceMatcher(None, short, long_[start : start + len(short)]).ratio()
        if r > 0.995:
            return 100
        best = max(best, r)
    return round(100 * best)


# ---------------------------------------------------------------- states


def norm_slot(slot: str) -> str:
    s = " ".join(str(slot).lower().replace("_", " ").replace("-", " ").split())
    if s.startswith("book") and not s.startswith("book "):
        s = "book " + s[4:]
    return _SLOT_ALIASES.get(s, s)


def norm_value(value) -> str:
    v = " ".join(str(value).lower().split())
    return "dontcare" if v in _DONTCARE else v


def normalize_state(state) -> dict:
    """{domain: {slot: value}} with canonical names, empty values dropped; also accepts {"domain-slot": value}."""
    out: dict = {}
    if not isinstance(state, dict):
        return out
    for dom, slots in state.items():
        if isinstance(slots, dict):
            items = [(str(dom), s, v) for s, v in slots.items()]
        elif "-" in str(dom):
            d, s = str(dom).split("-", 1)
            items = [(d, s, slots)]
        else:
            continue
        for d, s, v in items:
            if isinstance(v, (dict, list)):
                continue
            v = norm_value(v)
            if v not in EMPTY_VALUES:
                out.setdefault(d.strip().lower(), {})[norm_slot(s)] = v
    return out


def gold_state(metadata: dict) -> dict:
    state = {}
    for dom, slots in ONTOLOGY.items():
        meta = metadata.get(dom, {})
        for slot in slots:
            src = meta.get("book", {}) if slot.startswith("book ") else meta.get("semi", {})
            key = slot.removeprefix("book ")
            raw = next((v for k, v in src.items() if k.lower() == key), "")
            v = norm_value(raw)
            if v not in EMPTY_VALUES:
                state.setdefault(dom, {})[slot] = v
    return state


def _flat(state: dict) -> dict:
    return {(d, s): v for d, slots in state.items() for s, v in slots.items()}


def compare_states(pred: dict, gold: dict) -> dict:
    p, g = _flat(pred), _flat(gold)
    fuzzy_ok = lambda k: k in p and partial_ratio(p[k], g[k]) > FUZZY_STATE
    tp = sum(1 for k in g if p.get(k) == g[k])
    ftp = sum(1 for k in g if fuzzy_ok(k))
    err = None
    for k in sorted(g):
        if k not in p:
            err = err or f"missing_slot:{k[0]}-{k[1]}"
        elif p[k] != g[k]:
            err = err or f"wrong_value:{k[0]}-{k[1]}"
    for k in sorted(set(p) - set(g)):
        err = err or f"extra_slot:{k[0]}-{k[1]}"
    return {"strict": p == g, "fuzzy": p.keys() == g.keys() and all(fuzzy_ok(k) for k in g),
            "tp": tp, "fp": len(p) - tp, "fn": len(g) - tp, "ftp": ftp, "ffp": len(p) - ftp, "ffn": len(g) - ftp,
            "error": err}


def parse_state_text(text: str):
    """The first JSON object in a model output as a normalised state, or None when there is none."""
    dec = json.JSONDecoder()
    for m in re.finditer(r"\{", text or ""):
        try:
            obj, _ = dec.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return normalize_state(obj)
    return None


# ---------------------------------------------------------------- responses, database, goals

_PLACEHOLDER = re.compile(r"\[([\w\s\d]+)\](es|s|-s|-es|)")
_MWZ_SLOT = {
    "ADDRESS": "address addr", "AREA": "area", "TIME": "time booktime arrive arriveby leave leaveat duration",
    "DAY": "day bookday", "PLACE": "destination departure dest depart place", "FOOD": "food", "NAME": "name",
    "PHONE": "phone", "POST": "postcode post", "PRICE": "price pricerange entrancefee fee ticket",
    "REFERENCE": "ref reference", "COUNT": "stars stay bookstay people bookpeople choice count",
    "TYPE": "type car", "TRAINID": "trainid id train", "INTERNET": "internet", "PARKING": "parking",
    "DEPARTMENT": "department", "OPEN": "openhours open",
}
_MWZ_SLOT = {alias: name for name, aliases in _MWZ_SLOT.items() for alias in aliases.split()}
_DOMAIN_PREFIX = re.compile(r"^(value|restaurant|hotel|attraction|train|taxi|police|hospital|booking)[_ ]")


def normalize_response(text: str) -> str:
    """Lowercase and map delexicalised placeholders to mwzeval's upper-case slot names (unknown ones vanish)."""

    def repl(m):
        name = _DOMAIN_PREFIX.sub("", m.group(1).strip()).replace(" ", "").replace("_", "")
        return _MWZ_SLOT.get(name, "")

    return _PLACEHOLDER.sub(repl, (text or "").lower())


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


def _time_minutes(t: str) -> int:
    t = _canon_time(t)
    return int(t[:2]) * 60 + int(t[3:5]) if re.match(r"\d\d:\d\d", t) else 0


def _canon_time(t: str) -> str:
    t = t.strip().lower()
    for pre in ("by ", "after "):
        if t.startswith(pre):
            t = t[len(pre):].strip()
    pm = t.endswith(("pm", "p.m.")) and not t.startswith("12")
    t = re.sub(r"\s*(am|a\.m\.|pm|p\.m\.)$", "", t).replace(" ", "").rstrip(".,?")
    if t.isdigit():
        t = t[:2] + ":" + t[2:] if len(t) == 4 else t.zfill(2) + ":00"
    if re.fullmatch(r"\d:\d\d", t):
        t = "0" + t
    if pm and re.fullmatch(r"\d\d:\d\d", t):
        t = f"{int(t[:2]) + 12:02d}{t[2:]}"
    return t


def _canon_value(key: str, v: str) -> str:
    v = v.strip().lower()
    if key == "type":
        return {"swimming pool": "swimmingpool", "night club": "nightclub", "guest house": "guesthouse",
                "mutliple sports": "multiple sports"}.get(v, v)
    if key in ("parking", "internet"):
        return "yes" if v == "free" else v
    if key in ("name", "destination", "departure"):
        return v.replace(" & ", " and ").replace("&", " and ").replace(" '", "'")
    return v


class VenueDatabase:
    """mwzeval's venue look-up over `mwzeval_database/{restaurant,attraction,hotel,train}_db.json`."""

    IGNORE: ClassVar[dict] = {"attraction": {"location", "openhours"}, "hotel": {"location", "price", "takesbookings"},
              "restaurant": {"location", "introduction", "signature"}}
    FUZZY: ClassVar[dict] = {"hotel": {"name"}, "attraction": {"name"}, "restaurant": {"name", "food"},
             "train": {"departure", "destination"}}

    def __init__(self, folder: Path):
        self.rows = {}
        for dom in ("restaurant", "attraction", "hotel", "train"):
            path = Path(folder) / f"{dom}_db.json"
            if not path.is_file():
                raise EvalError(f"missing venue database {path} (needed for Inform/Success)")
            rows = []
            for item in json.loads(path.read_text()):
                rows.append({self._col(k): v for k, v in item.items() if k not in self.IGNORE.get(dom, ())})
            self.rows[dom] = rows

    @staticmethod
    def _col(name: str) -> str:
        if name == "id":
            return name
        n = name.lower().replace(" ", "")
        return {"arriveby": "arrive", "leaveat": "leave"}.get(n, n)

    def query(self, domain: str, constraints: dict) -> list[str]:
        return list(self._query(domain, tuple(sorted(constraints.items()))))

    @functools.lru_cache(maxsize=1 << 14)  # noqa: B019 - one database per evaluation, states repeat across turns
    def _query(self, domain: str, items: tuple) -> tuple:
        constraints = dict(items)
        if domain not in self.rows:
            return ()
        cons = {self._col({"arriveby": "arrive", "leaveat": "leave"}.get(k, k)): v for k, v in constraints.items()}
        keys = self.rows[domain][0].keys()
        query = {k: _canon_value(k, cons[k]) for k in keys if k in cons and norm_value(cons[k]) != "dontcare"}
        out = []
        for item in self.rows[domain]:
            ok = True
            for k, v in query.items():
                if item[k] == "?":
                    continue
                if k == "arrive":
                    ok = _time_minutes(item[k]) <= _time_minutes(v)
                elif k == "leave":
                    ok = _time_minutes(item[k]) >= _time_minutes(v)
                elif k in self.FUZZY.get(domain, ()):
                    ok = partial_ratio(item[k], v) >= FUZZY_DB
                else:
                    ok = item[k] == v
                if not ok:
                    break
            if ok:
                out.append(item["trainid"] if domain == "train" else item["id"])
        return tuple(out)


def parse_goal(raw: dict) -> dict:
    """mwzeval-style goal {domain: {"informable", "requestable"}} from a MultiWOZ raw goal."""
    goal = {}
    for dom in ("restaurant", "hotel", "attraction", "train", "taxi", "police", "hospital"):
        g = raw.get(dom)
        if not isinstance(g, dict) or "info" not in g:
            continue
        reqt = set(g.get("reqt", []))
        if dom == "train":
            req = {"TRAINID"} if "trainID" in reqt else set()
        else:
            names = {"phone": "PHONE", "address": "ADDRESS", "postcode": "POST", "reference": "REFERENCE"}
            req = {names[r] for r in reqt if r in names}
        if "book" in g:
            req.add("REFERENCE")
        informable = {norm_slot(k): norm_value(v) for k, v in g["info"].items()}
        goal[dom] = {"informable": informable, "requestable": sorted(req)}
    return goal


def estimate_domains(states: list[dict]) -> list[list[str]]:
    """mwzeval's active-domain estimate: the domain whose state changed (the previous one when several did)."""
    out, current, old, old_changed = [], None, {}, []
    for state in states:
        changed = [d for d in state if set(state.get(d, {}).items()) - set(old.get(d, {}).items())]
        if not changed:
            if current is None:
                out.append([])
                continue
            if len(old_changed) > 1:
                rest = [d for d in old_changed if d in state and d != current]
                if rest:
                    current = rest[0]
        elif current not in changed:
            current = max(changed, key=lambda d: len(state[d]))
        old, old_changed = state, changed
        out.append([current])
    return out


def dialog_inform_success(goal, booked, responses, states, domains, db) -> tuple[bool, bool]:
    offered = {d: [] for d in goal}
    provided = {d: set() for d in goal}
    for utt, state, booked_now, active in zip(responses, states, booked, domains, strict=True):
        for dom in goal:
            if dom not in active:
                continue
            if ("NAME" in utt and dom in ("restaurant", "hotel", "attraction")) or ("TRAINID" in utt and dom == "train"):
                venues = db.query(dom, _db_constraints(state.get(dom, {}))) if dom in state else []
                if not offered[dom] or any(v not in venues for v in offered[dom]):
                    offered[dom] = venues
            for slot in ("PHONE", "ADDRESS", "POST", "REFERENCE", "TRAINID"):
                if slot in utt and (slot != "REFERENCE" or dom in booked_now):
                    provided[dom].add(slot)
    inform = True
    for dom, g in goal.items():
        auto = ("name" in g["informable"] or dom in ("taxi", "police", "hospital")
                or (dom == "train" and not offered[dom] and "TRAINID" not in g["requestable"]))
        if auto:
            continue
        if dom not in ("restaurant", "hotel", "attraction", "train") or not offered[dom] or not set(offered[dom]) <= set(db.query(dom, _db_constraints(g["informable"]))):
            inform = False
    success = inform and all(set(g["requestable"]) <= provided[d] for d, g in goal.items())
    return inform, success


def _db_constraints(slots: dict) -> dict:
    return {s: v for s, v in slots.items() if not s.startswith("book ")}


# ---------------------------------------------------------------- the module interface


def add_arguments(parser) -> None:
    parser.add_argument("--multiwoz-task", default="dst", choices=TASKS, help="dst (JGA) or response (Inform/Success)")
    parser.add_argument("--multiwoz-file", default=DEFAULT_FILE, help="dialogue file under the multiwoz data folder")
    parser.add_argument("--multiwoz-version", default=None,
                        help="MultiWOZ version label of --multiwoz-file (2.1 or 2.4); the shared file is 2.1")
    parser.add_argument("--multiwoz-subset", default="all", choices=("all", "quick"),
                        help="quick: the 200 dialogues of quick_subset200_ids.txt")


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


def load_examples(data_root, args=None) -> list[dict]:
    folder = benchmark_dir(data_root, "multiwoz")
    task = getattr(args, "multiwoz_task", "dst")
    if task not in TASKS:
        raise EvalError(f"unknown MultiWOZ task {task!r}; choose one of {', '.join(TASKS)}")
    name = getattr(args, "multiwoz_file", DEFAULT_FILE)
    path = Path(name) if Path(name).is_absolute() else folder / name
    if not path.is_file():
        raise EvalError(f"MultiWOZ dialogue file {path} not found")
    version = getattr(args, "multiwoz_version", None) or ("2.1" if path.name == DEFAULT_FILE else "unknown")
    data = json.loads(path.read_text())
    keep = None
    if (folder / "testListFile.txt").is_file():
        keep = {dialogue_key(x) for x in (folder / "testListFile.txt").read_text().split()}
    if getattr(args, "multiwoz_subset", "all") == "quick":
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
            examples.append({
                "id": f"{did}:{t}", "dialogue_id": did, "turn": t, "task": task, "data_version": version,
                "messages": msgs, "gold_state": gold_state(sys_turn.get("metadata", {})),
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


def read_responses(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"responses file {path} not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise EvalError(f"{path}: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise EvalError(f"{path}: expected the mwzeval dict {{dialogue_id: [{{response, state}}, ...]}}")
    out = {}
    for did, turns in data.items():
        if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
            raise EvalError(f"{path}: dialogue {did!r} must map to a list of {{response, state}} turns")
        for t, turn in enumerate(turns):
            out[f"{dialogue_key(did)}:{t}"] = turn
    return out


def responses_from_texts(examples, texts) -> dict:
    """texts[i] belongs to examples[i]; a shorter list (a run still generating) covers the first examples."""
    if len(texts) > len(examples):
        raise EvalError(f"{len(texts)} generated texts for {len(examples)} examples")
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


def evaluate(examples, responses) -> dict:
    version = examples[0]["data_version"] if examples else "unknown"
    items, tot = [], Counter()
    has_states = any("state" in (responses.get(ex["id"]) or {}) for ex in examples)
    for ex in examples:
        r = responses.get(ex["id"])
        if not has_states:
            break
        item = {"id": ex["id"], "kind": "dst_turn"}
        if r is None or "state" not in r:
            item.update(verdict="incorrect", fuzzy=False, error_type="missing_output")
            cmp_ = compare_states({}, ex["gold_state"])
        else:
            cmp_ = compare_states(normalize_state(r["state"]), ex["gold_state"])
            err = "parse_error" if r.get("parse_error") else cmp_["error"]
            item.update(verdict="correct" if cmp_["strict"] else "incorrect", fuzzy=cmp_["fuzzy"], error_type=err)
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
                       slot_precision=p, slot_recall=r_,
                       slot_f1=2 * p * r_ / (p + r_) if p and r_ else 0.0,
                       slot_f1_fuzzy=2 * fp_ * fr_ / (fp_ + fr_) if fp_ and fr_ else 0.0,
                       fuzzy_threshold=f"partial_ratio > {FUZZY_STATE}")
    has_resp = any((responses.get(ex["id"]) or {}).get("response") for ex in examples)
    if has_resp:
        summary.update(_response_metrics(examples, responses, items))
    return {"summary": summary, "items": items}


def _response_metrics(examples, responses, items) -> dict:
    db = VenueDatabase(Path(examples[0]["db_dir"]))
    by_dialog: dict = {}
    for ex in examples:
        by_dialog.setdefault(ex["dialogue_id"], []).append(ex)
    informs, successes, hyps, refs = [], [], [], []
    for did, exs in by_dialog.items():
        turns = [responses.get(ex["id"]) or {} for ex in exs]
        utts = [normalize_response(t.get("response", "")) for t in turns]
        states = [normalize_state(t["state"]) if "state" in t else ex["gold_state"] for t, ex in zip(turns, exs)]
        if all("active_domains" in t for t in turns):
            domains = [list(t["active_domains"]) for t in turns]
        else:
            domains = estimate_domains(states)
        inform, success = dialog_inform_success(exs[0]["goal"], [ex["booked_domains"] for ex in exs], utts,
                                                states, domains, db)
        informs.append(inform)
        successes.append(success)
        items.append({"id": did, "kind": "dialogue", "score": {"inform": inform, "success": success},
                      "error_type": None if success else "no_inform" if not inform else "missing_requestable"})
        hyps += [t.get("response", "") for t in turns]
        refs += [ex["gold_response_delex"] for ex in exs]
    return {"inform": sum(informs) / len(informs), "success": sum(successes) / len(successes),
            "bleu_vs_delex_2.1_refs": corpus_bleu4(refs, hyps)}
