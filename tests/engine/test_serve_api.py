"""engine.serve's API surface through the real `openai` client: tool calling (a round trip call -> tool result ->
answer, streamed calls, a named tool_choice, malformed calls answered as content), bad input as 400s with OpenAI's
error body, the API key, /v1/models; the parsers and the LA prompt text.

The server runs a scripted model (`--fake-model`): a 135M model cannot be relied on to call a tool, and what is
tested here is the surface around the model: validation, templating, parsing, the wire format. It starts in seconds
(tokenizer only). Model behaviour (batching, streaming, cancellation) is in test_serve.py.
"""

import json

import httpx
import openai
import pytest

from engine.serving import launch
from engine.serving.tool_parsers import LAParser, Llama3JsonParser
from engine.tool_formats import la_instruction, la_tools

KEY = "test-key-123"
MODEL = "smollm2-135m"
CTX = 512
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "city name"}},
                   "required": ["city"]}}}]
CALL = '[{"name": "get_weather", "arguments": {"city": "Paris"}}]'
RULES = [
    {"when": "22 C and sunny", "reply": "It is 22 C and sunny in Paris."},  # the tool result reached the prompt
    {"when": "FORCED", "reply": ' {"city": "Lyon"}}] and some chatter'},  # completes the forced call's prefix
    {"when": "BROKEN", "reply": '[{"name": "get_weather", "arguments": {"city": "Par'},
    {"when": "UNKNOWN", "reply": '[{"name": "rm_rf", "arguments": {}}]'},
    {"when": "in Paris?", "reply": CALL},
    {"reply": "Hello there, how can I help?"},
]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    d = tmp_path_factory.mktemp("fake")
    (d / "script.json").write_text(json.dumps({"rules": RULES}))
    args = ["--fake-model", str(d / "script.json"), "--model", MODEL, "--api-key", KEY, "--max-model-len", str(CTX)]
    with launch.server(args, timeout=120, log_dir=str(d)) as s:
        yield s


@pytest.fixture(scope="module")
def client(srv):
    return openai.OpenAI(base_url=srv.base_url, api_key=KEY, max_retries=0)


def _ask(client, messages, **kw):
    return client.chat.completions.create(model="smollm2-135m", messages=messages, tools=TOOLS, **kw)


def _msgs(q):
    return [{"role": "user", "content": q}]


def _health(srv) -> dict:
    return httpx.get(srv.url + "/health").json()


def test_tool_call_round_trip(client):
    msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = _ask(client, msgs)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"} and call.id
    msgs += [choice.message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp": "22 C and sunny"})}]
    r2 = _ask(client, msgs)
    assert r2.choices[0].message.content == "It is 22 C and sunny in Paris."
    assert r2.choices[0].message.tool_calls is None and r2.choices[0].finish_reason == "stop"


def test_prompt_carries_tools_call_and_result(srv, client):
    msgs = [{"role": "user", "content": "weather please"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
                "name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "22 C and sunny"}]
    assert _ask(client, msgs).choices[0].message.content == "It is 22 C and sunny in Paris."
    prompt = json.loads(srv.log().split("fake model prompt: ")[-1].splitlines()[0])  # what the model was given
    assert prompt.startswith("<|im_start|>system\n" + la_instruction(la_tools([TOOLS[0]["function"]])))
    assert '<|im_start|>assistant\n[{"name": "get_weather", "arguments": {"city": "Oslo"}}]<|im_end|>' in prompt
    assert prompt.endswith("<|im_start|>tool\n22 C and sunny<|im_end|>\n<|im_start|>assistant\n")


def test_streamed_tool_call(client):
    chunks = list(_ask(client, [{"role": "user", "content": "weather in Paris?"}], stream=True))
    calls = [tc for ch in chunks if ch.choices for tc in ch.choices[0].delta.tool_calls or []]
    assert len(calls) == 1 and calls[0].function.name == "get_weather" and calls[0].index == 0
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)


def test_named_tool_choice_forces_the_call(client):
    r = _ask(client, [{"role": "user", "content": "FORCED"}],
             tool_choice={"type": "function", "function": {"name": "get_weather"}})
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Lyon"}


def test_tool_choice_none_and_plain_content_stream(client):
    r = _ask(client, [{"role": "user", "content": "weather in Paris?"}], tool_choice="none")
    assert r.choices[0].message.tool_calls is None  # no tools in the prompt, no parsing: the text is content
    assert r.choices[0].message.content == CALL
    chunks = list(_ask(client, [{"role": "user", "content": "hi"}], stream=True))
    pieces = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == "Hello there, how can I help?"


@pytest.mark.parametrize("word,reply", [("BROKEN", RULES[2]["reply"]), ("UNKNOWN", RULES[3]["reply"])])
def test_malformed_or_unknown_call_is_content_and_logged(srv, client, word, reply):
    r = _ask(client, [{"role": "user", "content": word}])
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content == reply
    assert f"malformed tool call returned as content: {reply[:30]!r}"[:-1] in srv.log()


def test_parsers_read_json_only_and_check_names():
    allowed = {"get_weather", "f"}
    llama = Llama3JsonParser()
    assert llama.parse('<|python_tag|>{"name": "f", "parameters": {"x": 1}}; {"name": "get_weather", '
                       '"arguments": "{\\"city\\": \\"Rome\\"}"}', allowed) == [
        {"name": "f", "arguments": {"x": 1}}, {"name": "get_weather", "arguments": {"city": "Rome"}}]
    assert llama.parse('{"name": "f", "parameters": {"x": 1}} trailing words', allowed) is None
    assert llama.parse('{"name": "__import__", "parameters": {}}', allowed) is None
    assert llama.parse("Paris is nice.", allowed) is None and not llama.may_be_call("Paris")
    la = LAParser()
    assert la.parse("```json\n" + CALL + "\n```", allowed) == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    assert la.parse("[]", allowed) == [] and la.parse('[{"name": "f", "arguments": [1]}]', allowed) is None
    assert la.may_be_call("  [") and la.may_be_call("``") and not la.may_be_call("{")


@pytest.mark.parametrize("body,param", [
    (b"{not json", None),
    (b"[1, 2]", None),
    ({"model": MODEL, "messages": []}, "messages"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, "temperature"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}, "tools.0.function.parameters"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": "f"}, "tools"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": CTX}, "messages"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "lorem ipsum " * CTX}]}, "messages"),
])
def test_bad_input_is_a_400_and_the_server_stays_up(srv, body, param):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(srv.base_url + "/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60, **kw)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["param"] == param and err["message"]
    assert _health(srv)["status"] == "ok"


def test_over_context_code_and_openai_error(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=_msgs("lorem ipsum " * CTX), max_tokens=4)
    assert e.value.code == "context_length_exceeded"


def test_api_key_and_models(srv):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.get(srv.base_url + "/models", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=srv.base_url, api_key="wrong", max_retries=0).chat.completions.create(
            model=MODEL, messages=_msgs("hi"), max_tokens=2)
    models = openai.OpenAI(base_url=srv.base_url, api_key=KEY).models.list()
    assert [m.id for m in models.data] == [MODEL]
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=srv.base_url, api_key=KEY, max_retries=0).chat.completions.create(
            model="gpt-4", messages=_msgs("hi"), max_tokens=2)
