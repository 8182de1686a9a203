"""SGD dialogues -> multi-turn DST rows in the CoALM-IT DST format (`coalm.data.formats`), for the agent recipe.

SNIPS DST rows are single utterances with one intent; MultiWOZ asks for the state of a whole conversation. These
rows carry the conversation so far in the input (`User:`/`System:` lines, the last `history_turns` exchanges) and
ask for the cumulative state of the service the user is talking about in that turn:
`System: {"domain": "restaurant", "slot_values": {"city": "San Jose", ...}}`. Domain names are the SGD service names
without the shard number, lower-cased and singular ("Restaurants_1" -> "restaurant"), so they read like MultiWOZ's.
The instruction lists the dialogue's own services plus `n_distractors` others, with their slot names (each
service's own: SGD has several schemas per domain, e.g. Hotels_1..3, whose slots differ).

In a share of the dialogues (`rename`), the slots and domains are renamed for the whole row, instruction and output
alike, to another plausible naming (`price_range` -> `pricerange` or `price range`, `restaurant_name` -> `name`,
`party_size` -> `book people`, `ridesharing` -> `taxi`, ...): the answer must use the names the instruction lists,
not the names SGD happens to use. Without this, a small model trained on SGD answered MultiWOZ (whose slots are
`area`, `pricerange`, `book day`, ...) with SGD's names, and every turn was wrong.
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


# Other names a schema might give a slot or a domain (exact SGD name -> candidates), then rules by name pattern.
SLOT_ALIASES = {
    "city": ("area", "location", "town"), "price_range": ("pricerange", "price range", "price"),
    "cuisine": ("food", "food type"), "category": ("type", "kind"), "star_rating": ("stars", "rating"),
    "destination": ("to",), "to_location": ("destination", "to"), "to_city": ("destination", "to"),
    "from_location": ("departure", "from"), "origin": ("departure", "from"), "origin_city": ("departure", "from"),
    "from_city": ("departure", "from"), "number_of_days": ("book stay", "nights", "stay"),
    "has_wifi": ("internet", "wifi"), "leaving_time": ("leaveat", "leave at", "departure time"),
    "departure_time": ("leaveat", "leave at"), "arrival_time": ("arriveby", "arrive by"),
    "date_of_journey": ("day", "travel date"), "leaving_date": ("day", "travel date"),
}
DOMAIN_ALIASES = {"ridesharing": ("taxi", "ride"), "travel": ("attraction", "sightseeing"), "movie": ("cinema",),
                  "rentalcar": ("car rental", "car"), "event": ("events", "show"), "home": ("apartment", "housing")}


def _alias_candidates(slot: str) -> list[str]:
    out = list(SLOT_ALIASES.get(slot, ()))
    if slot.endswith("_name"):
        out.append("name")
    if slot.startswith("number_of_") or slot in ("party_size", "travelers", "passengers", "group_size"):
        out += ["book people", "people"]
    if "date" in slot:
        out += ["book day", "day"]
    if slot.endswith("time") and "date" not in slot:
        out += ["book time", "time"]
    return out + [slot.replace("_", " "), slot.replace("_", "")]


def renaming(rng: random.Random, domains: dict[str, list[str]]) -> tuple[dict, dict]:
    """({domain: new domain}, {domain: {slot: new slot}}): each name replaced by a random alias, never two slots of
    one domain (or two domains) with the same new name."""
    dom_map, used_d = {}, set(domains)
    for d in domains:
        options = [a for a in DOMAIN_ALIASES.get(d, ()) if a not in used_d]
        if options and rng.random() < 0.7:
            dom_map[d] = rng.choice(options)
            used_d.add(dom_map[d])
    slot_map = {}
    for d, slots in domains.items():
        taken, m = set(), {}
        for s in slots:
            options = [a for a in _alias_candidates(s) if a not in taken and a not in slots]
            m[s] = rng.choice(options) if options and rng.random() < 0.8 else s
            taken.add(m[s])
        slot_map[d] = m
    return dom_map, slot_map


def build_sgd_dst(root: str | Path, split: str = "train", seed: int = 0, history_turns: int = 4,
                  n_distractors: int = 2, limit_dialogues: int | None = None, rename: float = 0.6) -> list[dict]:
    schema, dialogues = _sgd(root, split)
    rng = random.Random(seed)
    slots = {s: [x["name"] for x in sv["slots"]] for s, sv in schema.items()}
    rows = []
    for dl in dialogues[:limit_dialogues]:
        own = list(dict.fromkeys(dl["services"]))
        own_domains = {domain_name(s) for s in own}
        others = [s for s in slots if domain_name(s) not in own_domains]
        shown_services = own + rng.sample(others, min(n_distractors, len(others)))
        rng.shuffle(shown_services)
        domains: dict[str, list[str]] = {}
        for sv in shown_services:  # two services of one domain in a dialogue: their slots together
            listed = domains.setdefault(domain_name(sv), [])
            listed += [x for x in slots[sv] if x not in listed]
        dom_map, slot_map = renaming(rng, domains) if rng.random() < rename else ({}, {})
        instruction = F.dst_instruction({dom_map.get(d, d): [slot_map.get(d, {}).get(x, x) for x in xs]
                                         for d, xs in domains.items()})
        lines: list[str] = []
        for ti, turn in enumerate(dl["turns"]):
            prefix = "User: " if turn["speaker"] == "USER" else "System: "
            lines.append(prefix + turn["utterance"])
            if turn["speaker"] != "USER":
                continue
            # the frame the user is acting on: the one whose state changed this turn, else the first
            frames = turn["frames"]
            frame = next((f for f in frames if f["state"]["slot_values"] and f.get("slots")), frames[0])
            domain = domain_name(frame["service"])
            names = slot_map.get(domain, {})
            state = {names.get(k, k): v[0] for k, v in frame["state"]["slot_values"].items() if v}
            context = lines[-(2 * history_turns - 1):]
            rows.append({
                "instruction": instruction, "input": "\n".join(context),
                "output": F.dst_output(dom_map.get(domain, domain), state),
                "meta": {"format": "dst", "source": "sgd", "id": f"sgd-dst/{split}/{dl['dialogue_id']}/{ti}",
                         "license": "CC BY-SA 4.0"},
            })
    return rows
