"""Synthetic function-calling rows (CoALM-IT LA format) over the API catalogue in `apis.py`.

    rows = generate_la(n=4000, seed=0)

Row patterns (`meta["pattern"]`), so a small model learns tool choice and argument typing, not one schema:
- "single": one call; the tool list mixes the target with same-domain look-alikes and other tools;
- "parallel": two or three calls to one function with different values ("... for Oslo, and also for Lima"), or
  with one parameter's values listed together and the rest shared ("in Berlin and Paris next Friday"), as BFCL
  words its parallel questions;
- "multi": calls to two different functions in one query;
- "parallel_multi": calls to two or three functions, one of them for several values (BFCL's parallel_multiple);
- "none": no listed tool fits the query; the output is `[]`;
- "dialogue": the values are spread over a short User/AI exchange, sometimes after a logged-in token was
  returned by an earlier `API:` line that the call must copy (the API-Bank situation).
Values are copied verbatim, converted (number words -> 5, "March 5th, 2024 at 3 PM" -> "2024-03-05 15:00:00") or
left out (optional parameters the user does not mention are not in the call). Each row picks one naming of the
types ("integer/number/object", BFCL's "integer/float/dict" or Python's "int/float/dict"), so that the model does
not depend on one vocabulary. Deterministic for a seed.
"""

from __future__ import annotations

import random

from .. import formats as F
from .apis import APIS, EXTRA_POOLS, Api, Param
from .pools import MONTHS, POOLS, number_words, ordinal

# A fifth of the rows call nothing: with far fewer, a small model learns to always call (BFCL irrelevance falls
# to 0). Rows with several calls are 44%: at 25% the tuned model answered BFCL's parallel items with one call.
PATTERNS = {"single": 0.17, "parallel": 0.22, "multi": 0.12, "parallel_multi": 0.10, "none": 0.21, "dialogue": 0.18}
DIALECTS = (
    {"integer": "integer", "number": "number", "boolean": "boolean", "string": "string", "array": "array",
     "object": "object"},
    {"integer": "integer", "number": "float", "boolean": "boolean", "string": "string", "array": "array",
     "object": "dict"},
    {"integer": "int", "number": "float", "boolean": "bool", "string": "str", "array": "list", "object": "dict"},
)
_STRINGY = ("string", "enum", "date", "datetime", "clock")
FRAMES = ("{x}.", "Please {x}.", "Can you {x}?", "Could you {x}?", "I need to {x}.", "I want you to {x}.",
          "Hey, {x}.", "{x}, please.", "Would you {x} for me?", "I'd like you to {x}.", "Quick one: {x}.")
JOINERS = (", and also ", ". Also ", ", then ", "; and ", ". After that, ")
ASKS = ("What is the {d}?", "Sure. Could you tell me the {d}?", "Okay, which {d} should I use?")
POOL = {**POOLS, **EXTRA_POOLS}


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# ---------------------------------------------------------------- values and how a user says them

def _number(rng, p: Param):
    decimals = rng.choice((0, 0, 1, 2)) if p.hi - p.lo > 2 else 2
    v = round(rng.uniform(p.lo, p.hi), decimals)
    return int(v) if decimals == 0 else v


def _int_text(rng, v: int) -> str:
    # Small counts are often written as words; the call still carries the integer.
    return number_words(v) if 0 <= v <= 100 and rng.random() < 0.3 else str(v)


def _date(rng):
    y, m, d = rng.randint(2023, 2026), rng.randint(1, 12), rng.randint(1, 28)
    text = rng.choice((f"{MONTHS[m - 1]} {d}, {y}", f"{MONTHS[m - 1]} {ordinal(d)}, {y}", f"{d} {MONTHS[m - 1]} {y}",
                       f"{y}-{m:02d}-{d:02d}"))
    return f"{y}-{m:02d}-{d:02d}", text


def _clock(rng):
    h, mi = rng.randint(0, 23), rng.choice((0, 0, 15, 30, 45))
    h12, ampm = (h % 12 or 12), ("AM" if h < 12 else "PM")
    text = rng.choice((f"{h12} {ampm}" if mi == 0 else f"{h12}:{mi:02d} {ampm}", f"{h:02d}:{mi:02d}",
                       f"{h12}:{mi:02d} {ampm.lower()}"))
    return f"{h:02d}:{mi:02d}", text


def value_and_text(rng: random.Random, p: Param):
    """(value for the call, how the query says it)."""
    if p.kind == "integer":
        v = rng.randint(int(p.lo), int(p.hi))
        return v, _int_text(rng, v)
    if p.kind == "number":
        v = _number(rng, p)
        return v, str(v)
    if p.kind == "boolean":
        v = rng.random() < 0.5
        return v, None  # the phrase itself says it
    if p.kind == "enum":
        v = rng.choice(p.choices)
        return v, v
    if p.kind == "string":
        v = rng.choice(POOL[p.pool])
        return v, v
    if p.kind == "array":
        if p.pool == "numbers":
            v = [rng.randint(1, 99) for _ in range(rng.randint(3, 6))]
            return v, _join([str(x) for x in v])
        v = rng.sample(POOL[p.pool], rng.randint(2, min(4, len(POOL[p.pool]))))
        return v, _join(v)
    if p.kind == "object":
        vals = {f.name: value_and_text(rng, f) for f in p.fields}
        return {k: v for k, (v, _) in vals.items()}, {k: t for k, (_, t) in vals.items()}
    if p.kind == "date":
        return _date(rng)
    if p.kind == "datetime":
        (d, dt), (c, ct) = _date(rng), _clock(rng)
        return f"{d} {c}:00", rng.choice((f"{dt} at {ct}", f"{ct} on {dt}"))
    if p.kind == "clock":
        return _clock(rng)
    raise ValueError(f"unknown parameter kind {p.kind!r} ({p.name})")


def phrase(rng: random.Random, p: Param, value, text) -> str:
    if p.kind == "boolean":
        return p.say[0] if value else p.say[1]
    if p.kind == "object":
        return rng.choice(p.say).format(**text)
    return rng.choice(p.say).format(v=text)


# ---------------------------------------------------------------- tools as the LA format shows them

def _schema(p: Param, dialect: dict) -> dict:
    out = {"description": p.desc, "type": dialect["string"] if p.kind in _STRINGY else dialect[p.kind]}
    if p.kind == "enum":
        out["enum"] = list(p.choices)
    if p.kind == "array":
        out["items"] = {"type": dialect["integer"] if p.pool == "numbers" else dialect["string"]}
    if p.kind == "object":
        out["properties"] = {f.name: _schema(f, dialect) for f in p.fields}
    if p.optional:
        out["default"] = p.default
    return out


def tool(api: Api, dialect: dict, extra: tuple = ()) -> dict:
    params = {p.name: _schema(p, dialect) for p in (*extra, *api.params)}
    return {"name": api.name, "description": api.desc, "parameters": params}


# ---------------------------------------------------------------- one call and its query

def make_call(rng: random.Random, api: Api, mention_optional: float = 0.5):
    """(call, [phrases]) with every required parameter and some optional ones."""
    args, phrases = {}, []
    for p in api.params:
        if p.optional and rng.random() >= mention_optional:
            continue
        v, t = value_and_text(rng, p)
        args[p.name] = v
        phrases.append(phrase(rng, p, v, t))
    return {"name": api.name, "arguments": args}, phrases


def _clause(rng, api: Api, phrases: list[str]) -> str:
    phrases = list(phrases)
    if rng.random() < 0.3:
        rng.shuffle(phrases)
    return " ".join([rng.choice(api.verbs), *phrases])


def _framed(rng, clause: str) -> str:
    return _cap(rng.choice(FRAMES).format(x=clause))


def _tools(rng, targets: list[Api], dialect: dict, exclude: set[str] = frozenset()) -> list[dict]:
    names = {a.name for a in targets} | set(exclude)
    same = [a for a in APIS if a.domain in {t.domain for t in targets} and a.name not in names]
    other = [a for a in APIS if a.name not in names and a not in same]
    k_same, k_other = rng.randint(0, min(2, len(same))), rng.randint(0, 2)
    picked = list(targets) + rng.sample(same, k_same) + rng.sample(other, k_other)
    if len(picked) == 0:
        picked = rng.sample(other, 2)
    rng.shuffle(picked)
    return [tool(a, dialect) for a in picked]


def _row(tools, query, calls, pattern, i, asked=None) -> dict:
    asked = asked or list(dict.fromkeys(c["name"] for c in calls))  # the APIs the query asks for
    return {"instruction": F.la_instruction(tools), "input": query, "output": F.la_output(calls),
            "meta": {"format": "la", "source": "synth", "id": f"synth/{i}", "pattern": pattern, "asked": asked}}


def _single(rng, i, dialect):
    api = rng.choice(APIS)
    call, ph = make_call(rng, api)
    return _row(_tools(rng, [api], dialect), _framed(rng, _clause(rng, api, ph)), [call], "single", i)


_LISTABLE = ("string", "integer", "enum", "number", "date", "clock")


def _shared_calls(rng, api: Api, k: int):
    """(k calls, clause) where one parameter takes k values said together ("in Berlin and Paris", "for 10 and 20
    years") and the other values are shared by every call, the way BFCL's parallel questions are worded; None when
    the API has no parameter whose values can be listed."""
    listable = [p for p in api.params if not p.optional and p.kind in _LISTABLE]
    if not listable:
        return None
    vary = rng.choice(listable)
    call, ph = make_call(rng, api, mention_optional=0.3)
    values, texts = [], []
    for _ in range(20):  # k distinct values (a small enum may have fewer)
        v, t = value_and_text(rng, vary)
        if v not in values:
            values.append(v)
            texts.append(t)
        if len(values) == k:
            break
    if len(values) < 2:
        return None
    mentioned = [p for p in api.params if p.name in call["arguments"]]
    phrases = [phrase(rng, p, values, _join(texts)) if p is vary else x for p, x in zip(mentioned, ph)]
    calls = [{"name": api.name, "arguments": {**call["arguments"], vary.name: v}} for v in values]
    return calls, _clause(rng, api, phrases)


def _parallel(rng, i, dialect):
    api = rng.choice([a for a in APIS if a.params])
    shared = _shared_calls(rng, api, rng.choice((2, 2, 3))) if rng.random() < 0.5 else None
    if shared:
        calls, clause = shared
        return _row(_tools(rng, [api], dialect), _framed(rng, clause), calls, "parallel", i)
    calls, parts = [], []
    for _ in range(rng.randint(2, 3)):
        call, ph = make_call(rng, api, mention_optional=0.3)
        calls.append(call)
        parts.append(" ".join(ph))
    query = _framed(rng, rng.choice(api.verbs) + " " + parts[0] + "".join(
        rng.choice((", and also ", ", and ", "; also ", ", as well as ")) + p for p in parts[1:]))
    return _row(_tools(rng, [api], dialect), query, calls, "parallel", i)


def _multi(rng, i, dialect, repeat: bool = False):
    """Calls to two or three different functions; with `repeat` ("parallel_multi"), one of them is called for
    several values (BFCL's parallel_multiple)."""
    apis = rng.sample(APIS, rng.choice((2, 2, 3)))
    calls, clauses = [], []
    twice = rng.randrange(len(apis)) if repeat else -1
    for j, api in enumerate(apis):
        shared = _shared_calls(rng, api, 2) if j == twice else None
        if j == twice and shared is None:  # no listable parameter: two separate clauses for the same function
            (c1, p1), (c2, p2) = make_call(rng, api, 0.3), make_call(rng, api, 0.3)
            shared = [c1, c2], _clause(rng, api, p1) + rng.choice((", and ", " and also ")) + " ".join(p2)
        if shared:
            calls += shared[0]
            clauses.append(shared[1])
            continue
        call, ph = make_call(rng, api, mention_optional=0.3)
        calls.append(call)
        clauses.append(_clause(rng, api, ph))
    first = _framed(rng, clauses[0])
    end = first[-1] if first[-1] in ".?" else "."
    query = first.rstrip(".?") + "".join(rng.choice(JOINERS) + c for c in clauses[1:]) + end
    return _row(_tools(rng, apis, dialect), query, calls, "parallel_multi" if repeat else "multi", i)


def _none(rng, i, dialect):
    api = rng.choice(APIS)
    _, ph = make_call(rng, api)
    tools = _tools(rng, [], dialect, exclude={api.name} | {a.name for a in APIS if a.domain == api.domain})
    return _row(tools, _framed(rng, _clause(rng, api, ph)), [], "none", i, asked=[api.name])


_TOKEN = Param("token", "string", "User's token.", ())


def _dialogue(rng, i, dialect):
    api = rng.choice([a for a in APIS if any(not p.optional for p in a.params)])
    call, ph = make_call(rng, api)
    required = [p for p in api.params if not p.optional]
    asked = rng.choice(required)
    # the first user turn leaves out one required value; the assistant asks for it; the user answers
    first = [x for p, x in zip([p for p in api.params if p.name in call["arguments"]], ph) if p is not asked]
    lines = [f"User: {_framed(rng, _clause(rng, api, first))}",
             "AI: " + rng.choice(ASKS).format(d=asked.desc.rstrip(".").split(",")[0].lower().removeprefix("the ")),
             # not capitalised: the answer may start with the value itself ("https://...")
             f"User: {ph[[p.name for p in api.params if p.name in call['arguments']].index(asked.name)]}."]
    extra, targets = (), [api]
    if rng.random() < 0.35:
        login = next(a for a in APIS if a.name == "login_user")
        user, pw = rng.choice(POOL["username"]), rng.choice(POOL["password"])
        token = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randint(10, 18)))
        lines += ["AI: I need to log you in first. What are your username and password?",
                  f"User: {user}, password {pw}.",
                  f"API: [login_user(username='{user}', password='{pw}')] Response: {{\"token\": \"{token}\"}}"]
        call = {"name": api.name, "arguments": {"token": token, **call["arguments"]}}
        extra, targets = (_TOKEN,), [api, login]
    tools = _tools(rng, targets, dialect)
    tools = [tool(api, dialect, extra) if t["name"] == api.name else t for t in tools]
    return _row(tools, "\n".join(lines), [call], "dialogue", i)


_MAKERS = {"single": _single, "parallel": _parallel, "multi": _multi, "none": _none, "dialogue": _dialogue,
           "parallel_multi": lambda rng, i, dialect: _multi(rng, i, dialect, repeat=True)}


def generate_la(n: int, seed: int = 0, patterns: dict[str, float] | None = None) -> list[dict]:
    """`n` LA rows; `patterns` maps pattern name to its share (default `PATTERNS`)."""
    shares = dict(patterns or PATTERNS)
    unknown = set(shares) - set(_MAKERS)
    if unknown:
        raise ValueError(f"unknown synthetic pattern(s) {sorted(unknown)}; valid: {', '.join(_MAKERS)}")
    rng = random.Random(seed)
    names, weights = zip(*shares.items())
    rows = []
    for i in range(n):
        pattern = rng.choices(names, weights)[0]
        rows.append(_MAKERS[pattern](rng, i, rng.choice(DIALECTS)))
    return rows
