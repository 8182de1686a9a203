"""engine.serve with the embedded SmolLM2 through the real `openai` client: answers equal `engine.generate` on the
same conversation, streamed chunks equal the whole answer, 8 concurrent clients each get what they get alone
(and share decoding steps), and a client that disconnects (mid-stream or while waiting) frees its slot.

One server per module. The API surface that needs no real model (errors, keys, tools) is in test_serve_api.py.
"""

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

import engine
from engine.serving import launch

MODEL = "smollm2-135m"
CTX = 512


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    # fp32, as the engine.load references here: the tests check batching logic (each request gets what it gets
    # alone), which bf16 cannot show, since its matmuls round differently at different batch sizes
    args = ["--model", MODEL, "--max-model-len", str(CTX), "--max-batch", "8", "--dtype", "fp32"]
    # one OpenMP thread: under pytest -n 2 a two-thread server would fight the workers for the two cores
    with launch.server(args, env=dict(os.environ, OMP_NUM_THREADS="1"),
                       log_dir=str(tmp_path_factory.mktemp("serve"))) as s:
        yield s


@pytest.fixture(scope="module")
def client(srv):
    return openai.OpenAI(base_url=srv.base_url, api_key="-", max_retries=0)


def _msgs(q):
    return [{"role": "user", "content": q}]


def _health(srv) -> dict:
    return httpx.get(srv.url + "/health").json()


def test_plain_chat_equals_engine_generate(client, smol, one_thread):
    model, tok = smol
    q = _msgs("What is the capital of France?")
    r = client.chat.completions.create(model=MODEL, messages=q, max_tokens=12, temperature=0)
    with one_thread():
        assert r.choices[0].message.content == engine.generate(model, tok, q, max_new_tokens=12)
    assert r.choices[0].message.role == "assistant" and r.object == "chat.completion"
    assert r.usage.prompt_tokens == len(tok.encode(tok.apply_chat_template(q, add_generation_prompt=True)))
    assert 1 <= r.usage.completion_tokens <= 12


def test_stream_equals_whole_answer(client):
    q = _msgs("Name three colors of the rainbow.")
    whole = client.chat.completions.create(model=MODEL, messages=q, max_tokens=10, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=q, max_tokens=10, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_stream_ends_with_done(srv):
    body = {"model": MODEL, "messages": _msgs("Hi"), "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream("POST", srv.base_url + "/chat/completions", json=body, timeout=120) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["object"] == "chat.completion.chunk"


def test_concurrent_clients_get_what_they_get_alone(srv, client, smol, one_thread):
    model, tok = smol
    jobs = [("Write a haiku about the sea.", 9, None), ("What is 2+2?", 4, None), ("Who wrote Hamlet?", 7, None),
            ("Describe a cat.", 10, ["."]), ("What is Python?", 5, None), ("Name a planet.", 8, None),
            ("Say hello in French.", 6, None), ("Count to five.", 10, [","])]
    with one_thread():
        alone = [engine.generate(model, tok, _msgs(q), max_new_tokens=n, stop=stop) for q, n, stop in jobs]
    before = _health(srv)["decode_steps"]

    def ask(job):
        q, n, stop = job
        return client.chat.completions.create(model=MODEL, messages=_msgs(q), max_tokens=n, temperature=0, stop=stop)

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(ask, jobs))
    assert [r.choices[0].message.content for r in results] == alone
    # served one at a time, each answer of n tokens needs n - 1 decode steps (the first token comes from prefill)
    sequential_steps = sum(r.usage.completion_tokens - 1 for r in results)
    assert _health(srv)["decode_steps"] - before < sequential_steps


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_frees_the_slot(srv, client, stream):
    msgs = _msgs("Tell me a very long story about a dragon.")
    start, cancelled = _health(srv)["decode_steps"], srv.log().count("request cancelled by the client")
    if stream:
        answer = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=400, temperature=0, stream=True)
        for i, _ in enumerate(answer):
            if i == 3:
                break
        answer.close()
    else:  # the client gives up waiting for the whole answer
        with pytest.raises(httpx.TimeoutException):
            httpx.post(srv.base_url + "/chat/completions", timeout=3, json={"model": MODEL, "messages": msgs, "max_tokens": 400, "temperature": 0})
    deadline = time.monotonic() + 120
    while _health(srv)["running"] and time.monotonic() < deadline:
        time.sleep(0.2)
    h = _health(srv)
    assert h["running"] == 0 and h["waiting"] == 0
    assert h["decode_steps"] - start < 300  # cancelled, not run to its 400 tokens
    assert srv.log().count("request cancelled by the client") == cancelled + 1  # logged only for unfinished ones
