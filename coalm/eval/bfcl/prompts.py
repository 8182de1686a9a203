"""BFCL V3 categories and the leaderboard's prompt for Llama-family models (the official style)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from coalm.eval.base import EvalError, read_jsonl

RESPONSES_SUFFIX = ".jsonl"

# Full V3 category sizes (rows in bfcl-eval 2025.6.8); the live weights and the "subset" note use them.
FULL_V3_SIZES = {
    "simple": 400, "multiple": 200, "parallel": 200, "parallel_multiple": 200, "java": 100, "javascript": 50,
    "irrelevance": 240, "live_simple": 258, "live_multiple": 1053, "live_parallel": 16,
    "live_parallel_multiple": 24, "live_irrelevance": 882, "live_relevance": 18,
}
SINGLE_TURN = tuple(FULL_V3_SIZES)
MULTI_TURN = ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context")
MULTI_TURN_SIZES = dict.fromkeys(MULTI_TURN, 200)
GROUPS = {
    "all": SINGLE_TURN + MULTI_TURN,
    "single_turn": SINGLE_TURN,
    "ast": SINGLE_TURN,
    "non_live": ("simple", "irrelevance", "parallel", "multiple", "parallel_multiple", "java", "javascript"),
    "live": ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple", "live_irrelevance",
             "live_relevance"),
    "python": tuple(c for c in SINGLE_TURN if c not in ("java", "javascript")),
    "non_python": ("java", "javascript"),
    "multi_turn": MULTI_TURN,
}
RELEVANCE = ("irrelevance", "live_irrelevance", "live_relevance")

_PROMPT = (
    "You are an expert in composing functions. You are given a question and a set of possible functions. Based on "
    "the question, you will need to make one or more function/tool calls to achieve the purpose.\n"
    "If none of the functions can be used, point it out. If the given question lacks the parameters required by the "
    "function, also point it out.\nYou should only return the function calls in your response.\n\n"
    "If you decide to invoke any of the function(s), you MUST put it in the format of [func_name1(params_name1="
    "params_value1, params_name2=params_value2...), func_name2(params)]\n"
    "You SHOULD NOT include any other text in the response.\n\n"
    "At each turn, you should try your best to complete the tasks requested by the user within the current turn. "
    "Continue to output functions to call until you have fulfilled the user's request to the best of your ability. "
    "Once you have no more functions to call, the system will consider the current turn complete and proceed to the "
    "next turn or task.\n\nHere is a list of functions in JSON format that you can invoke.\n{functions}\n\n"
)


def parse_categories(spec: str) -> tuple[list[str], list[str]]:
    """'non_live,live_relevance' -> (single-turn categories in canonical order, multi-turn ones asked for)."""
    wanted = set()
    for name in (s.strip() for s in spec.split(",") if s.strip()):
        if name in GROUPS:
            wanted.update(GROUPS[name])
        elif name in SINGLE_TURN or name in MULTI_TURN:
            wanted.add(name)
        else:
            raise EvalError(f"unknown BFCL category {name!r}; choose from groups {', '.join(GROUPS)} "
                            f"or categories {', '.join(SINGLE_TURN + MULTI_TURN)}")
    return [c for c in SINGLE_TURN if c in wanted], [c for c in MULTI_TURN if c in wanted]



# ---------------------------------------------------------------- loading and prompts

def _read_jsonl(path: Path) -> list[dict]:
    return read_jsonl(path, keys=("id",))


def _unique_ids(ids: list[str]) -> list[str]:
    """Rows sharing an id (live_relevance_3-3-0 appears twice) become id, id#2, ... in file order."""
    seen: dict[str, int] = {}
    out = []
    for i in ids:
        seen[i] = seen.get(i, 0) + 1
        out.append(i if seen[i] == 1 else f"{i}#{seen[i]}")
    return out


def _language_docs(functions: list[dict], category: str) -> list[dict]:
    """The docs as the prompt shows them: a language hint on every function; Java/JS types become 'string'."""
    functions = copy.deepcopy(functions)
    lang = {"java": "Java 8 SDK", "javascript": "JavaScript"}.get(category, "Python 3")
    for fn in functions:
        fn["description"] = fn.get("description", "") + f" Note that the provided function is in {lang} syntax."
        if category not in ("java", "javascript"):
            continue
        name = "Java" if category == "java" else "JavaScript"
        for p in fn["parameters"]["properties"].values():
            t = p.get("type")
            desc = p.get("description", "")
            if t == "any":
                desc += f" This parameter can be of any type of {name} object in string representation."
            else:
                desc += f" This is {name} {t} type parameter in string representation."
            if (category == "java" and t in ("ArrayList", "Array")) or (category == "javascript" and t == "array"):
                desc += f" The list elements are of type {p['items']['type']}; they are not in string representation."
                del p["items"]
            if category == "javascript" and t == "dict" and "properties" in p:
                desc += (" The dictionary entries have the following schema; they are not in string representation. "
                         + json.dumps(p.pop("properties")))
            p["description"] = desc
            p["type"] = "string"
    return functions


def build_messages(question: list[dict], functions: list[dict], category: str) -> list[dict]:
    system = _PROMPT.format(functions=str(_language_docs(functions, category)))
    msgs = [dict(m) for m in question]
    if msgs and msgs[0]["role"] == "system":
        msgs[0]["content"] = system + "\n\n" + msgs[0]["content"]
    else:
        msgs.insert(0, {"role": "system", "content": system})
    return msgs
