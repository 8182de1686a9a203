"""engine.tool_formats: the LA format (prompt text, writer, one parser in strict and tolerant modes) and the Llama 3
JSON parser, checked against `json` itself on fresh random call lists (odd keys, unicode, nesting), and against
hostile text (deep nesting, 5,000-digit ints, non-strings), which must fail with ToolFormatError, never crash.
The server, the training rows and the evaluators must all use these same objects (one home per format)."""

import json
import random
import string

import pytest

from engine import tool_formats as T


def _value(rng, depth=0):
    kind = rng.randrange(7 if depth < 3 else 4)
    if kind == 0:
        return rng.randint(-10**12, 10**12)
    if kind == 1:
        return rng.random() * 1e6
    if kind == 2:
        return "".join(rng.choice(string.printable + "éß中\u2028\"\\") for _ in range(rng.randrange(12)))
    if kind == 3:
        return rng.choice([True, False, None])
    if kind in (4, 5):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {_name(rng): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _name(rng):
    return "".join(rng.choice(string.ascii_letters + "_.") for _ in range(rng.randint(1, 12)))


def _calls(rng):
    return [{"name": _name(rng), "arguments": {_name(rng): _value(rng) for _ in range(rng.randrange(5))}}
            for _ in range(rng.randrange(4))]


def test_la_writer_and_parser_round_trip_against_json():
    rng = random.Random()
    for _ in range(200):
        calls = _calls(rng)
        text = T.la_output(calls)
        assert json.loads(text) == calls  # the writer writes exactly the JSON list
        for wrapped in (text, f"  {text}\n", f"```json\n{text}\n```", f"```\n{text}```"):
            assert T.parse_la(wrapped) == calls
            assert T.parse_la(wrapped, tolerant=True) == calls
        assert T.parse_la(f"Sure! ```json\n{text}``` hope that helps", tolerant=True) == calls
        names = {c["name"] for c in calls}
        assert T.parse_la(text, allowed=names) == calls
        if calls:
            with pytest.raises(T.ToolFormatError, match="not an offered tool"):
                T.parse_la(text, allowed=names - {calls[0]["name"]})


def test_la_strict_and_tolerant_differ_only_in_what_surrounds_the_list():
    call = '[{"name": "f", "arguments": {"x": 1}}]'
    with pytest.raises(T.ToolFormatError):
        T.parse_la(f"{call} and more words")
    assert T.parse_la(f"{call} and more words", tolerant=True) == [{"name": "f", "arguments": {"x": 1}}]
    assert T.parse_la('[{"name": "f"}]') == [{"name": "f", "arguments": {}}]  # no arguments: an empty dict
    for bad, reason in [('{"name": "f"}', "JSON list"), ('[{"name": 3}]', "list element"),
                        ('[{"name": "f", "arguments": [1]}]', "list element"), ("[1]", "list element"),
                        ('[{"name": "f", "arguments": "{\\"x\\": 1}"}]', "list element")]:
        for tolerant in (False, True):
            with pytest.raises(T.ToolFormatError, match=reason):
                T.parse_la(bad, tolerant=tolerant)
    # the OpenAI wire format's string arguments, only when asked for (the server)
    assert T.parse_la('[{"name": "f", "arguments": "{\\"x\\": 1}"}]', string_arguments=True) == [
        {"name": "f", "arguments": {"x": 1}}]
    with pytest.raises(T.ToolFormatError, match="no JSON list"):
        T.parse_la("no calls here", tolerant=True)


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, "[" + "9" * 5000 + "]",
                                  '[{"name": "f", "arguments": {"x": ' + "1" * 5000 + "}}]", "", "```", 42, None])
def test_hostile_text_is_a_format_error(text):
    for parse in (T.parse_la, lambda t: T.parse_la(t, tolerant=True), T.parse_llama3):
        with pytest.raises(T.ToolFormatError):
            parse(text)


def test_llama3_parser_reads_every_documented_shape():
    rng = random.Random()
    for _ in range(100):
        calls = _calls(rng) or [{"name": "only", "arguments": {}}]
        objs = [{"name": c["name"], ("parameters" if rng.random() < 0.5 else "arguments"): c["arguments"]}
                for c in calls]
        sep = rng.choice(["; ", "\n", " ;\n", " "])
        text = sep.join(json.dumps(o, ensure_ascii=rng.random() < 0.5) for o in objs)
        assert T.parse_llama3(text) == calls
        assert T.parse_llama3("<|python_tag|>" + text) == calls
        assert T.parse_llama3(json.dumps(objs)) == calls  # a list of calls
        wire = json.dumps([{"name": c["name"], "arguments": json.dumps(c["arguments"])} for c in calls])
        assert T.parse_llama3(wire) == calls  # arguments as a JSON string
    with pytest.raises(T.ToolFormatError):
        T.parse_llama3('{"name": "f", "parameters": {}} trailing words')
    with pytest.raises(T.ToolFormatError, match="not an offered tool"):
        T.parse_llama3('{"name": "__import__", "parameters": {}}', allowed={"f"})


def test_la_prompt_text_and_tools():
    params = {"city": {"type": "string", "description": "city name"}, "days": {"type": "integer"}}
    fn = {"name": "forecast", "description": "Weather forecast", "parameters": {"type": "object",
                                                                                "properties": params}}
    tools = T.la_tools([fn, {"name": "bare"}])
    assert tools == [{"name": "forecast", "description": "Weather forecast", "parameters": params},
                     {"name": "bare", "description": "", "parameters": {}}]
    text = T.la_instruction(tools)
    assert text.startswith(T.LA_TASK) and text.endswith(T.LA_FORMAT)
    start = text.index("[BEGIN OF AVAILABLE TOOLS]\n") + len("[BEGIN OF AVAILABLE TOOLS]\n")
    assert json.loads(text[start:text.index("\n[END OF AVAILABLE TOOLS]")]) == tools


def test_one_home_for_the_la_format():
    from coalm.data import formats as F
    from coalm.eval import task
    from coalm.eval.api_bank import coalm_style as api_bank_style
    from coalm.eval.bfcl import coalm_style as bfcl_style
    from engine.serving import templating, tool_parsers

    assert F.la_instruction is T.la_instruction and F.la_output is T.la_output and F.LA_TASK is T.LA_TASK
    assert templating.la_instruction is T.la_instruction and tool_parsers.parse_la is T.parse_la
    assert task.parse_la is T.parse_la and bfcl_style.decode_la is task.decode_la is api_bank_style.decode_la
    for mod in (F, task, templating, tool_parsers, bfcl_style, api_bank_style):
        assert not hasattr(mod, "_FENCE")
