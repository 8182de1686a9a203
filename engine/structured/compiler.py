"""Grammar compilation: the engine's tokenizer as an llguidance tokenizer, and a cache of compiled grammars.

llguidance was chosen over xgrammar (docs/structured.md): its wheel needs nothing at run time, while xgrammar's
requires transformers (and with it Hugging Face's `kernels`, triton and apache-tvm-ffi).

Compiling a grammar builds an `llguidance.LLMatcher` (parser tables and the lexer over the vocabulary). The cache keeps
one pristine matcher per distinct grammar text; each sequence gets a `deep_copy` of it (cheap). Compilation runs in a
worker thread with a time limit (llguidance drops the GIL while it builds), so a pathological schema gives a
`GrammarError` instead of a hung request; llguidance's own fuel limits bound the work left in that thread.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import threading

import llguidance

from .grammars import GrammarError, response_format_grammar, tool_grammar
from .matcher import Matcher

COMPILE_TIMEOUT_S = 10.0
CACHE_SIZE = 128
_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="grammar-compile")


def ll_tokenizer(tokenizer, vocab_size: int | None = None) -> llguidance.LLTokenizer:
    """The llguidance view of an engine Tokenizer (tiktoken or `tokenizers` backend); its stop tokens are the EOS
    set, so a finished grammar lets the model end its turn. `vocab_size`: the model's logits width (may exceed the
    tokenizer's)."""
    backend = tokenizer._backend
    eos = sorted(tokenizer.stop_ids)
    if getattr(tokenizer, "_tiktoken", False):
        return llguidance.LLTokenizer.from_tiktoken(
            encoder=backend._mergeable_ranks, special_tokens=backend._special_tokens, pattern=backend._pat_str,
            eos_token=eos, n_vocab=vocab_size)
    return llguidance.LLTokenizer(backend.to_str(), n_vocab=vocab_size, eos_token=eos)


class GrammarCompiler:
    """Compiles grammar texts for one tokenizer and vocabulary width, with an LRU cache and a time limit.

    `matcher(grammar)` -> a fresh per-sequence `Matcher`; `for_request(...)` builds the grammar from tools /
    response_format first. `hits` / `misses` count cache use (the benchmark reports them).
    """

    def __init__(self, tokenizer, vocab_size: int | None = None, timeout_s: float = COMPILE_TIMEOUT_S,
                 cache_size: int = CACHE_SIZE):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size or tokenizer.vocab_size
        self.ll = ll_tokenizer(tokenizer, self.vocab_size)
        self.timeout_s = timeout_s
        self.cache_size = cache_size
        self._cache: collections.OrderedDict[str, llguidance.LLMatcher] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def _build(self, grammar: str) -> llguidance.LLMatcher:
        m = llguidance.LLMatcher(self.ll, llguidance.LLMatcher.grammar_from_lark(grammar), log_level=0)
        if m.is_error():
            raise GrammarError(f"the grammar compiler refused the schema: {m.get_error().splitlines()[0][:500]}")
        return m

    def compile(self, grammar: str) -> llguidance.LLMatcher:
        """The pristine compiled matcher for `grammar` (cached; do not advance it, copy it)."""
        key = hashlib.sha256(grammar.encode()).hexdigest()
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                self.hits += 1
                return self._cache[key]
            self.misses += 1
        future = _POOL.submit(self._build, grammar)
        try:
            m = future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            raise GrammarError(f"grammar compilation took longer than {self.timeout_s:g} s; simplify the schema") \
                from None
        with self._lock:
            self._cache[key] = m
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return m

    def matcher(self, grammar: str) -> Matcher:
        return Matcher(self.compile(grammar).deep_copy(), sorted(self.tokenizer.stop_ids))

    def for_request(self, tools=None, tool_choice="auto", fmt: str = "llama3", response_format=None,
                    constrain_auto: bool = True, max_calls: int | None = None) -> Matcher | None:
        """The matcher a chat request asks for, or None when it asks for no constraint.

        Tools are constrained for "required" and a named function always, and for "auto" when `constrain_auto`
        (a call, once begun, follows the schema); `response_format` applies when no tool grammar does.
        """
        grammar = None
        if tools and tool_choice != "none" and (tool_choice != "auto" or constrain_auto):
            grammar = tool_grammar(tools, fmt, tool_choice, max_calls)
        if grammar is None:
            grammar = response_format_grammar(response_format)
        return None if grammar is None else self.matcher(grammar)
