"""`python -m coalm.eval`: scoring a responses file, generating through the engine API, and user errors (exit 2)."""

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from coalm.eval import bfcl
from coalm.eval.__main__ import main
from coalm.eval.base import data_root

ROOT = data_root()
REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not (ROOT / "bfcl").is_dir(), reason="needs the shared BFCL data")
ARGS = ["--bench", "bfcl", "--data-root", str(ROOT), "--category", "simple,irrelevance,live_relevance",
        "--per-category-limit", "4"]


def _responses(path):
    """irrelevance: prose (correct); live_relevance: a call (correct); simple: one right answer, one wrong, rest absent."""
    exs = bfcl.load_examples(ROOT, bfcl.Options(category="simple,irrelevance,live_relevance",
                                                         per_category_limit=4))
    simple = [e for e in exs if e["category"] == "simple"]
    ((_, params),) = simple[0]["answer"][0].items()
    args = ", ".join(f"{k}={next(v for v in acc if v != '')!r}" for k, acc in params.items() if acc != [""])
    rows = [{"id": simple[0]["id"], "result": f"[{simple[0]['functions'][0]['name']}({args})]"},
            {"id": simple[1]["id"], "result": "I need more information."}]
    rows += [{"id": e["id"], "result": "None of these functions fit."} for e in exs if e["category"] == "irrelevance"]
    rows += [{"id": e["id"].split("#")[0], "result": f"[{e['functions'][0]['name']}(q='x')]"}
             for e in exs if e["category"] == "live_relevance"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return exs


def test_scores_a_responses_file(tmp_path, capsys):
    exs = _responses(tmp_path / "r.jsonl")
    out = tmp_path / "rep" / "report.json"
    assert main(ARGS + ["--responses", str(tmp_path / "r.jsonl"), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"summary", "items", "meta"}
    assert [it["id"] for it in report["items"]] == [e["id"] for e in exs]
    assert all(set(it) == {"id", "category", "verdict", "error", "error_type"} for it in report["items"])
    cats = report["summary"]["categories"]
    assert (cats["simple"]["correct"], cats["simple"]["total"], cats["simple"]["missing_responses"]) == (1, 4, 2)
    assert cats["irrelevance"]["accuracy"] == 1.0 and cats["live_relevance"]["accuracy"] == 1.0
    scores = report["summary"]["scores"]
    assert scores["non_live_simple"] == 0.25 and scores["non_live_overall"] == pytest.approx((0.25 + 1.0) / 2)
    assert scores["live_overall"] == 1.0 and scores["live_ast"] is None
    assert report["meta"]["bench"] == "bfcl" and report["meta"]["n_examples"] == len(exs)
    printed = capsys.readouterr().out
    assert "scores.overall_single_turn" in printed and str(out) in printed


def test_limit_and_default_report_path(tmp_path, monkeypatch):
    _responses(tmp_path / "r.jsonl")
    monkeypatch.chdir(tmp_path)
    assert main(ARGS + ["--responses", "r.jsonl", "--limit", "3"]) == 0
    (report_path,) = (tmp_path / "reports").glob("bfcl-*.json")
    assert len(json.loads(report_path.read_text())["items"]) == 3


def test_generates_with_the_engine_api(tmp_path, monkeypatch):
    calls = []

    def load(name, adapter=None, dtype=None):
        calls.append(("load", name, adapter, dtype))
        return "MODEL", "TOK"

    def generate(model, tok, prompts, max_new_tokens, temperature):
        assert (model, tok, temperature) == ("MODEL", "TOK", 0.0)
        assert all(isinstance(p, list) and p[0]["role"] == "system" for p in prompts)
        calls.append(("generate", len(prompts), max_new_tokens))
        return ["I cannot help with that."] * len(prompts)

    monkeypatch.setitem(sys.modules, "engine", types.SimpleNamespace(load=load, generate=generate))
    monkeypatch.setitem(sys.modules, "engine.loader", types.SimpleNamespace(
        resolve_dtype=lambda name, announce=False: "DTYPE" if name == "auto" else name))
    out = tmp_path / "gen.json"
    argv = ARGS + ["--model", "tiny", "--adapter", "ad", "--batch-size", "5", "--max-new-tokens", "7", "--out", str(out)]
    assert main(argv) == 0
    assert calls == [("load", "tiny", "ad", "DTYPE"), ("generate", 5, 7), ("generate", 5, 7), ("generate", 2, 7)]
    saved = tmp_path / "gen.responses.jsonl"
    assert len(bfcl.read_responses(saved)) == 12
    cats = json.loads(out.read_text())["summary"]["categories"]
    assert cats["irrelevance"]["accuracy"] == 1.0 and cats["simple"]["accuracy"] == 0.0


@pytest.mark.parametrize("extra, message", [
    (["--responses", "nope.jsonl"], "responses file not found: nope.jsonl"),
    (["--responses", "r.jsonl", "--category", "simpel"], "unknown BFCL category 'simpel'"),
    (["--responses", "mt.jsonl", "--category", "multi_turn_base"], "mt.jsonl:2: a multi-turn result must be a list"),
    (["--responses", "other.jsonl"], "none of the 1 responses in other.jsonl matches"),
    (["--responses", "r.jsonl", "--data-root", "/nonexistent"], "no bfcl data under /nonexistent"),
])
def test_user_errors_exit_2(tmp_path, monkeypatch, capsys, extra, message):
    _responses(tmp_path / "r.jsonl")
    (tmp_path / "other.jsonl").write_text('{"id": "elsewhere_0", "result": "x"}\n')
    (tmp_path / "mt.jsonl").write_text('{"id": "multi_turn_base_0", "result": [[]]}\n{"id": "multi_turn_base_1", '
                                       '"result": 5}\n')
    monkeypatch.chdir(tmp_path)
    assert main(ARGS + extra + ["--out", "rep.json"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "rep.json").exists()


@pytest.mark.slow  # a subprocess
def test_malformed_file_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "simple_0", "result": "[f(x=1)]"}\n{"id": "simple_1", "result": [f(x=1)]}\n')
    proc = subprocess.run([sys.executable, "-m", "coalm.eval", *ARGS, "--responses", str(bad), "--out",
                           str(tmp_path / "rep.json")], check=False, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert f"{bad}:2: not valid JSON" in proc.stderr
