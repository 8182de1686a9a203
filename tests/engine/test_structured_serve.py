"""Structured output through engine.serve and the real `openai` client: tool_choice "required" and a named function
always give schema-valid calls, strict tools' arguments validate, response_format content validates (checked with
`jsonschema`), streamed argument deltas concatenate to the non-streamed arguments, a constrained and a free request in
one batch each get what they get alone, bad schemas and `--structured off` are 400s.

A random-init `debug` model (CoALM-IT LA tool format: its vocabulary is ChatML): what is tested is the guarantee,
which must hold whatever the weights.
"""

import json
import os
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest

from engine.serving import launch

pytestmark = pytest.mark.slow
MODEL = "debug"
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                            "unit": {"enum": ["c", "f"]}}, "required": ["city"]}
ADD = {"type": "object", "properties": {"a": {"type": "integer", "minimum": -99, "maximum": 99},
                                        "b": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3}},
       "required": ["a", "b"]}
SCHEMAS = {"get_weather": WEATHER, "add": ADD}


def _tools(strict=None):
    return [{"type": "function", "function": {"name": n, "parameters": p, **({"strict": strict} if strict else {})}}
            for n, p in SCHEMAS.items()]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    args = ["--model", MODEL, "--random-init", "--max-model-len", "1024", "--max-batch", "4"]
    with launch.server(args, env=dict(os.environ, OMP_NUM_THREADS="1"),
                       log_dir=str(tmp_path_factory.mktemp("structured"))) as s:
        yield openai.OpenAI(base_url=s.base_url, api_key="-", max_retries=0)


def _ask(client, **kw):
    kw.setdefault("messages", [{"role": "user", "content": "What is the weather in Paris?"}])
    kw.setdefault("max_tokens", 120)
    return client.chat.completions.create(model=MODEL, **kw)


def _check_calls(calls):
    assert calls
    for c in calls:
        assert c.type == "function" and c.id and c.function.name in SCHEMAS
        jsonschema.validate(json.loads(c.function.arguments), SCHEMAS[c.function.name])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_required_always_returns_valid_calls(client, seed):
    r = _ask(client, tools=_tools(), tool_choice="required", temperature=1.0, seed=seed)
    # any number of calls may be asked for: at the token limit the complete calls come back, finish_reason "length"
    assert r.choices[0].finish_reason in ("tool_calls", "length") and r.choices[0].message.content is None
    _check_calls(r.choices[0].message.tool_calls)
    r = _ask(client, tools=_tools(), tool_choice="required", temperature=0, max_tokens=400)
    _check_calls(r.choices[0].message.tool_calls)


def test_named_function_and_single_call(client):
    r = _ask(client, tools=_tools(), tool_choice={"type": "function", "function": {"name": "add"}}, temperature=1.0,
             seed=7)
    calls = r.choices[0].message.tool_calls
    _check_calls(calls)
    assert [c.function.name for c in calls] == ["add"]
    r = _ask(client, tools=_tools(), tool_choice="required", parallel_tool_calls=False, temperature=1.0, seed=8)
    assert len(r.choices[0].message.tool_calls) == 1


@pytest.mark.parametrize("seed", [4, 5])
def test_strict_tools_arguments_validate(client, seed):
    r = _ask(client, tools=_tools(strict=True), temperature=1.0, seed=seed)
    msg = r.choices[0].message
    if msg.tool_calls:  # "auto": the model may also decline (the LA format's [])
        _check_calls(msg.tool_calls)
    else:
        assert json.loads(msg.content) == []


@pytest.mark.parametrize("seed", [1, 2])
def test_response_format_json_schema_and_object(client, seed):
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 10},
                                               "score": {"type": "number", "minimum": 0, "maximum": 1}},
              "required": ["answer", "score"], "additionalProperties": False}
    r = _ask(client, temperature=1.0, seed=seed,
             response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}})
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    r = _ask(client, temperature=0, max_tokens=400, response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":  # an open object may run to the token limit
        assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_streamed_argument_deltas_equal_whole_arguments(client):
    kw = {"tools": _tools(), "tool_choice": "required", "temperature": 0, "parallel_tool_calls": False}
    whole = _ask(client, **kw).choices[0].message.tool_calls
    chunks = list(_ask(client, stream=True, **kw))
    got: dict[int, dict] = {}
    n_pieces = 0
    for ch in chunks:
        for d in (ch.choices[0].delta.tool_calls or []) if ch.choices else []:
            c = got.setdefault(d.index, {"name": "", "arguments": ""})
            c["name"] += d.function.name or ""
            c["arguments"] += d.function.arguments or ""
            n_pieces += 1
    assert [(c["name"], c["arguments"]) for _, c in sorted(got.items())] == \
           [(c.function.name, c.function.arguments) for c in whole]
    assert n_pieces > len(whole) + 1  # incremental: more pieces than one per call
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_constrained_and_free_in_one_batch_get_what_they_get_alone(client):
    con = {"tools": _tools(), "tool_choice": "required", "temperature": 0}
    free = {"temperature": 0, "messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 40}

    def run(kw):
        return client.chat.completions.create(model=MODEL, **{"max_tokens": 120, **kw,
                                              "messages": kw.get("messages", [{"role": "user", "content": "Hi"}])})

    alone = [run(con), run(free)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(run, [con, free, con, free]))
    for a, t in zip(alone * 2, together):
        assert a.choices[0].message.model_dump(exclude={"tool_calls"}) == \
               t.choices[0].message.model_dump(exclude={"tool_calls"})
        args = [(c.function.name, c.function.arguments) for c in a.choices[0].message.tool_calls or []]
        assert args == [(c.function.name, c.function.arguments) for c in t.choices[0].message.tool_calls or []]


@pytest.mark.parametrize("schema, reason", [
    ({"type": "object", "properties": {"x": {"$ref": "#/$defs/a"}},
      "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}}, "$ref cycle"),
    ({"type": "object", "properties": {"x": {"not": {"type": "string"}}}}, "not"),
])
def test_unsupported_schema_is_400_with_reason(client, schema, reason):
    tools = [{"type": "function", "function": {"name": "f", "parameters": schema}}]
    with pytest.raises(openai.BadRequestError) as e:
        _ask(client, tools=tools, tool_choice="required")
    assert reason in e.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        _ask(client, response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}})


def test_structured_off_refuses(tmp_path):
    (tmp_path / "script.json").write_text(json.dumps({"rules": [{"reply": "hello"}]}))
    args = ["--fake-model", str(tmp_path / "script.json"), "--model", "smollm2-135m", "--structured", "off"]
    with launch.server(args, timeout=120, log_dir=str(tmp_path)) as s:
        c = openai.OpenAI(base_url=s.base_url, api_key="-", max_retries=0)
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": "x"}],
                                      tools=_tools(), tool_choice="required")
        assert "--structured off" in e.value.body["message"]
        ok = c.chat.completions.create(model="smollm2-135m", messages=[{"role": "user", "content": "x"}])
        assert ok.choices[0].message.content == "hello"
