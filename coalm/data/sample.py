"""The embedded CoALM-IT sample: a few hundred rows over five made-up services, written by this module.

    python -m coalm.data sample --out engine/data/sample/train.jsonl

writes the train part there and the held-out eval part beside it (`eval.jsonl`). The files ship with the engine
(`engine/data/sample/`), which knows them only as Alpaca rows, so that `python -m engine.train` runs with no data
of one's own. Generation is deterministic for a seed. The sample is the default training data (`--data sample`);
`--data sample-eval` is what the demo scores before and after fine-tuning (`python -m coalm.eval --bench sample`,
coalm/eval/sample.py).

What it teaches, so that a 135M model fine-tuned for minutes on a CPU shows a measurable change: one fixed
instruction per format, short tool lists, and outputs whose exact form is checkable (a JSON list of calls, a DST
JSON object, an `Action: f(a='v')` line, a templated reply). The values must be copied from the query, and the eval
split draws names, places and songs from pools the train split never sees, so exact match there needs copying,
not memorising. Eval rows never share an input with train rows (checked at build time).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from engine.data.rows import SAMPLES, DataError, load

from . import formats as F

SAMPLE_EVAL_FILE = SAMPLES["sample-eval"]  # written beside the train part by `python -m coalm.data sample`
TRAIN_COUNTS = {"la": 120, "dst": 80, "cra_action": 70, "cra_response": 70}
EVAL_COUNTS = {"la": 16, "dst": 16, "cra_action": 16, "cra_response": 16}

# Pools: (shared by both splits) or split into (train, eval-only) by `_EVAL_TAIL` items at the end.
POOLS = {
    "city": ["Oslo", "Lima", "Dakar", "Perth", "Quito", "Hanoi", "Porto", "Tunis", "Leeds", "Cusco", "Bergen",
             "Turin", "Malmo", "Graz", "Izmir", "Kyoto", "Cork", "Riga", "Split", "Nantes"],
    "day": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
    "cuisine": ["Thai", "Greek", "Mexican", "Korean", "Lebanese", "Ethiopian", "Peruvian", "Vietnamese", "Spanish",
                "Turkish"],
    "restaurant": ["Blue Lantern", "Olive Grove", "Copper Pot", "Saffron House", "Green Fig", "Little Anchor",
                   "Red Door Bistro", "Maple Table", "Silver Spoon", "Golden Wok", "Harbor Grill", "Stone Oven"],
    "party_size": ["2", "3", "4", "5", "6", "7", "8"],
    "time": ["6 pm", "7:30 pm", "8 pm", "noon", "9 am", "7 am", "5:15 pm", "10 pm", "1 pm", "6:45 am"],
    "song": ["Paper Moon", "Electric Sky", "Slow River", "Neon Nights", "Golden Hour", "Lost Signal", "Quiet Storm",
             "Summer Rain", "Wild Heart", "Midnight Train", "Ocean Drive", "Falling Stars"],
    "artist": ["The Velvet Owls", "Mira Stone", "Jonah Reed", "Static Bloom", "Luna Vale", "Kite Parade", "Ada Fox",
               "The Night Ferns", "Rio Banks", "Echo Harbor"],
    "name": ["Road Trip", "Morning Run", "Rainy Days", "Study Beats", "Sunday Chill", "Party Mix", "Deep Focus",
             "Old Gold", "Late Night", "Kitchen Jams"],
    "place": ["the airport", "Central Station", "the museum", "Pine Street 12", "the stadium", "Harbor Park",
              "the city hall", "Oak Avenue 5", "the university", "the mall", "Lake Road 8", "the library"],
    "task": ["call mom", "buy milk", "water the plants", "pay the rent", "book the dentist", "feed the cat",
             "send the report", "pick up the kids", "renew my passport", "take my pills"],
}
_SHARED = {"day", "party_size", "time", "cuisine"}
_EVAL_TAIL = 0.25


@dataclass(frozen=True)
class Func:
    name: str
    service: str
    domain: str  # the DST domain (intent) name
    description: str
    args: dict  # arg -> (pool, description)
    queries: tuple  # templates over the args
    partial: str  # a first turn that gives all args but the last
    ask: str  # the system's question for the last arg
    followup: str  # the user's answer, giving the last arg
    intent: str  # "the user wants to ..." phrase for thoughts
    observe: callable  # (rng, values) -> observation dict
    reply: str  # template over values + observation


FUNCS = [
    Func("get_forecast", "SkyCast", "GetForecast", "Get the weather forecast for a city on a given day.",
         {"city": ("city", "Name of the city"), "day": ("day", "Day of the week")},
         ("What's the weather in {city} on {day}?", "Will it rain in {city} on {day}?",
          "Give me the forecast for {city} for {day}.", "How warm will it be in {city} on {day}?"),
         "What's the weather going to be like in {city}?", "Which day would you like the forecast for?", "On {day}.",
         "get the weather forecast", lambda r, v: {"condition": r.choice(["sunny", "rainy", "cloudy", "windy"]),
                                                   "high_c": r.randint(-5, 35)},
         "On {day} {city} will be {condition} with a high of {high_c} degrees."),
    Func("get_air_quality", "SkyCast", "GetAirQuality", "Get the current air quality index of a city.",
         {"city": ("city", "Name of the city")},
         ("How is the air quality in {city}?", "Is the air clean in {city} right now?",
          "Check the air quality index for {city}."),
         "How is the air quality today?", "Which city should I check?", "In {city}.",
         "check the air quality", lambda r, v: {"aqi": r.randint(10, 180)},
         "The air quality index in {city} is {aqi}."),
    Func("find_restaurant", "TableTime", "FindRestaurant", "Find restaurants of a cuisine in a city.",
         {"city": ("city", "City to search in"), "cuisine": ("cuisine", "Kind of food")},
         ("Find a {cuisine} restaurant in {city}.", "I'm hungry, any {cuisine} places in {city}?",
          "Search for {cuisine} food in {city}."),
         "I'm looking for a restaurant in {city}.", "What kind of food would you like?", "Something {cuisine}.",
         "find a restaurant", lambda r, v: {"count": r.randint(2, 9), "top": r.choice(POOLS["restaurant"])},
         "I found {count} {cuisine} restaurants in {city}; the best rated is {top}."),
    Func("book_table", "TableTime", "BookTable", "Book a table at a restaurant.",
         {"restaurant": ("restaurant", "Name of the restaurant"), "party_size": ("party_size", "Number of people"),
          "time": ("time", "Time of the booking")},
         ("Book a table at {restaurant} for {party_size} at {time}.",
          "Reserve {restaurant} for {party_size} people at {time}, please.",
          "Can you get me a table for {party_size} at {restaurant} at {time}?"),
         "I'd like a table for {party_size} at {restaurant}.", "What time should I book it for?", "At {time}.",
         "book a table", lambda r, v: {"booking_id": f"TT-{r.randint(1000, 9999)}"},
         "Your table for {party_size} at {restaurant} at {time} is booked; the booking number is {booking_id}."),
    Func("play_song", "TuneBox", "PlaySong", "Play a song by an artist.",
         {"song": ("song", "Title of the song"), "artist": ("artist", "Name of the artist")},
         ("Play {song} by {artist}.", "I want to hear {song} by {artist}.", "Put on the song {song} by {artist}."),
         "Play the song {song}.", "Which artist is it by?", "It's by {artist}.",
         "play a song", lambda r, v: {"duration": f"{r.randint(2, 5)}:{r.randint(0, 59):02d}"},
         "Now playing {song} by {artist} ({duration})."),
    Func("create_playlist", "TuneBox", "CreatePlaylist", "Create a new empty playlist.",
         {"name": ("name", "Name of the playlist")},
         ("Create a playlist called {name}.", "Make a new playlist named {name}.",
          "Start a playlist with the name {name}."),
         "I want to make a new playlist.", "What should the playlist be called?", "Call it {name}.",
         "create a playlist", lambda r, v: {"playlist_id": f"PL-{r.randint(100, 999)}"},
         "I created the playlist {name} (id {playlist_id})."),
    Func("book_ride", "RideNow", "BookRide", "Book a car ride from a pickup point to a destination.",
         {"pickup": ("place", "Where to pick the user up"), "destination": ("place", "Where to go")},
         ("Get me a ride from {pickup} to {destination}.", "I need a car from {pickup} to {destination}.",
          "Book a taxi from {pickup} going to {destination}."),
         "I need a ride from {pickup}.", "Where would you like to go?", "To {destination}, please.",
         "book a ride", lambda r, v: {"driver": r.choice(["Sam", "Ana", "Li", "Omar", "Eva"]),
                                      "eta_min": r.randint(2, 15)},
         "{driver} will pick you up at {pickup} in {eta_min} minutes."),
    Func("set_reminder", "RemindMe", "SetReminder", "Set a reminder for a task at a time.",
         {"task": ("task", "What to be reminded of"), "time": ("time", "When to remind")},
         ("Remind me to {task} at {time}.", "Set a reminder at {time} to {task}.",
          "Don't let me forget to {task} at {time}."),
         "Remind me to {task}.", "When should I remind you?", "At {time}.",
         "set a reminder", lambda r, v: {"reminder_id": f"R-{r.randint(10, 99)}"},
         "I'll remind you to {task} at {time}."),
]
SERVICES = sorted({f.service for f in FUNCS})


def _pool(name: str, split: str) -> list[str]:
    items = POOLS[name]
    if name in _SHARED:
        return items
    cut = len(items) - max(1, round(len(items) * _EVAL_TAIL))
    return items[:cut] if split == "train" else items[cut:]


def _values(rng: random.Random, f: Func, split: str) -> dict:
    vals: dict[str, str] = {}
    for arg, (pool, _) in f.args.items():
        choices = [x for x in _pool(pool, split) if x not in vals.values()]  # pickup != destination
        vals[arg] = rng.choice(choices)
    return vals


def _tool(f: Func) -> dict:
    return {"name": f.name, "description": f.description,
            "parameters": {a: {"description": d, "type": "string"} for a, (_, d) in f.args.items()}}


def _thought_call(f: Func) -> str:
    return f"Thought: The user wants to {f.intent}. I have {', '.join(f.args)}, so I will call {f.name}."


def _thought_ask(f: Func) -> str:
    last = list(f.args)[-1].replace("_", " ")
    return f"Thought: I need the {last} before I can go on, so I will ask the user for it."


DST_INSTRUCTION = F.dst_instruction({f.domain: list(f.args) for f in FUNCS})


def _la_row(rng, split):
    f = rng.choice(FUNCS)
    vals = _values(rng, f, split)
    query = rng.choice(f.queries).format(**vals)
    no_tool = rng.random() < 0.15
    others = [g for g in FUNCS if g.service != f.service]
    tools = rng.sample(others, rng.randint(1, 2)) + ([] if no_tool else [f])
    rng.shuffle(tools)
    calls = [] if no_tool else [{"name": f.name, "arguments": vals}]
    return {"instruction": F.la_instruction([_tool(t) for t in tools]), "input": query, "output": F.la_output(calls),
            "meta": {"format": "la", "source": "sample", "no_tool": no_tool}}


def _dst_row(rng, split):
    f = rng.choice(FUNCS)
    vals = _values(rng, f, split)
    query = rng.choice(f.queries).format(**vals)
    return {"instruction": DST_INSTRUCTION, "input": f"User: {query}", "output": F.dst_output(f.domain, vals),
            "meta": {"format": "dst", "source": "sample"}}


def _cra_context(rng, split):
    """A function, its values, the instruction's function list and a history (one slot-filling exchange or none)."""
    f = rng.choice(FUNCS)
    vals = _values(rng, f, split)
    other = rng.choice([s for s in SERVICES if s != f.service])
    funcs = [(g.name, list(g.args), g.description) for g in FUNCS if g.service in (f.service, other)]
    rng.shuffle(funcs)
    return f, vals, funcs


def _cra_rows(rng, split, want_action: bool):
    """One CRA row: an action row, or a response row (after a call, or asking for a missing argument)."""
    f, vals, funcs = _cra_context(rng, split)
    multi = rng.random() < 0.5
    if multi:
        history = [f"User: {f.partial.format(**vals)}", _thought_ask(f), f"System: {f.ask}"]
        user = f"User: {f.followup.format(**vals)}"
    else:
        history = []
        user = f"User: {rng.choice(f.queries).format(**vals)}"
    instruction = F.cra_instruction(funcs, history)
    action = F.format_action(f.name, vals)
    meta = {"source": "sample", "thought": "templated"}
    if want_action:
        return {"instruction": instruction, "input": f"{user}\n{_thought_call(f)}", "output": action,
                "meta": {"format": "cra_action", **meta}}
    if rng.random() < 0.3:  # a turn that needs no call: the assistant asks for the missing argument
        instruction = F.cra_instruction(funcs, [])
        return {"instruction": instruction, "input": f"User: {f.partial.format(**vals)}\n{_thought_ask(f)}",
                "output": f"System: {f.ask}", "meta": {"format": "cra_response", **meta}}
    obs = f.observe(rng, vals)
    reply = f.reply.format(**vals, **obs)
    return {"instruction": instruction,
            "input": f"{user}\n{_thought_call(f)}\n{action}\n{F.format_observation(obs)}",
            "output": f"System: {reply}", "meta": {"format": "cra_response", **meta}}


_MAKERS = {
    "la": _la_row,
    "dst": _dst_row,
    "cra_action": lambda rng, split: _cra_rows(rng, split, True),
    "cra_response": lambda rng, split: _cra_rows(rng, split, False),
}


def generate_sample(seed: int = 0, train_counts: dict | None = None,
                    eval_counts: dict | None = None) -> tuple[list[dict], list[dict]]:
    """(train rows, eval rows); deterministic for `seed`. No two rows repeat, and no eval input is a train input."""
    rng = random.Random(seed)
    seen: set[tuple] = set()
    out = {}
    for split, counts in (("train", train_counts or TRAIN_COUNTS), ("eval", eval_counts or EVAL_COUNTS)):
        rows = []
        for fmt, n in counts.items():
            made, tries = 0, 0
            while made < n:
                tries += 1
                if tries > 50 * n:
                    raise DataError(f"sample: cannot make {n} distinct {fmt} rows for {split}; pools too small")
                r = _MAKERS[fmt](rng, split)
                key = (r["instruction"], r["input"])
                # inputs alone are compared too, so an eval query never appears in train under another tool list
                if key in seen or (split == "eval" and ("input", r["input"]) in seen):
                    continue
                seen.add(key)
                seen.add(("input", r["input"]))
                r["meta"]["id"] = f"sample/{split}/{fmt}/{made}"
                r["meta"]["split"] = split
                rows.append(r)
                made += 1
        rng.shuffle(rows)
        out[split] = rows
    return out["train"], out["eval"]


def load_sample(split: str = "train") -> list[dict]:
    """The committed sample rows (`split`: train or eval)."""
    specs = {"train": "sample", "eval": "sample-eval"}
    if split not in specs:
        raise DataError(f"sample split {split!r} unknown; valid: {sorted(specs)}")
    return load(specs[split])
