"""Structured output: grammar-constrained decoding for tool calls and JSON (llguidance backend).

    from engine.structured import GrammarCompiler, mask_logits
    compiler = GrammarCompiler(tokenizer, model.args.vocab_size)           # one per model; caches grammars
    m = compiler.for_request(tools=tools, tool_choice="required", fmt="la")  # or response_format={...}
    mask_logits(logits, [m, None, ...])                                      # each decode step, before sampling
    m.accept(token)                                                          # after sampling

See docs/structured.md for the formats, the choice of llguidance, and the limits.
"""

from .compiler import GrammarCompiler, ll_tokenizer  # noqa: F401
from .grammars import (  # noqa: F401
    GrammarError,
    close_objects,
    json_grammar,
    la_calls_schema,
    response_format_grammar,
    tool_grammar,
)
from .matcher import Matcher, mask_logits, unpack_bitmask  # noqa: F401
