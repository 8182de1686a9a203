"""`coalm.eval --base-url` against a scripted flaky server on 127.0.0.1: 429s, 500s, dropped connections, garbage,
hangs past a short --timeout, non-string and oversized contents. Transient failures are retried, lasting ones are
recorded per item in the report while the run goes on, --max-errors stops it early, and a rerun sends only the
items not yet answered. `/models` answers of any shape name the model."""

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from coalm.eval import evaluate
from coalm.eval.__main__ import main
from coalm.eval.base import EvalError, ItemError
from coalm.eval.endpoint import EndpointBackend, model_ids

# behaviour of the i-th distinct conversation (round robin); "-once": only its first request misbehaves
PLAN = ["ok", "429-once", "500-once", "drop-once", "garbage", "hang", "int", "huge", "500", "ok", "400", "null"]
MAX_CHARS = 1000


class Flaky:
    def __init__(self, models=...):
        self.models = {"object": "list", "data": [{"id": "flaky-model"}]} if models is ... else models
        self.plan: dict[str, str] = {}
        self.hits: Counter = Counter()
        self.healed = False
        self.lock = threading.Lock()

    def behaviour(self, key: str) -> str:
        with self.lock:
            self.plan.setdefault(key, PLAN[len(self.plan) % len(PLAN)])
            self.hits[key] += 1
            mode, n = self.plan[key], self.hits[key]
        if self.healed or (mode.endswith("-once") and n > 1):
            return "ok"
        return mode.removesuffix("-once")


def _handler(flaky: Flaky):
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, code: int, body, headers=()):
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send(200, flaky.models) if self.path.endswith("/models") else self._send(404, {"error": {}})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            key = json.dumps(body["messages"], sort_keys=True)
            mode = flaky.behaviour(key)
            text = "echo " + body["messages"][-1]["content"][:20]
            if mode == "429":
                return self._send(429, {"error": {"message": "slow down"}}, [("Retry-After", "0")])
            if mode == "500":
                return self._send(500, {"error": {"message": "boom"}})
            if mode == "400":
                return self._send(400, {"error": {"message": "prompt longer than the context length"}})
            if mode == "drop":
                self.close_connection = True
                return self.connection.close()
            if mode == "garbage":
                return self._send(200, b"<html>oops")
            if mode == "hang":
                time.sleep(1.5)
                return self._send(200, {"choices": [{"message": {"content": "too late"}}]})
            content = {"int": 42, "huge": "x" * (MAX_CHARS + 1), "null": None}.get(mode, text)
            self._send(200, {"choices": [{"message": {"role": "assistant", "content": content}}]})

    return H


@pytest.fixture
def server():
    def start(**kw):
        flaky = Flaky(**kw)
        srv = ThreadingHTTPServer(("127.0.0.1", 0), _handler(flaky))
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(srv)
        return flaky, f"http://127.0.0.1:{srv.server_address[1]}/v1"

    servers = []
    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


FLAGS = {"timeout": 0.5, "retries": 2, "retry_backoff": 0.01, "max_response_chars": MAX_CHARS, "concurrency": 4}


def test_errors_are_per_item_retries_recover_and_a_rerun_resumes(server, tmp_path):
    flaky, url = server()
    out = tmp_path / "r.json"
    report = evaluate("sample", out, base_url=url, limit=12, **FLAGS)
    keys = list(flaky.plan)
    assert len(keys) == 12 and report["meta"]["model"] == url
    failing = {"garbage", "hang", "int", "huge", "500", "400"}
    errors = report["errors"]
    assert len(errors) == len(failing)
    messages = " | ".join(errors.values())
    for part in ("non-JSON", "ReadTimeout", "int as the message content", f"{MAX_CHARS + 1} characters",
                 "answered 500: boom (after 2 retries)", "answered 400: prompt longer"):
        assert part in messages
    marked = [it for it in report["items"] if "generation_error" in it]
    assert {it["id"] for it in marked} == set(errors)
    assert all(it["verdict"] == "unparsable" for it in marked)  # an unanswered item scores as no answer
    # transient failures were retried: one extra request each; lasting 5xx and timeouts used every retry
    plan = {k: flaky.plan[k] for k in keys}
    assert all(flaky.hits[k] == 2 for k, m in plan.items() if m.endswith("-once"))
    assert all(flaky.hits[k] == 3 for k, m in plan.items() if m in ("500", "hang"))
    assert all(flaky.hits[k] == 1 for k, m in plan.items() if m in ("garbage", "int", "huge", "400", "ok", "null"))
    saved = [json.loads(x) for x in (tmp_path / "r.responses.jsonl").read_text().splitlines()]
    assert len(saved) == 12 - len(failing) and all(isinstance(r["result"], str) for r in saved)
    # the rerun (same out) sends only the failed items; now healed, the report has no errors
    flaky.healed, before = True, flaky.hits.copy()
    again = evaluate("sample", out, base_url=url, limit=12, **FLAGS)
    sent = flaky.hits - before
    assert {k for k in sent} == {k for k in keys if plan[k] in failing} and all(v == 1 for v in sent.values())
    assert "errors" not in again and len(again["items"]) == 12
    assert [it["id"] for it in again["items"]] == [it["id"] for it in report["items"]]


def test_max_errors_stops_early_and_the_cli_says_so(server, tmp_path, capsys):
    flaky, url = server()
    out = tmp_path / "r.json"
    argv = ["--bench", "sample", "--base-url", url, "--limit", "24", "--concurrency", "1", "--timeout", "0.5",
            "--retries", "0", "--max-errors", "2", "--max-response-chars", str(MAX_CHARS), "--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "stopped after 2 failed items (--max-errors 2)" in err and "again to resume" in err
    report = json.loads(out.read_text())
    assert len(report["errors"]) == 2 and report["meta"]["stopped"]
    assert len(flaky.plan) < 24  # the rest was never sent


@pytest.mark.parametrize("flag, value", [("--limit", "-1"), ("--limit", "0"), ("--timeout", "0"),
                                         ("--concurrency", "0"), ("--max-errors", "-3")])
def test_bad_numbers_are_one_line_errors(flag, value, capsys):
    assert main(["--bench", "sample", "--base-url", "http://127.0.0.1:9/v1", flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and flag in err and "\n" not in err


@pytest.mark.parametrize("listing, expected", [
    ({"object": "list", "data": [{"id": "a"}, {"id": "b"}]}, "a"),
    ([{"id": "listed"}], "listed"),
    (["plain-name"], "plain-name"),
    ({"models": [{"name": "ollama-style"}]}, "ollama-style"),
    ({"data": [{"object": "model"}, {"id": "second"}]}, "second"),
])
def test_models_answer_of_any_shape(server, listing, expected):
    _, url = server(models=listing)
    assert EndpointBackend(url).model_name == expected


@pytest.mark.parametrize("listing", [{}, [], None, 42, "text", {"data": "x"}, [{"id": 3}], {"data": [None]}])
def test_models_answer_without_a_model_asks_for_the_name(server, listing):
    _, url = server(models=listing)
    with pytest.raises(EvalError, match="pass --model-name"):
        EndpointBackend(url)
    assert model_ids(listing) == []


def test_unreachable_endpoint_is_an_item_error_after_retries():
    backend = EndpointBackend("http://127.0.0.1:9/v1", model_name="m", timeout=0.5, retries=1, backoff=0.01)
    (res,) = backend.chat([[{"role": "user", "content": "hi"}]], 4)
    assert isinstance(res, ItemError) and "ConnectError" in str(res) and "after 1 retries" in str(res)
