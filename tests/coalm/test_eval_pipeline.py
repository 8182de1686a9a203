"""coalm.eval's one pipeline: `evaluate()` as a library function (any backend object, saved responses, options by
name with one default each), the runner's per-item cache shared with the CLI, and the CLI's help listing every
benchmark's flags."""

import dataclasses
import json

import pytest

from coalm.eval import evaluate, get_task
from coalm.eval.__main__ import _parser, main
from coalm.eval.base import EvalError, data_root
from coalm.eval.options import ModelOptions, RunOptions, build
from coalm.eval.registry import REGISTRY

ROOT = data_root()
needs_data = pytest.mark.skipif(not (ROOT / "bfcl").is_dir(), reason=f"shared data not at {ROOT}")
OPTS = {"category": "simple,irrelevance", "per_category_limit": 3}


class Echo:
    """A backend that answers every conversation with a fixed text and counts what it is asked."""

    def __init__(self, text="I cannot help with that."):
        self.text, self.asked, self.name = text, 0, "echo"

    def chat(self, conversations, max_new_tokens):
        self.asked += len(conversations)
        return [self.text] * len(conversations)


@needs_data
def test_evaluate_with_a_backend_object_then_rescore_and_resume(tmp_path):
    out = tmp_path / "r.json"
    echo = Echo()
    report = evaluate("bfcl", out, backend=echo, **OPTS)
    assert echo.asked == 6 and report["meta"]["model"] == "echo"
    cats = report["summary"]["categories"]
    assert cats["irrelevance"]["accuracy"] == 1.0 and cats["simple"]["accuracy"] == 0.0
    # the saved outputs rescore to the same items and summary
    again = evaluate("bfcl", responses=tmp_path / "r.responses.jsonl", **OPTS)
    assert again["items"] == report["items"] and again["summary"] == report["summary"]
    # the same out: every item comes from the per-item cache
    echo2 = Echo("other text")
    assert evaluate("bfcl", out, backend=echo2, **OPTS)["items"] == report["items"] and echo2.asked == 0
    # a changed prompt style changes every prompt, another output budget or model every output: nothing is reused
    evaluate("bfcl", out, backend=echo2, style="coalm", **OPTS)
    assert echo2.asked == 6
    evaluate("bfcl", out, backend=echo2, max_new_tokens=9, **OPTS)
    assert echo2.asked == 12
    other = Echo()
    other.name = "another model"
    evaluate("bfcl", out, backend=other, **OPTS)
    assert other.asked == 6


@pytest.mark.parametrize("kwargs, message", [
    ({"responses": "x", "model": "m"}, "exactly one of"),
    ({}, "exactly one of"),
    ({"backend": Echo(), "colour": "red"}, "unknown option 'colour'; valid: category, per_category_limit"),
    ({"backend": Echo(), "limit": 0}, "--limit must be positive"),
    ({"backend": Echo(), "limit": True}, "--limit must be int"),
    ({"backend": Echo(), "max_new_tokens": "many"}, "--max-new-tokens must be int"),
    ({"backend": Echo(), "style": "hammer"}, "unknown prompt style 'hammer'"),
])
def test_evaluate_refuses_bad_calls_in_one_line(kwargs, message):
    with pytest.raises(EvalError, match=message):
        evaluate("bfcl", **kwargs)


def test_defaults_live_once_in_the_option_classes():
    args = _parser().parse_args(["--bench", "bfcl", "--responses", "x"])
    for cls in (RunOptions, ModelOptions):
        for f in dataclasses.fields(cls):
            assert getattr(args, f.name) == f.default, f.name  # the CLI's defaults are the dataclass's
    assert build(RunOptions, {"limit": "8", "timeout": "2.5"}) == RunOptions(limit=8, timeout=2.5)
    for name in REGISTRY:  # a benchmark flag the user did not give stays out: its default is the task's own
        for f in dataclasses.fields(get_task(name).Options):
            assert f.name not in vars(args)


def test_help_lists_every_benchmarks_flags(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for name in REGISTRY:
        for f in dataclasses.fields(get_task(name).Options):
            assert f"--{f.name.replace('_', '-')}" in text
        if dataclasses.fields(get_task(name).Options):
            assert f"--bench {name}:" in text
    assert "--max-errors" in text and "--timeout" in text and "--suite coalm --help" in text


@needs_data
def test_another_benchmarks_flag_is_refused(capsys):
    assert main(["--bench", "api-bank", "--responses", "x.jsonl", "--category", "simple"]) == 2
    assert "--category is a flag of --bench bfcl, not of --bench api-bank" in capsys.readouterr().err


@needs_data
def test_report_lists_generation_errors(tmp_path):
    from coalm.eval.base import ItemError

    class Half(Echo):
        def chat(self, conversations, max_new_tokens):
            self.asked += len(conversations)
            return [ItemError("HTTP 503") if i % 2 else self.text for i in range(len(conversations))]

    report = evaluate("bfcl", tmp_path / "r.json", backend=Half(), batch_size=2, **OPTS)
    failed = {it["id"] for it in report["items"] if it.get("generation_error") == "HTTP 503"}
    assert len(failed) == 3 and set(report["errors"]) == failed
    assert all(it["error_type"] == "missing_response" for it in report["items"] if it["id"] in failed)
    saved = [json.loads(x) for x in (tmp_path / "r.responses.jsonl").read_text().splitlines()]
    assert len(saved) == 3
