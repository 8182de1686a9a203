"""The embedded sample as a coalm.eval benchmark: its scorer's rules, the CLI on saved outputs, and the layer order
of the packages (kernels <- engine <- coalm; coalm.data below coalm.eval), checked on the import statements."""

import ast
import json
from pathlib import Path

import pytest

from coalm.data import formats as F
from coalm.data import load_sample
from coalm.eval import evaluate
from coalm.eval.base import EvalError
from coalm.eval.sample import score_sample

REPO = Path(__file__).resolve().parents[2]


def test_score_sample():
    rows = load_sample("eval")
    perfect = score_sample(rows, [r["output"] for r in rows])
    assert perfect["overall"] == {"n": len(rows), "parsed": 1.0, "exact": 1.0}
    assert set(perfect) == {"la", "dst", "cra_action", "cra_response", "overall"}
    assert score_sample(rows, [""] * len(rows))["overall"]["parsed"] == 0.0
    la = next(r for r in rows if r["meta"]["format"] == "la" and r["output"] != "[]")
    calls = json.loads(la["output"])
    reordered = json.dumps([{"arguments": dict(reversed(list(c["arguments"].items()))), "name": c["name"]}
                            for c in calls], indent=2)
    wrong = json.dumps([{"name": calls[0]["name"], "arguments": {k: v + "x" for k, v in calls[0]["arguments"].items()}}])
    assert score_sample([la] * 3, [reordered, wrong, "Sure! " + la["output"]])["la"] == {
        "n": 3, "parsed": 2 / 3, "exact": 1 / 3}
    act = next(r for r in rows if r["meta"]["format"] == "cra_action")
    name, args = F.parse_action(act["output"])
    spaced = "Action: " + name + "(" + " , ".join(f'{k} = "{v}"' for k, v in args.items()) + ")"
    assert score_sample([act] * 3, [spaced, "Action: __import__('os').system('x')", "Action: f(1)"])[
        "cra_action"] == {"n": 3, "parsed": 1 / 3, "exact": 1 / 3}
    with pytest.raises(EvalError, match="2 rows but 1 predictions"):
        score_sample(rows[:2], ["x"])


def test_sample_bench_scores_saved_outputs_through_evaluate(tmp_path):
    rows = load_sample("eval")
    outputs = [r["output"] if i % 2 == 0 else "no idea" for i, r in enumerate(rows)]
    saved = tmp_path / "responses.jsonl"
    saved.write_text("".join(json.dumps({"id": r["meta"]["id"], "result": o}) + "\n" for r, o in zip(rows, outputs)))
    report = evaluate("sample", tmp_path / "report.json", responses=saved)
    assert report["summary"] == score_sample(rows, outputs)
    assert [i["verdict"] == "correct" for i in report["items"]] == [i % 2 == 0 for i in range(len(rows))]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize(("package", "forbidden", "allowed_files"), [
    ("coalm_kernels", ("engine", "coalm"), ()),
    ("engine", ("coalm",), ()),  # including imports inside functions (ast.walk sees them)
    ("coalm/data", ("coalm.eval", "coalm.demo", "coalm.agent"), ()),
])
def test_layer_order(package, forbidden, allowed_files):
    bad = []
    for f in sorted((REPO / package).rglob("*.py")):
        rel = f.relative_to(REPO).as_posix()
        if rel in allowed_files:
            continue
        bad += [f"{rel}: {m}" for m in _imports(f) if any(m == x or m.startswith(x + ".") for x in forbidden)]
    assert not bad
