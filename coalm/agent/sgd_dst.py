"""SGD dialogues -> multi-turn DST rows in the CoALM-IT DST format (`coalm.data.formats`), for the agent recipe.

SNIPS DST rows are single utterances with one intent; MultiWOZ asks for the state of a whole conversation. These
rows carry the conversation so far in the input (`User:`/`System:` lines, the last `history_turns` exchanges) and
ask for the cumulative state of the service the user is talking about in that turn:
`System: {"domain": "restaurant", "slot_values": {"city": "San Jose", ...}}`. Domain names are the SGD service names
without the shard number, lower-cased and singular ("Restaurants_1" -> "restaurant"), so they read like MultiWOZ's.
The instruction lists the dialogue's own services plus `n_distractors` others, with their slot names.
SGD is CC BY-SA 4.0; the rows inherit it (recorded in meta).
"""

from __future__ import annotations

import random
from pathlib import Path

from coalm.data import formats as F
from coalm.data.builders import _sgd


def domain_name(service: str) -> str:
    base = service.split("_")[0].lower()
    if base.endswith("ses"):
        return base[:-2]
    return base[:-1] if base.endswith("s") and not base.endswith("ss") else base


def build_sgd_dst(root: str | Path, split: str = "train", seed: int = 0, history_turns: int = 4,
                  n_distractors: int = 2, limit_dialogues: int | None = None) -> list[dict]:
    schema, dialogues = _sgd(root, split)
    rng = random.Random(seed)
    slots = {domain_name(s): [x["name"] for x in sv["slots"]] for s, sv in schema.items()}
    rows = []
    for dl in dialogues[:limit_dialogues]:
        own = list(dict.fromkeys(domain_name(s) for s in dl["services"]))
        others = [d for d in slots if d not in own]
        shown = own + rng.sample(others, min(n_distractors, len(others)))
        rng.shuffle(shown)
        instruction = F.dst_instruction({d: slots[d] for d in shown})
        lines: list[str] = []
        for ti, turn in enumerate(dl["turns"]):
            prefix = "User: " if turn["speaker"] == "USER" else "System: "
            lines.append(prefix + turn["utterance"])
            if turn["speaker"] != "USER":
                continue
            # the frame the user is acting on: the one whose state changed this turn, else the first
            frames = turn["frames"]
            frame = next((f for f in frames if f["state"]["slot_values"] and f.get("slots")), frames[0])
            state = {k: v[0] for k, v in frame["state"]["slot_values"].items() if v}
            context = lines[-(2 * history_turns - 1):]
            rows.append({
                "instruction": instruction, "input": "\n".join(context),
                "output": F.dst_output(domain_name(frame["service"]), state),
                "meta": {"format": "dst", "source": "sgd", "id": f"sgd-dst/{split}/{dl['dialogue_id']}/{ti}",
                         "license": "CC BY-SA 4.0"},
            })
    return rows
