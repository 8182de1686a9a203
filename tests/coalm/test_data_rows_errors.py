"""Bad data files are one DataError naming the file and the row, never a traceback: JSON nested past the parser's
recursion limit, and bytes that are not UTF-8."""

import json

import pytest

from coalm.data import DataError, load_rows

ROW = {"instruction": "i", "input": "u", "output": "o"}


def test_deeply_nested_json_line(tmp_path):
    f = tmp_path / "deep.jsonl"
    f.write_text(json.dumps(ROW) + "\n" + "[" * 100_000 + "\n")
    with pytest.raises(DataError, match=rf"{f}: row 2: JSON nested too deeply to read"):
        load_rows(f)
    assert load_rows(f, skip_invalid=True) == [ROW]


def test_non_utf8_file_names_file_and_row(tmp_path):
    f = tmp_path / "latin1.jsonl"
    f.write_bytes((json.dumps(ROW) + "\n").encode() + json.dumps({**ROW, "output": "café"}, ensure_ascii=False).encode("latin-1") + b"\n")
    with pytest.raises(DataError, match=rf"{f}: row 2: not UTF-8 text \(invalid continuation byte at byte 49\); convert the file to UTF-8"):
        load_rows(f)
