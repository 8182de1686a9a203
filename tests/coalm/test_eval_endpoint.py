"""`coalm.eval --base-url` against `engine.serve` gives the same report as `--model` in-process; the endpoint backend
keeps input order with requests in flight; a bad key or model is a one-line error, a too-long prompt that item's
error (the scripted flaky server of test_eval_endpoint_flaky.py covers the rest)."""

import json
import os

import pytest

from coalm.eval.__main__ import main
from coalm.eval.base import EvalError, ItemError
from coalm.eval.endpoint import EndpointBackend
from engine.serving import launch

pytestmark = pytest.mark.slow  # starts engine.serve subprocesses
MODEL = "smollm2-135m"
ITEMS = ["--bench", "bfcl", "--category", "simple", "--limit", "3", "--max-new-tokens", "10"]


def test_endpoint_report_equals_local_report(tmp_path, one_thread):
    local, remote = tmp_path / "local.json", tmp_path / "remote.json"
    with one_thread():
        # fp32 and one conversation at a time on both sides: in bf16 the shapes of a step (which requests a busy
        # server decodes together, how a prompt is chunked) round differently and can flip a greedy token, and the
        # test is about the endpoint client, not about bf16
        assert main(ITEMS + ["--model", MODEL, "--dtype", "fp32", "--batch-size", "1", "--out", str(local)]) == 0
    # one OpenMP thread: under pytest -n 2 a two-thread server would fight the workers for the two cores
    with launch.server(["--model", MODEL, "--dtype", "fp32", "--served-model-name", "coalm-smol", "--api-key", "k"],
                       env=dict(os.environ, OMP_NUM_THREADS="1"), log_dir=str(tmp_path)) as srv:
        assert main(ITEMS + ["--base-url", srv.base_url, "--model-name", "coalm-smol", "--api-key", "k",
                             "--concurrency", "1", "--out", str(remote)]) == 0
    a, b = json.loads(local.read_text()), json.loads(remote.read_text())
    assert len(a["items"]) == 3
    assert a["items"] == b["items"] and a["summary"] == b["summary"]
    ra, rb = (tmp_path / "local.responses.jsonl"), (tmp_path / "remote.responses.jsonl")
    assert ra.read_text() == rb.read_text()  # the raw outputs themselves, in the benchmark's own format


def test_backend_order_default_model_and_errors(tmp_path, monkeypatch):
    # a scripted model (engine.serve --fake-model) answers each conversation with its own text, so order is checked
    rules = [{"when": f"the number {i}.", "reply": f"{i} {i} {i}"} for i in range(6)]
    (tmp_path / "script.json").write_text(json.dumps({"rules": rules}))
    args = ["--fake-model", str(tmp_path / "script.json"), "--model", MODEL, "--served-model-name", "coalm-smol",
            "--api-key", "k", "--max-model-len", "256"]
    with launch.server(args, timeout=120, log_dir=str(tmp_path)) as srv:
        monkeypatch.setenv("OPENAI_API_KEY", "k")
        backend = EndpointBackend(srv.base_url, concurrency=4)  # model name and key from the server / environment
        assert backend.model_name == "coalm-smol"
        convs = [[{"role": "user", "content": f"Repeat the number {i}."}] for i in (3, 0, 5, 1, 4, 2)]
        assert backend.chat(convs, max_new_tokens=8) == [f"{i} {i} {i}" for i in (3, 0, 5, 1, 4, 2)]
        assert backend.chat(convs, max_new_tokens=2) == [f"{i} {i} " for i in (3, 0, 5, 1, 4, 2)]  # max_tokens sent
        with pytest.raises(EvalError, match="answered 401"):
            EndpointBackend(srv.base_url, model_name="coalm-smol", api_key="wrong").chat(convs[:1], 2)
        (too_long,) = backend.chat([[{"role": "user", "content": "x " * 300}]], 2)  # that item's error only
        assert isinstance(too_long, ItemError) and "answered 400" in str(too_long) and "context length" in str(too_long)
        with pytest.raises(EvalError, match="answered 404"):
            EndpointBackend(srv.base_url, model_name="gpt-4", api_key="k").chat(convs[:1], 2)


def test_endpoint_constrained_calls_validate(tmp_path, one_thread):
    """`--base-url --constrained on`: each BFCL item goes out with its call list as a response_format json_schema
    (engine.serve constrains by it); every answer is an LA list of the item's own functions whose arguments validate
    (json + jsonschema, not the code under test), and the answers are those of the in-process constrained run (the
    LA grammar and the schema's grammar admit the same texts)."""
    import jsonschema

    from coalm.eval.bfcl.schemas import function_tool
    from coalm.paths import data_root
    from engine.tokenizer import load_tokenizer

    items = ["--bench", "bfcl", "--category", "simple,multiple,irrelevance", "--per-category-limit", "2",
             "--max-new-tokens", "96", "--prompt-style", "coalm", "--constrained", "on"]
    with one_thread():
        assert main(items + ["--model", MODEL, "--dtype", "fp32", "--batch-size", "1", "--out",
                             str(tmp_path / "local.json")]) == 0
    with launch.server(["--model", MODEL, "--dtype", "fp32"], env=dict(os.environ, OMP_NUM_THREADS="1"),
                       log_dir=str(tmp_path)) as srv:
        assert main(items + ["--base-url", srv.base_url, "--concurrency", "1", "--out", str(tmp_path / "r.json")]) == 0
    functions = {}
    for cat in ("simple", "multiple", "irrelevance"):
        for line in (data_root() / "bfcl" / f"BFCL_v3_{cat}.json").read_text().splitlines()[:2]:
            row = json.loads(line)
            functions[row["id"]] = {f["name"]: function_tool(f, cat)["function"]["parameters"] for f in row["function"]}
    rows = [json.loads(line) for line in (tmp_path / "r.responses.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    tok = load_tokenizer(MODEL)
    for r in rows:
        try:
            calls = json.loads(r["result"])
        except json.JSONDecodeError:  # only a list cut by the token budget
            assert len(tok.encode(r["result"])) >= 96 - 4, r
            continue
        assert isinstance(calls, list), r
        tools = functions[r["id"]]
        for c in calls:
            assert set(c) == {"name", "arguments"} and c["name"] in tools, r
            jsonschema.validate(c["arguments"], tools[c["name"]])
    assert (tmp_path / "r.responses.jsonl").read_text() == (tmp_path / "local.responses.jsonl").read_text()
