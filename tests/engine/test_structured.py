"""Grammar-constrained decoding (engine.structured): random JSON schemas and tools, sampled with random seeds on a
random-init model; every output is checked with json and the `jsonschema` package, never with the code under test.
Also: the bad-input errors, the batched mask leaving unconstrained rows alone, and a grammar that admits nothing."""

import json
import os
import random

import jsonschema
import pytest
import torch

import engine
from engine.serving.offline import generate, generate_ids
from engine.structured import GrammarCompiler, GrammarError, json_grammar, mask_logits, tool_grammar

BASE_SEED = int.from_bytes(os.urandom(4), "little")  # fresh each run; printed in every failure message


@pytest.fixture(scope="module")
def debug_model():
    torch.manual_seed(BASE_SEED)
    model, tok = engine.load("debug", random_init=True, dtype=torch.float32, device="cpu")
    return model, tok, GrammarCompiler(tok, model.args.vocab_size)


def random_schema(rng: random.Random, depth: int = 0) -> dict:
    """A random JSON schema over types, enums, required, nested objects and arrays, bounded so that a random model
    finishes a value within the token budget."""
    kinds = ["string", "integer", "number", "boolean", "null", "enum"] + (["object", "array"] if depth < 2 else [])
    kind = rng.choice(kinds)
    if kind == "string":
        s = {"type": "string", "maxLength": rng.randint(0, 6)}
        if rng.random() < 0.3:
            s["minLength"] = rng.randint(0, s["maxLength"])
        return s
    if kind == "integer":
        lo = rng.randint(-1000, 1000)
        return {"type": "integer", "minimum": lo, "maximum": lo + rng.randint(0, 5000)}
    if kind == "number":
        lo = rng.uniform(-100, 100)
        return {"type": "number", "minimum": round(lo, 2), "maximum": round(lo + rng.uniform(0, 50), 2)}
    if kind in ("boolean", "null"):
        return {"type": kind}
    if kind == "enum":
        pool = ["a", "b c", "ü", 3, -1.5, True, None, "x\"y"]
        return {"enum": rng.sample(pool, rng.randint(1, 4))}
    if kind == "array":
        lo = rng.randint(0, 2)
        return {"type": "array", "items": random_schema(rng, depth + 1), "minItems": lo, "maxItems": lo + rng.randint(0, 2)}
    names = rng.sample(["city", "n", "unit", "when", "tags", "deep", "x_y", "élan"], rng.randint(0, 4))
    props = {n: random_schema(rng, depth + 1) for n in names}
    return {"type": "object", "properties": props, "required": [n for n in names if rng.random() < 0.6]}


def _sample(model, tok, compiler, grammars, seed, max_new_tokens=160):
    matchers = [compiler.matcher(g) for g in grammars]
    outs = generate(model, tok, ["Answer:"] * len(grammars), max_new_tokens=max_new_tokens, temperature=1.0,
                    seed=seed, matchers=matchers)
    return outs, matchers


@pytest.mark.parametrize("case", range(4))
def test_random_json_schemas_validate(debug_model, case):
    model, tok, compiler = debug_model
    rng = random.Random(BASE_SEED + case)
    # strict: objects closed, so a random model cannot wander off into unbounded extra keys; validated against the
    # schema as given (open objects), of which the closed one is a subset
    schemas = [{"type": "object", "properties": {"v": random_schema(rng)}, "required": ["v"]} for _ in range(4)]
    outs, matchers = _sample(model, tok, compiler, [json_grammar(s, strict=True) for s in schemas], rng.randrange(1 << 30))
    for s, text, m in zip(schemas, outs, matchers):
        ctx = f"base seed {BASE_SEED}, case {case}: schema {json.dumps(s)}, output {text!r}"
        assert m.is_accepting and not m.error, ctx  # a stop token is only allowed once the value is whole
        jsonschema.validate(json.loads(text), s)  # the reference validator, not the code under test


@pytest.mark.parametrize("fmt", ["llama3", "la"])
@pytest.mark.parametrize("choice", ["required", "named", "auto"])
def test_random_tools_calls_validate(debug_model, fmt, choice):
    model, tok, compiler = debug_model
    rng = random.Random(f"{BASE_SEED}-{fmt}-{choice}")
    tools = []
    for i in range(rng.randint(1, 4)):
        params = random_schema(rng)
        while params.get("type") != "object":
            params = random_schema(rng)
        tools.append({"type": "function", "function": {"name": f"tool_{i}.v{rng.randint(0, 9)}", "parameters": params}})
    by_name = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    named = rng.choice(list(by_name))
    tc = {"type": "function", "function": {"name": named}} if choice == "named" else choice
    outs, matchers = _sample(model, tok, compiler, [tool_grammar(tools, fmt, tc, max_calls=3)] * 4, rng.randrange(1 << 30), 200)
    for text, m in zip(outs, matchers):
        ctx = f"base seed {BASE_SEED}: tools {json.dumps(tools)}, output {text!r}"
        if fmt == "llama3" and choice == "auto" and not text.startswith("{"):
            continue  # the model chose text
        assert m.is_accepting and not m.error, ctx  # a stop token is only allowed once the value is whole
        if fmt == "la":
            calls = json.loads(text)
        else:
            dec, calls, i = json.JSONDecoder(), [], 0
            while i < len(text):
                obj, i = dec.raw_decode(text, i)
                calls.append({"name": obj["name"], "arguments": obj["parameters"]})
                i += len(text[i:]) - len(text[i:].lstrip("; \n"))
        assert isinstance(calls, list) and (calls or choice == "auto") and len(calls) <= 3, ctx
        if choice == "named":
            assert [c["name"] for c in calls] == [named], ctx
        for c in calls:
            assert set(c) == {"name", "arguments"} and c["name"] in by_name, ctx
            jsonschema.validate(c["arguments"], by_name[c["name"]])


def test_unconstrained_rows_untouched_and_batch_matches_alone(debug_model):
    model, tok, compiler = debug_model
    g = tool_grammar([{"name": "f", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}],
                     "la", "required")
    logits = torch.randn(3, model.args.vocab_size)
    before = logits.clone()
    m = compiler.matcher(g)
    mask_logits(logits, [None, m, None])
    assert torch.equal(logits[0], before[0]) and torch.equal(logits[2], before[2])
    allowed = torch.isfinite(logits[1]).nonzero().flatten().tolist()
    assert allowed and all(tok.decode([t]).startswith("[") or "[".startswith(tok.decode([t])) for t in allowed)
    # greedy: a constrained and a free prompt in one batch each get what they get alone
    prompts = [tok.encode("Weather in Paris?", bos=True), tok.encode("Tell me a story", bos=True)]
    alone_c = generate_ids(model, prompts[:1], 24, stop_ids=tok.stop_ids, matchers=[compiler.matcher(g)])
    alone_f = generate_ids(model, prompts[1:], 24, stop_ids=tok.stop_ids)
    both = generate_ids(model, prompts, 24, stop_ids=tok.stop_ids, matchers=[compiler.matcher(g), None])
    assert both == alone_c + alone_f


def test_grammar_admitting_nothing_ends_with_stop(debug_model):
    model, tok, compiler = debug_model
    # a grammar llguidance compiles but whose first step admits nothing: a pure $ref loop (check_schema refuses it
    # before it gets here, so the Lark text is written directly)
    loop = {"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}}
    m = compiler.matcher("start: %json " + json.dumps(loop))
    ids = generate_ids(model, [tok.encode("x", bos=True)], 8, stop_ids=tok.stop_ids, matchers=[m])
    assert ids == [[]] and m.is_terminated


@pytest.mark.parametrize("schema, reason", [
    ({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}}, "$ref cycle"),
    ({"type": "object", "unevaluatedProperties": False}, "unevaluatedProperties"),
    ({"type": "dict"}, "dict"),
    ({"type": "string", "format": "no-such-format"}, "no-such-format"),
    ({"$ref": "#/$defs/missing"}, "points nowhere"),
    ({"type": "integer", "minimum": 5, "maximum": 3}, "Unsatisfiable"),
])
def test_unsupported_schemas_give_clear_errors(debug_model, schema, reason):
    compiler = debug_model[2]
    tools = [{"name": "f", "parameters": schema}]
    with pytest.raises(GrammarError, match=reason.replace("$", r"\$")):
        compiler.matcher(tool_grammar(tools, "llama3", "required"))
    with pytest.raises(GrammarError, match=reason.replace("$", r"\$")):
        compiler.matcher(json_grammar(schema))


def test_huge_schema_and_bad_tool_choice_rejected(debug_model):
    compiler = debug_model[2]
    big = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "d" * 1000}
                                            for i in range(10_000)}}  # ~10 MB
    with pytest.raises(GrammarError, match="MB"):
        json_grammar(big)
    tools = [{"name": "f", "parameters": {"type": "object"}}]
    with pytest.raises(GrammarError, match="not one of the tools"):
        tool_grammar(tools, "la", {"type": "function", "function": {"name": "g"}})
    with pytest.raises(GrammarError, match="unique"):
        tool_grammar(tools * 2, "la", "auto")
    slow = GrammarCompiler.__new__(GrammarCompiler)
    slow.__dict__.update(compiler.__dict__, timeout_s=0.0, _cache={}, _lock=compiler._lock)
    with pytest.raises(GrammarError, match="longer than"):
        slow.compile(json_grammar({"type": "object", "properties": {f"k{i}": {"type": "string"} for i in range(300)}}))


def test_cache_hits_once_per_distinct_grammar(debug_model):
    compiler = debug_model[2]
    g = json_grammar({"type": "object", "properties": {"seed": {"const": BASE_SEED}}})
    hits, misses = compiler.hits, compiler.misses
    a, b = compiler.matcher(g), compiler.matcher(g)
    assert (compiler.misses - misses, compiler.hits - hits) == (1, 1) and a.ll is not b.ll


def test_unpack_bitmask_matches_bit_arithmetic():
    from engine.structured import unpack_bitmask

    for vocab in (1, 31, 32, 33, 1000, 49152):
        words = (vocab + 31) // 32
        bm = torch.randint(-2**31, 2**31 - 1, (3, words), dtype=torch.int32)
        ref = torch.tensor([[(int(bm[r, t // 32]) >> (t % 32)) & 1 for t in range(vocab)] for r in range(3)]).bool()
        assert torch.equal(unpack_bitmask(bm, vocab), ref), vocab


def test_prefetched_masks_equal_masks_computed_in_step(debug_model):
    from engine.structured.matcher import prefetch_masks

    model, tok, compiler = debug_model
    g = tool_grammar([{"name": "get", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}],
                     "la", "required")
    ahead, now = compiler.matcher(g), compiler.matcher(g)
    for t in tok.encode('[{"name": "get", "arguments": {"q": "ab"}}]'):
        logits = torch.randn(1, model.args.vocab_size)
        a, b = logits.clone(), logits.clone()
        prefetch_masks([ahead, None], model.args.vocab_size)
        mask_logits(a, [ahead])
        mask_logits(b, [now])
        assert torch.equal(a, b) and torch.isfinite(a[0, t])
        prefetch_masks([ahead], model.args.vocab_size)  # a prefetch that accept() must wait for and drop
        assert ahead.accept(t) and now.accept(t)
    assert ahead.is_terminated and now.is_terminated
