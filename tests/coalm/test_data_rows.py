"""Loaders: valid files round-trip, invalid rows raise naming file and row, --skip-invalid drops and counts."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from coalm.data import DataError, load, load_rows, save_rows
from coalm.data.__main__ import main

GOOD = {"instruction": "Do it.", "input": "User: hi", "output": "System: hello"}


def _jsonl(path, recs):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in recs))
    return path


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_round_trip(tmp_path, ext):
    rows = [dict(GOOD, meta={"format": "dst", "id": "a"}), dict(GOOD, input="User: ünïcode ✓")]
    p = save_rows(rows, tmp_path / f"x.{ext}")
    assert load_rows(p) == rows


@pytest.mark.parametrize(
    "bad, reason",
    [
        ({"instruction": "a", "input": "b"}, "missing field 'output'"),
        ({"instruction": "a", "input": 3, "output": "c"}, "field 'input' is int"),
        ({"instruction": "a", "input": "b", "output": "  "}, "empty output"),
        ({"instruction": "a", "input": None, "output": "c"}, "missing field 'input'"),
        ({"instruction": "a", "input": "b", "output": "c", "extra": 1}, "unknown field"),
        ("{not json", "not valid JSON"),
        ([1, 2], "not an object"),
    ],
)
def test_jsonl_invalid_row_named(tmp_path, bad, reason):
    p = _jsonl(tmp_path / "d.jsonl", [GOOD, GOOD, bad, GOOD])
    with pytest.raises(DataError) as e:
        load_rows(p)
    assert str(p) in str(e.value) and "row 3" in str(e.value) and reason in str(e.value)
    report = {}
    rows = load_rows(p, skip_invalid=True, report=report)
    assert len(rows) == 3 and report["skipped"] == 1 and any(reason in k for k in report["reasons"])


def test_parquet_invalid_rows(tmp_path):
    p = tmp_path / "d.parquet"
    table = pa.table({"instruction": ["a", "a", "a"], "input": ["b", None, "b"], "output": ["c", "c", ""]})
    pq.write_table(table, p)
    with pytest.raises(DataError, match=r"d\.parquet: row 2: missing field 'input'"):
        load_rows(p)
    report = {}
    assert len(load_rows(p, skip_invalid=True, report=report)) == 1
    assert report == {"skipped": 2, "reasons": {"missing field 'input'": 1, "empty output": 1}}
    pq.write_table(pa.table({"instruction": ["a"], "input": ["b"], "output": ["c"], "score": [1]}), p)
    with pytest.raises(DataError, match="unknown column.*score"):
        load_rows(p)


def test_bad_paths(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_rows(tmp_path / "nope.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="use .jsonl or .parquet"):
        load_rows(tmp_path / "x.csv")
    with pytest.raises(DataError, match="refusing to write"):
        save_rows([{"instruction": "a"}], tmp_path / "y.jsonl")


def test_cli_user_errors_exit_2(tmp_path, capsys):
    p = _jsonl(tmp_path / "d.jsonl", [GOOD, {"instruction": "a", "input": "b", "output": ""}])
    assert main(["stats", str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "row 2: empty output" in err[0]
    assert main(["build", "--sources", "snips,nope", "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "valid: snips,sgd,sample" in capsys.readouterr().err


def test_load_specs():
    assert len(load("sample")) > 200 and len(load("sample-eval")) > 30


def test_stats_reports_the_trainers_micro_batches(capsys):
    """`stats` counts what engine.train would run in one epoch: ceil(rows / global) steps, each cut into
    ceil(rows in the step / micro) packed rows, and the targets the shifted loss averages over."""
    import math

    from engine.data import IGNORE, render_rows
    from engine.tokenizer import load_tokenizer

    assert main(["stats", "sample-eval", "--global-batch-size", "5", "--micro-batch-size", "2",
                 "--max-seq-len", "200"]) == 0
    out = json.loads(capsys.readouterr().out)
    rendered, rstats = render_rows(load("sample-eval"), load_tokenizer("smollm2-135m"), max_len=200)
    n = len(rendered)
    steps = math.ceil(n / 5)
    per_step = [min(5, n - 5 * s) for s in range(steps)]
    mb = out["micro_batches"]
    assert (mb["steps_per_epoch"], mb["per_epoch"]) == (steps, sum(math.ceil(k / 2) for k in per_step))
    assert mb["target_tokens"] == sum(t != IGNORE for _, y in rendered for t in y[1:])
    assert mb["tokens"]["max"] <= 2 * 200 and mb["tokens"]["min"] >= 1
    assert out["truncated"] == rstats.truncated and out["rows"] == len(load("sample-eval"))
