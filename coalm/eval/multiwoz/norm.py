"""MultiWOZ string matching and normalisation: fuzzywuzzy's partial_ratio, our state parsing, and mwzeval's
`normalize_data` (slot names, venue names, food, types, times, placeholders), written from their documented rules.

- `partial_ratio` is fuzzywuzzy 0.18's as mwzeval runs it, with python-Levenshtein installed: matching blocks from
  Levenshtein opcodes, windows scored by the Indel ratio, 100 above 0.995, `int(round(100 * best))`; equal
  strings 100 (checked before empty ones), an empty string 0. Computed with rapidfuzz (maintained; the Levenshtein
  package fuzzywuzzy uses is itself built on it).
- `mwz_state` is what mwzeval's `normalize_data` does to a turn's state: slot names lowercased without spaces,
  arriveby -> arrive, leaveat -> leave; values through `normalize_state_slot_value` (venue/place names, food,
  type, time, parking/internet). Where mwzeval would raise (`int()` of a non-number before "pm") the value is kept.
"""

from __future__ import annotations

import functools
import re

from rapidfuzz.distance import Indel, Levenshtein

ONTOLOGY = {
    "hotel": ["pricerange", "type", "parking", "book stay", "book day", "book people", "area", "stars", "internet",
              "name"],
    "train": ["destination", "day", "departure", "arriveby", "book people", "leaveat"],
    "attraction": ["area", "name", "type"],
    "restaurant": ["food", "pricerange", "area", "name", "book time", "book day", "book people"],
    "taxi": ["leaveat", "destination", "departure", "arriveby"],
}
EMPTY_VALUES = {"", "not mentioned", "none"}
DONTCARE = {"dontcare", "not mentioned", "don't care", "dont care", "do n't care", "do not care"}  # mwzeval's list
_SLOT_ALIASES = {"leave at": "leaveat", "leave": "leaveat", "arrive by": "arriveby", "arrive": "arriveby",
                 "price range": "pricerange", "price": "pricerange"}
_GOLD_DONTCARE = {"dont care", "don't care", "do n't care", "do nt care", "dontcare", "don't care."}
MAX_VALUE = 1000  # characters of a predicted slot value kept (fuzzy matching is quadratic in length)


@functools.lru_cache(maxsize=1 << 16)  # database look-ups repeat the same (column, value) pairs many times
def partial_ratio(s1, s2) -> int:
    """fuzzywuzzy's `fuzz.partial_ratio` with python-Levenshtein, 0-100."""
    if s1 is None or s2 is None:
        return 0
    if s1 == s2:
        return 100
    s1, s2 = str(s1)[:MAX_VALUE * 4], str(s2)[:MAX_VALUE * 4]
    if not s1 or not s2:
        return 0
    short, long_ = (s1, s2) if len(s1) <= len(s2) else (s2, s1)
    best = 0.0
    for a, b, _ in Levenshtein.opcodes(short, long_).as_matching_blocks():
        start = max(b - a, 0)
        r = Indel.normalized_similarity(short, long_[start:start + len(short)])
        if r > 0.995:
            return 100
        best = max(best, r)
    return round(100 * best)


# ---------------------------------------------------------------- our state format


def norm_slot(slot) -> str:
    s = " ".join(str(slot).lower().replace("_", " ").replace("-", " ").split())
    if s.startswith("book") and not s.startswith("book "):
        s = "book " + s[4:]
    return _SLOT_ALIASES.get(s, s)


def norm_value(value) -> str:
    """Gold values from the dataset's metadata: lowercased, spaces collapsed, the dontcare spellings unified."""
    v = " ".join(str(value).lower().split())
    return "dontcare" if v in _GOLD_DONTCARE else v


def normalize_state(state) -> dict:
    """A predicted state -> {domain: {slot: value}}: domain and slot names canonical (also from {"domain-slot": v}),
    values kept as written (strict JGA compares them exactly, case included), empty ones dropped."""
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
            if isinstance(v, (dict, list)) or v is None:
                continue
            v = v if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)
            if v.strip().lower() not in EMPTY_VALUES:
                out.setdefault(d.strip().lower(), {})[norm_slot(s)] = v[:MAX_VALUE]
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


# ---------------------------------------------------------------- mwzeval's normalize_data

# name_to_canonical's corrections, restaurant, hotel and attraction tables in the order mwzeval tries them.
_NAME_FIX = {
    "hotel du vin bistro": "hotel du vin and bistro", "the river bar and grill": "the river bar steakhouse and grill",
    "nando's": "nandos", "city center b and b": "city center north b and b", "acorn house": "acorn guest house",
    "caffee uno": "caffe uno", "cafe uno": "caffe uno", "rosa's": "rosas bed and breakfast",
    "restaurant called two two": "restaurant two two", "restaurant 2 two": "restaurant two two",
    "restaurant two 2": "restaurant two two", "restaurant 2 2": "restaurant two two",
    "restaurant 1 7": "restaurant one seven", "restaurant 17": "restaurant one seven",
    "lime house": "limehouse", "cityrooms": "cityroomz", "whale of time": "whale of a time",
    "huntingdon hotel": "huntingdon marriott hotel",
    "holiday inn exlpress, cambridge": "express by holiday inn cambridge", "university hotel": "university arms hotel",
    "arbury guesthouse and lodge": "arbury lodge guesthouse", "bridge house": "bridge guest house",
    "arbury guesthouse": "arbury lodge guesthouse", "nandos in the city centre": "nandos city centre",
    "broughton gallery": "broughton house gallery", "scudamores punt co": "scudamores punting co",
    "cambridge botanic gardens": "cambridge university botanic gardens", "the junction": "junction theatre",
    "trinity street college": "trinity college", "christ college": "christ's college", "christs": "christ's college",
    "history of science museum": "whipple museum of the history of science",
    "parkside pools": "parkside swimming pool",
    "the botanical gardens at cambridge university": "cambridge university botanic gardens",
    "cafe jello museum": "cafe jello gallery",
}
_FOOD_FIX = {
    "eriterean": "mediterranean", "brazilian": "portuguese", "sea food": "seafood", "portugese": "portuguese",
    "modern american": "north american", "americas": "north american", "intalian": "italian", "italain": "italian",
    "asian or oriental": "asian", "english": "british", "australasian": "australian", "gastropod": "gastropub",
    "brutish": "british", "bristish": "british", "europeon": "european",
}
_TYPE_FIX = {"swimming pool": "swimmingpool", "mutliple sports": "multiple sports", "night club": "nightclub",
             "guest house": "guesthouse"}
_TIME_WORDS = {"afternoon": "13:00", "lunch": "12:00", "noon": "12:00", "mid-day": "12:00",
               "around lunch time": "12:00", "morning": "08:00", "seven o'clock tomorrow evening": "07:00",
               "three forty five p.m": "15:45", "one thirty p.m.": "13:30", "six fourty five": "06:45",
               "eight thirty": "08:30"}


def _name(v: str) -> str:
    v = v.strip().lower().replace(" & ", " and ").replace("&", " and ").replace(" '", "'")
    return _NAME_FIX.get(v, v)


def _time(t: str) -> str:
    t = t.strip().lower()
    if t in _TIME_WORDS:
        return _TIME_WORDS[t]
    if t.startswith("one o'clock p.m"):
        return "13:00"
    if t.startswith("ten o'clock a.m"):
        return "10:00"
    if t.startswith("by"):
        t = t[3:]
    if t.startswith("after"):
        t = t[5:].strip()
    if t.startswith("afer"):
        t = t[4:].strip()
    if t.endswith("am"):
        t = t[:-2].strip()
    if t.endswith("a.m."):
        t = t[:-4].strip()
    if t.endswith(("pm", "p.m.")):
        t = t[:-2].strip() if t.endswith("pm") else t[:-4].strip()
        parts = t.split(":")
        try:
            if len(parts) == 2:
                return f"{int(parts[0]) + 12}:{parts[1]}"
            if len(parts) == 1 and parts[0].isdigit():
                return f"{int(parts[0]) + 12}:00"
        except ValueError:  # mwzeval raises here ("x:15 pm", "²"); the value stays as it is
            return t
    if not t:
        return "00:00"
    if t[-1] in ".,?":
        t = t[:-1]
    if t.isdigit() and len(t) == 4:
        return t[:2] + ":" + t[2:]
    if t.isdigit():
        return t.zfill(2) + ":00"
    if ":" in t:
        t = "".join(t.split(" "))
    if len(t) == 4 and t[1] == ":":
        return t.split(":")[0].zfill(2) + ":" + t.split(":")[1]
    return t


def mwz_slot(slot: str) -> str:
    s = str(slot).lower().replace(" ", "")
    return {"arriveby": "arrive", "leaveat": "leave"}.get(s, s)


def mwz_value(slot: str, value) -> str:
    """mwzeval's `normalize_state_slot_value` (slot already through `mwz_slot`)."""
    v = value if isinstance(value, str) else str(value)
    if slot in ("name", "destination", "departure"):
        return _name(v)
    if slot == "type":
        return _TYPE_FIX.get(v, v)
    if slot == "food":
        f = v.strip().lower()
        return _FOOD_FIX.get(f, f)
    if slot in ("arrive", "leave", "arriveby", "leaveat", "time"):
        return _time(v)
    if slot in ("parking", "internet"):
        return "yes" if v == "free" else v
    return v


def mwz_state(state: dict) -> dict:
    return {d: {mwz_slot(s): mwz_value(mwz_slot(s), v) for s, v in slots.items()} for d, slots in state.items()}


def time_minutes(t: str) -> int:
    """mwzeval's `time_str_to_minutes`: HH:MM at the start, else 0."""
    if not re.match(r"[0-9][0-9]:[0-9][0-9]", t):
        return 0
    try:
        return int(t.split(":")[0]) * 60 + int(t.split(":")[1])
    except ValueError:  # "10:15x": mwzeval raises
        return 0
