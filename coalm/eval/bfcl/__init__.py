"""BFCL V3 (Berkeley Function Calling Leaderboard): single-turn categories by the official AST rules, multi-turn
categories on bfcl-eval's own API backends, and the leaderboard's Overall.

    python -m coalm.eval --bench bfcl --responses result.jsonl [--category non_live,live_relevance]
    python -m coalm.eval --bench bfcl --model smollm2-135m --category simple --limit 20
    python -m coalm.eval --bench bfcl --model smollm2-135m --category all --per-category-limit 2

Files: `prompts` (categories, the official prompt), `coalm_style` (the CoALM-IT prompt and answer), `task` (options,
loading, result files, the `Task`), `decode` (model text -> calls), `values` (Java and
JavaScript source -> values), `checker` (single-turn AST checker), `executor` (multi-turn calls on the backends),
`multi_turn` (items and the step loop), `multi_turn_check` (multi-turn checker), `aggregate` (scores, report).

Prompting is the leaderboard's prompt mode for Llama-family models (bfcl-eval 2025.6.8, `LlamaHandler`): the
default system prompt with the function docs inserted as the pipeline does it (`str()` of the list of docs, after the
language hints; Java/JavaScript parameter types are rewritten to "string" with a note), the item's own system
message appended after it, then the user turn. Scoring follows that release's AST checker, re-implemented here from
its documented behaviour:

- decoding: strip backticks/newlines/spaces, add a missing "[" or "]", then Python `ast` (keyword arguments only)
  or, for Java/JavaScript, a tree-sitter parse of the text between the brackets (first call only); output that does
  not decode is "ast_decoder:decoder_failed". Model output is parsed, never evaluated: the official decoder `eval`s
  binary operations, here only literal arithmetic is folded and anything else fails to decode as `eval` would.
- checkers: simple (exactly one call), multiple (one call of the expected function), parallel / parallel_multiple
  (same number of calls, matched to the answers in any order, greedily as upstream); required, unexpected and
  missing-but-not-optional parameters (`""` among the accepted values marks a parameter as optional); type checks
  (int accepted for float, tuple as list, one level of nested list types, a value of the answer's type is taken as
  a variable name); strings compared after standardisation (lower case; spaces and ,./-_*^ removed; ' -> "); dicts
  and lists of dicts key by key; Java/JavaScript values converted from source text by the official converters' rules.
- relevance: irrelevance categories are correct when the output does not decode to a non-empty call list,
  live_relevance when it does (decoded as Python).

Faithful quirks worth knowing (they are upstream behaviour, kept so numbers match the leaderboard): a Java
`new String[]{"a"}` keeps the quotes on its elements, an `ArrayList` of `any` keeps element source text, and a
`new HashMap<..>() {{ put(..); }}` decodes to an empty map (the parser drops anonymous class bodies), so items
expecting those values cannot be passed by well-formed Java; a unary operator on a literal negates it.

Aggregation follows the V3 leaderboard: Non-Live simple = mean of python simple, java, javascript; Non-Live AST =
mean of simple, multiple, parallel, parallel_multiple; Non-Live overall adds irrelevance (unweighted); Live AST and
Live overall are weighted by category size (here the full V3 sizes, so a subsampled category keeps its real weight);
irrelevance = mean of irrelevance and live_irrelevance; relevance = live_relevance. Every mean is over the
categories present. Multi-Turn overall = mean of multi_turn_base, miss_func, miss_param and long_context; Overall =
the unweighted mean of Non-Live, Live and Multi-Turn overall, as the leaderboard (which counts an absent section as
0; here the mean is over the sections present and the report names the absent ones). `overall_single_turn` is the
mean of Non-Live and Live overall. Multi-turn items run and score as `multi_turn` and `multi_turn_check` describe.
"""


from coalm.eval.bfcl.aggregate import aggregate, evaluate
from coalm.eval.bfcl.checker import check_call, check_calls, score_item, standardize
from coalm.eval.bfcl.decode import DecodeError, decode_ast, is_call_list
from coalm.eval.bfcl.prompts import (
    FULL_V3_SIZES,
    GROUPS,
    MULTI_TURN,
    RELEVANCE,
    RESPONSES_SUFFIX,
    SINGLE_TURN,
    _read_jsonl,
    _unique_ids,
    build_messages,
    parse_categories,
)
from coalm.eval.bfcl.queries import test_queries
from coalm.eval.bfcl.task import TASK, Options, load_examples, read_responses, responses_from_texts, write_responses
from coalm.eval.bfcl.values import java_value, js_value

__all__ = [
    "FULL_V3_SIZES", "GROUPS", "MULTI_TURN", "RELEVANCE", "RESPONSES_SUFFIX", "SINGLE_TURN", "TASK", "DecodeError",
    "Options", "_read_jsonl", "_unique_ids", "aggregate", "build_messages", "check_call", "check_calls",
    "decode_ast", "evaluate", "is_call_list", "java_value", "js_value", "load_examples", "parse_categories",
    "read_responses", "responses_from_texts", "score_item", "standardize", "test_queries", "write_responses",
]
