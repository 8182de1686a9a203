"""Builders: raw sources under the data root -> CoALM-IT rows in the three formats (see `formats.py`).

- `build_snips_dst`: SNIPS 2017 custom-intent train files -> DST rows. Domains are the 7 intents; each domain's
  slots are the entity names seen in its training queries. An entity that occurs twice in one query gets a list.
- `build_sgd_la`: SGD dialogues -> function-calling rows. One row per SYSTEM `service_call`: the query is the
  user's utterances since the intent became active; a call is kept only when every argument's value (or one of
  the surface forms the user state lists for it, e.g. "March 1st" for 2019-03-01) is in that text; otherwise the
  value came from the system side and the query alone could not yield it. Tools: the service's
  intents plus distractor intents from other services; for a seeded fraction of rows the service's own intents are
  withheld and the answer is `[]`.
- `build_sgd_cra`: SGD dialogues -> CRA action and response rows, history in the instruction (last
  `history_turns` exchanges, so the function list survives truncation at render time).

No LLM is at hand, so the thoughts are templated from the dialogue frames (user state, system acts); every row
records that as `meta["thought"] = "templated"`. SGD is CC BY-SA 4.0: rows built from it inherit that licence
(recorded in meta).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from engine.data.rows import DataError

from . import formats as F

SNIPS_INTENTS = (
    "AddToPlaylist", "BookRestaurant", "GetWeather", "PlayMusic", "RateBook", "SearchCreativeWork",
    "SearchScreeningEvent",
)


def _read_json(path: Path):
    if not path.is_file():
        raise DataError(f"missing source file {path}; see `python -m coalm.data download`")
    return json.loads(path.read_text(encoding="utf-8"))


# ---- SNIPS -> DST -----------------------------------------------------------------------------------------------


def build_snips_dst(root: str | Path, split: str = "train", limit: int | None = None) -> list[dict]:
    """DST rows from SNIPS `<split>_<Intent>.json` (split: train or validate), all 7 intents."""
    if split not in ("train", "validate"):
        raise DataError(f"SNIPS split {split!r} unknown; valid: train, validate")
    base = Path(root) / "snips"
    items = {}
    for intent in SNIPS_INTENTS:
        items[intent] = _read_json(base / intent / f"{split}_{intent}.json")[intent]
    # Slot lists come from the data itself, in first-seen order, so the instruction is stable across runs.
    domains: dict[str, list[str]] = {}
    for intent, queries in items.items():
        seen: dict[str, None] = {}
        for q in queries:
            for part in q["data"]:
                if "entity" in part:
                    seen.setdefault(part["entity"], None)
        domains[intent] = list(seen)
    instruction = F.dst_instruction(domains)
    rows = []
    for intent, queries in items.items():
        for k, q in enumerate(queries[:limit] if limit else queries):
            text = "".join(p["text"] for p in q["data"]).strip()
            slots: dict[str, object] = {}
            for p in q["data"]:
                if "entity" in p:
                    v = p["text"].strip()
                    prev = slots.get(p["entity"])
                    slots[p["entity"]] = v if prev is None else (prev if isinstance(prev, list) else [prev]) + [v]
            rows.append({
                "instruction": instruction,
                "input": f"User: {' '.join(text.split())}",
                "output": F.dst_output(intent, slots),
                "meta": {"format": "dst", "source": "snips", "id": f"snips/{split}/{intent}/{k}"},
            })
    return rows


# ---- SGD shared -------------------------------------------------------------------------------------------------


def _sgd(root: str | Path, split: str):
    if split not in ("train", "dev", "test"):
        raise DataError(f"SGD split {split!r} unknown; valid: train, dev, test")
    base = Path(root) / "sgd" / split
    schema = {s["service_name"]: s for s in _read_json(base / "schema.json")}
    shards = sorted(base.glob("dialogues_*.json"))
    if not shards:
        raise DataError(f"no SGD dialogue shards under {base}")
    dialogues = [d for p in shards for d in _read_json(p)]
    return schema, dialogues


def _slot_desc(service: dict) -> dict[str, dict]:
    return {s["name"]: s for s in service["slots"]}


def _tool(service: dict, intent: dict) -> dict:
    """An SGD intent as a Hammer-style tool: required slots plain, optional slots with their default."""
    slots = _slot_desc(service)
    params = {}
    for name in intent["required_slots"]:
        params[name] = {"description": slots[name]["description"], "type": "string"}
    for name, default in intent["optional_slots"].items():
        params[name] = {"description": slots[name]["description"], "type": "string", "default": default}
    return {"name": intent["name"], "description": intent["description"], "parameters": params}


def _intent(service: dict, name: str) -> dict:
    for it in service["intents"]:
        if it["name"] == name:
            return it
    raise KeyError(name)


def _sgd_meta(fmt: str, dialogue_id: str, turn: int, split: str, **extra) -> dict:
    return {"format": fmt, "source": "sgd", "id": f"sgd/{split}/{dialogue_id}/{turn}", "license": "CC BY-SA 4.0",
            **extra}


# ---- SGD -> LA --------------------------------------------------------------------------------------------------


def build_sgd_la(root: str | Path, split: str = "train", seed: int = 0, n_distractors: int = 3,
                 no_tool_frac: float = 0.15, limit_dialogues: int | None = None) -> list[dict]:
    """Function-calling rows from SGD service calls (see the module docstring for the rules)."""
    schema, dialogues = _sgd(root, split)
    rng = random.Random(seed)
    all_intents = [(s, it) for s in schema.values() for it in s["intents"]]
    rows = []
    for dl in dialogues[:limit_dialogues]:
        user_text: dict[str, list[str]] = {}  # service -> user utterances since its active intent last changed
        active: dict[str, str] = {}
        variants: dict[str, dict[str, list[str]]] = {}  # service -> slot -> surface forms from the user state
        for ti, turn in enumerate(dl["turns"]):
            if turn["speaker"] == "USER":
                for fr in turn["frames"]:
                    svc, intent = fr["service"], fr["state"]["active_intent"]
                    if active.get(svc) != intent:
                        active[svc], user_text[svc] = intent, []
                    user_text[svc].append(turn["utterance"])
                    variants[svc] = fr["state"]["slot_values"]
                continue
            for fr in turn["frames"]:
                call = fr.get("service_call")
                if not call:
                    continue
                svc = fr["service"]
                query = " ".join(user_text.get(svc, []))
                args = call["parameters"]
                low = query.lower()
                forms = variants.get(svc, {})
                if not query or not all(
                    any(f.lower() in low for f in [str(v), *forms.get(k, [])]) for k, v in args.items()
                ):
                    continue
                service = schema[svc]
                others = [(s, t) for s, t in all_intents if s["service_name"] != svc]
                distractors = [_tool(s, t) for s, t in rng.sample(others, min(n_distractors, len(others)))]
                no_tool = rng.random() < no_tool_frac
                own = [] if no_tool else [_tool(service, it) for it in service["intents"]]
                tools = own + distractors
                rng.shuffle(tools)
                calls = [] if no_tool else [{"name": call["method"], "arguments": dict(args)}]
                rows.append({
                    "instruction": F.la_instruction(tools),
                    "input": query,
                    "output": F.la_output(calls),
                    "meta": _sgd_meta("la", dl["dialogue_id"], ti, split, no_tool=no_tool),
                })
    return rows


# ---- SGD -> CRA -------------------------------------------------------------------------------------------------

_ACT_THOUGHTS = {
    "REQUEST": "I need the {slot} before I can go on, so I will ask the user for it.",
    "CONFIRM": "I have the details; I will ask the user to confirm them before acting.",
    "OFFER": "I will offer the user an option.",
    "INFORM": "The user asked for details; I will give them.",
    "INFORM_COUNT": "I will tell the user how many options there are.",
    "NOTIFY_SUCCESS": "The action succeeded; I will tell the user.",
    "NOTIFY_FAILURE": "The action failed; I will tell the user.",
    "REQ_MORE": "I will ask whether the user needs anything else.",
    "GOODBYE": "The user is done; I will say goodbye.",
    "OFFER_INTENT": "I will suggest a related action the user may want.",
}


def _call_thought(service: dict, method: str, args: dict) -> str:
    desc = _intent(service, method)["description"].rstrip(".")
    have = ", ".join(args) if args else "no arguments"
    return f"The user wants to {desc[0].lower() + desc[1:]}. I have {have}, so I will call {method}."


def _reply_thought(sys_frames: list[dict]) -> str:
    acts = [a for fr in sys_frames for a in fr["actions"]]
    if not acts:
        return "I will reply to the user."
    a = acts[0]
    return _ACT_THOUGHTS.get(a["act"], "I will reply to the user.").format(slot=a["slot"].replace("_", " ") or "detail")


def _observation(results: list[dict], keep: int = 3) -> dict:
    # Dozens of results would swamp the context; the reply only ever uses the first few and the count.
    return {"num_results": len(results), "results": results[:keep]}


def build_sgd_cra(root: str | Path, split: str = "train", history_turns: int = 6,
                  limit_dialogues: int | None = None) -> list[dict]:
    """CRA action rows (one per service call) and response rows (one per system turn) from SGD dialogues."""
    schema, dialogues = _sgd(root, split)
    rows = []
    for dl in dialogues[:limit_dialogues]:
        funcs = []
        for svc in dl["services"]:
            for it in schema[svc]["intents"]:
                funcs.append((it["name"], it["required_slots"] + list(it["optional_slots"]), it["description"]))
        instruction_funcs = funcs
        history: list[list[str]] = []  # one list of lines per exchange (user turn + what followed)
        turns = dl["turns"]
        for ti in range(0, len(turns) - 1, 2):
            user, system = turns[ti], turns[ti + 1]
            if user["speaker"] != "USER" or system["speaker"] != "SYSTEM":
                raise DataError(f"SGD dialogue {dl['dialogue_id']}: turns do not alternate USER/SYSTEM at {ti}")
            user_line = f"User: {user['utterance']}"
            sys_line = f"System: {system['utterance']}"
            call_fr = next((fr for fr in system["frames"] if fr.get("service_call")), None)
            ctx = [line for ex in history[-history_turns:] for line in ex]
            instruction = F.cra_instruction(instruction_funcs, ctx)
            if call_fr is not None:
                call = call_fr["service_call"]
                service = schema[call_fr["service"]]
                thought = "Thought: " + _call_thought(service, call["method"], call["parameters"])
                action = F.format_action(call["method"], call["parameters"])
                obs = F.format_observation(_observation(call_fr.get("service_results", [])))
                rows.append({
                    "instruction": instruction, "input": f"{user_line}\n{thought}", "output": action,
                    "meta": _sgd_meta("cra_action", dl["dialogue_id"], ti, split, thought="templated"),
                })
                rows.append({
                    "instruction": instruction, "input": f"{user_line}\n{thought}\n{action}\n{obs}",
                    "output": sys_line,
                    "meta": _sgd_meta("cra_response", dl["dialogue_id"], ti, split, thought="templated"),
                })
                history.append([user_line, thought, action, obs, sys_line])
            else:
                thought = "Thought: " + _reply_thought(system["frames"])
                rows.append({
                    "instruction": instruction, "input": f"{user_line}\n{thought}", "output": sys_line,
                    "meta": _sgd_meta("cra_response", dl["dialogue_id"], ti, split, thought="templated"),
                })
                history.append([user_line, thought, sys_line])
    return rows


BUILDERS = {
    "snips": lambda root, seed=0: build_snips_dst(root),
    "sgd": lambda root, seed=0: build_sgd_la(root, seed=seed) + build_sgd_cra(root),
}
