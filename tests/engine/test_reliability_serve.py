"""Reliability of engine.serve at its edges, against a real server on 127.0.0.1 (the scripted `--fake-model`: the
surface is what is tested, not the model), through the real `openai` client, httpx and raw sockets.

A hostile or broken client gets one OpenAI error body and nothing else changes: slow headers and idle connections
are closed, connections past the limit are answered 503, oversized bodies 413, malformed request lines 400, unknown
routes and methods 404/405, out-of-range seeds, booleans for integers and lone surrogates 400 naming the field. The
API key comes from the environment (never the command line) and guards everything but /health; there is no
/openapi.json. A 1 MB prompt is tokenized while /health keeps answering; a sequence the model fails is a 500 naming
its request while concurrent ones complete. Bad flags fail in one line before any model loads.
"""

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from engine import serve
from engine.serving import launch

KEY = "reliability-key-42"
MODEL = "smollm2-135m"
CTX = 512
MAX_CONN, MAX_BYTES, HEADER_TIMEOUT = 16, 4_000_000, 2.0
RULES = [{"when": "POISON", "reply": "half an answer", "error": "probability tensor contains either inf or nan"},
         {"reply": "Hello there, how can I help?"}]
AUTH = {"Authorization": f"Bearer {KEY}"}
pytestmark = pytest.mark.slow  # a server subprocess (still part of `make test`)


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    import os

    d = tmp_path_factory.mktemp("fake")
    (d / "script.json").write_text(json.dumps({"rules": RULES}))
    args = ["--fake-model", str(d / "script.json"), "--model", MODEL, "--max-model-len", str(CTX),
            "--max-connections", str(MAX_CONN), "--max-request-bytes", str(MAX_BYTES),
            "--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", "3"]
    with launch.server(args, timeout=120, log_dir=str(d), env={**os.environ, "COALM_API_KEY": KEY}) as s:
        yield s


@pytest.fixture(scope="module")
def client(srv):
    return openai.OpenAI(base_url=srv.base_url, api_key=KEY, max_retries=0)


def _addr(srv):
    host, port = srv.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def _raw(srv, data: bytes, wait: float = 10.0) -> bytes:
    """Send raw bytes and read until the server closes the connection."""
    with socket.create_connection(_addr(srv), timeout=wait) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def _error_of(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return status, err


def _post(srv, body, **kw):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(srv.base_url + "/chat/completions", content=content, timeout=60,
                      headers={**AUTH, "content-type": "application/json"}, **kw)


def _chat(**extra):
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}


def test_key_from_the_environment_guards_every_route_but_health(srv, client):
    from pathlib import Path

    assert KEY.encode() not in Path(f"/proc/{srv.proc.pid}/cmdline").read_bytes()
    assert httpx.get(srv.base_url + "/models").status_code == 401
    assert client.models.list().data[0].id == MODEL
    assert httpx.get(srv.url + "/health").json()["status"] == "ok"
    for path in ("/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"):
        for headers in ({}, AUTH):
            r = httpx.get(srv.url + path, headers=headers)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (path, r.text)


def test_unknown_routes_and_methods_have_openai_bodies(srv, client):
    r = httpx.get(srv.base_url + "/chat/completions", headers=AUTH)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed" and "POST" in r.headers["allow"]
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model=MODEL, prompt="hi")  # the legacy route is not served
    assert e.value.body["code"] == "not_found" and "/v1/completions" in e.value.body["message"]
    status, err = _error_of(_raw(srv, b"NOT A REQUEST LINE\r\n\r\n"))
    assert status == 400 and err["code"] == "malformed_request"
    status, err = _error_of(_raw(srv, b"GET /health HTTP/1.1\r\nbad header line\r\n\r\n"))
    assert status == 400 and err["code"] == "malformed_request"


@pytest.mark.parametrize(("extra", "param"), [
    ({"seed": 2**64}, "seed"), ({"seed": 10**30}, "seed"), ({"seed": -2**63 - 1}, "seed"), ({"seed": 2**63}, "seed"),
    ({"max_tokens": True}, "max_tokens"), ({"max_completion_tokens": False}, "max_completion_tokens"),
    ({"temperature": True}, "temperature"), ({"n": True}, "n"), ({"seed": True}, "seed"), ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": 1}, "stream": True}, "stream_options.include_usage"),
])
def test_out_of_range_and_wrongly_typed_numbers_are_400s(srv, extra, param):
    r = _post(srv, _chat(**extra))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error"


@pytest.mark.parametrize("seed", [2**63 - 1, -2**63, 0])
def test_seeds_at_the_int64_bounds_are_accepted(client, seed):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], seed=seed)
    assert r.choices[0].message.content == "Hello there, how can I help?"


@pytest.mark.parametrize(("raw", "param"), [
    (b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "a\\ud800b"}]}', "messages.0.content"),
    (b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}', "messages.0.content.0.text"),
    ((b'{"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": '
      b'{"name": "f", "description": "x\\udc00"}}]}'), "tools.0.function.description"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "stop": ["\\ud83d"]}', "stop.0"),
])
def test_lone_surrogates_are_400s_naming_the_field(srv, raw, param):
    r = _post(srv, raw)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["code"] == "invalid_unicode" and param in err["message"]
    ok = _post(srv, b'{"messages": [{"role": "user", "content": "caf\\u00e9 \\ud83d\\ude00"}]}')
    assert ok.status_code == 200  # a surrogate pair is a real character


def test_oversized_bodies_are_413s(srv):
    big = json.dumps(_chat(messages=[{"role": "user", "content": "x" * MAX_BYTES}])).encode()
    r = _post(srv, big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit applies while the body streams in
        for i in range(0, len(big), 1 << 16):
            yield big[i:i + (1 << 16)]

    r = httpx.post(srv.base_url + "/chat/completions", content=chunks(), headers=AUTH, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def _dribble_until_closed(s: socket.socket, limit: float = 20.0) -> bool:
    """Send a byte every 0.2 s; True once the server has closed the connection (within `limit` seconds)."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        try:
            s.sendall(b"X")
            time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            return True
    return False


def test_slow_headers_idle_and_slow_bodies_are_cut_off(srv):
    """A client dribbling header bytes, one sending nothing, and one dribbling its body are all closed; bounded by
    the socket timeout (the test fails, rather than hangs, if the server never closes them)."""
    addr = _addr(srv)
    with socket.create_connection(addr, timeout=30) as idle, socket.create_connection(addr, timeout=30) as slow:
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        assert _dribble_until_closed(slow)  # a header byte every 0.2 s: never complete
        assert idle.recv(1) == b""  # closed without a word: it never sent a request
    with socket.create_connection(addr, timeout=30) as s:  # a body no route reads, dribbled after the answer
        s.sendall(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        assert b" 405 " in s.recv(65536).split(b"\r\n")[0]
        assert _dribble_until_closed(s)
    body = json.dumps(_chat()).encode()
    with socket.create_connection(addr, timeout=30) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: " + str(len(body)).encode() +
                  b"\r\n\r\n" + body[:10])
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    status, err = _error_of(out)
    assert status == 408 and err["code"] == "request_timeout"


def test_connections_past_the_limit_get_503_and_service_resumes(srv, client):
    addr = _addr(srv)
    socks = [socket.create_connection(addr, timeout=30) for _ in range(MAX_CONN + 4)]
    try:
        refused = []
        for s in socks[MAX_CONN - 1:]:  # the first MAX_CONN - 1 are surely within the limit
            s.settimeout(0.5)
            try:
                data = s.recv(65536)
            except TimeoutError:
                continue  # still open: within the limit
            if data:
                refused.append(_error_of(data))
        assert len(refused) >= 4 and all(st == 503 and e["code"] == "too_many_connections" for st, e in refused)
    finally:
        for s in socks:
            s.close()
    time.sleep(0.2)  # the server notices the closes
    assert client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}]).choices


def test_a_huge_prompt_does_not_stall_the_event_loop(srv):
    """1 MB of prompt takes seconds to tokenize; /health must keep answering meanwhile (it would not answer at all
    while tokenization held the event loop). The prompt is then refused as over the context length."""
    text = "lorem ipsum dolor sit amet " * (1_000_000 // 27)
    result = {}

    def big():
        result["r"] = _post(srv, _chat(messages=[{"role": "user", "content": text}]))

    t = threading.Thread(target=big)
    t.start()
    answered = 0
    with httpx.Client(timeout=30) as h:
        while t.is_alive():
            assert h.get(srv.url + "/health").json()["status"] == "ok"
            answered += 1
            time.sleep(0.05)
    t.join()
    r = result["r"]
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert answered >= 5, answered


def test_a_failed_sequence_is_a_500_naming_its_request_and_others_complete(client):
    def ask(i):
        q = "POISON" if i % 3 == 0 else f"question {i}"
        try:
            r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": q}])
            return "ok", r.choices[0].message.content
        except openai.InternalServerError as e:
            return "failed", e.body

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(ask, range(12)))
    for i, (kind, what) in enumerate(results):
        if i % 3 == 0:
            assert kind == "failed" and what["type"] == "server_error", what
            assert what["message"].startswith("request chatcmpl-") and "probability tensor" in what["message"]
        else:
            assert (kind, what) == ("ok", "Hello there, how can I help?")
    with pytest.raises(openai.APIError, match="request chatcmpl-.*generation failed"):
        for _ in client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "POISON"}],
                                                stream=True):
            pass


@pytest.mark.parametrize(("argv", "message"), [
    (["--port", "70000"], "--port must be in 0..65535"),
    (["--port", "-1"], "--port must be in 0..65535"),
    (["--max-request-bytes", "0"], "--max-request-bytes must be >= 1"),
    (["--header-timeout", "0"], "--header-timeout must be > 0"),
    (["--body-timeout", "nan"], "--body-timeout must be > 0"),
    (["--api-key", "a", "--api-key-file", "f"], "not both"),
    (["--api-key-file", "/nonexistent/key"], "--api-key-file /nonexistent/key: cannot read it"),
    (["--api-key", " "], "is empty"),
    (["--host", "no-such-host.invalid"], "--host no-such-host.invalid:"),
])
def test_bad_flags_fail_in_one_line_before_loading(monkeypatch, capsys, argv, message):
    monkeypatch.setattr(serve, "_load", lambda a: pytest.fail("the model was loaded"))
    assert serve.main([*argv, "--model", "llama-3.1-8b"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_a_taken_port_and_a_bad_adapter_fail_before_loading(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(serve, "_load", lambda a: pytest.fail("the model was loaded"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        assert serve.main(["--port", str(taken.getsockname()[1])]) == 2
    assert "in use" in capsys.readouterr().err
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": "sixteen", "lora_alpha": 32}))
    assert serve.main(["--adapter", str(tmp_path), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'adapter_config.json'}: r: 'sixteen' is not a positive integer\n"


def test_api_key_file_and_environment(tmp_path, monkeypatch):
    f = tmp_path / "key"
    f.write_text("from-file\n")
    monkeypatch.setenv("COALM_API_KEY", "from-env")
    parse = serve._parser().parse_args
    assert serve._api_key(parse(["--api-key-file", str(f)])) == "from-file"
    assert serve._api_key(parse([])) == "from-env"
    assert serve._api_key(parse(["--api-key", "flag"])) == "flag"
    monkeypatch.delenv("COALM_API_KEY")
    assert serve._api_key(parse([])) is None
