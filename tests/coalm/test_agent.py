"""The agent recipe (sources, decontamination against the evaluators' own test queries, mixing), its CLI, and the
`make agent` pipeline's steps."""

import argparse
import json

import pytest

from coalm.agent import pipeline, recipe
from coalm.agent.__main__ import main
from coalm.agent.sgd_dst import build_sgd_dst, domain_name
from coalm.data import formats as F
from coalm.data import validate_row
from coalm.eval import bfcl
from coalm.paths import data_root

ROOT = data_root()
needs_data = pytest.mark.skipif(not (ROOT / "sgd").is_dir(), reason=f"shared data not at {ROOT}")


@needs_data
def test_recipe_mixes_every_source_and_drops_test_queries(monkeypatch):
    planted = next(q for q in bfcl.test_queries(ROOT)[100:] if len(q.split()) >= 15)
    real = recipe.generate_la

    def with_a_leak(n, seed=0):
        rows = real(n, seed=seed)
        return rows + [dict(rows[0], input=planted, meta={"format": "la", "source": "synth", "id": "leak"})]

    monkeypatch.setattr(recipe, "generate_la", with_a_leak)
    weights = {"synth_la": 1.0, "sgd_la": 1.0, "snips_dst": 0.02, "sgd_dst": 0.05, "sgd_cra": 0.02}
    train, val, stats = recipe.build(ROOT, weights, n_synth=150, val_frac=0.1, log=lambda m: None)
    assert set(stats["test_queries"]) == {"bfcl", "api-bank", "multiwoz"}
    assert stats["dropped"]["train"].get("bfcl", 0) + stats["dropped"]["val"].get("bfcl", 0) >= 1
    assert not any(r["input"] == planted for r in train + val)
    sources = {(r["meta"]["source"], F.row_format(r)) for r in train}
    assert {("synth", "la"), ("sgd", "la"), ("snips", "dst"), ("sgd", "dst")} <= sources
    assert {("sgd", "cra_action"), ("sgd", "cra_response")} & sources
    assert all(validate_row(r) is None for r in train) and val
    assert all(len(r["instruction"]) + len(r["input"]) + len(r["output"]) <= 3000 for r in train)


@needs_data
def test_sgd_dst_rows_carry_the_conversation_and_cumulative_state():
    rows = build_sgd_dst(ROOT, "dev", limit_dialogues=3)
    raw = json.loads(next((ROOT / "sgd" / "dev").glob("dialogues_*.json")).read_text())[:3]
    assert len(rows) == sum(1 for d in raw for t in d["turns"] if t["speaker"] == "USER")
    for r in rows:
        st = F.parse_dst(r["output"])
        assert st is not None and r["input"].splitlines()[-1].startswith("User: ")
        assert f"- {st['domain']}:" in r["instruction"]
        for v in st["slot_values"].values():
            assert isinstance(v, str)
    assert [domain_name(s) for s in ("Restaurants_1", "Buses_3", "Services_2", "Music_1", "RentalCars_2")] == [
        "restaurant", "bus", "service", "music", "rentalcar"]


@needs_data
def test_sgd_dst_answers_use_the_names_the_instruction_lists():
    """Every answer's domain and slots are among those the row's instruction lists for that domain (SGD's several
    schemas per domain included), and part of the rows rename them, so the names must be read, not remembered."""
    rows = build_sgd_dst(ROOT, "train", seed=5)
    schema = json.loads((ROOT / "sgd" / "train" / "schema.json").read_text())
    sgd_slots = {x["name"] for sv in schema for x in sv["slots"]}
    renamed = 0
    for r in rows:
        st = F.parse_dst(r["output"])
        listed = dict(ln[2:].split(": ", 1) for ln in r["instruction"].splitlines() if ln.startswith("- "))
        assert st["domain"] in listed, (st["domain"], list(listed))
        slots = listed[st["domain"]].split(", ")
        assert len(set(slots)) == len(slots)
        assert set(st["slot_values"]) <= set(slots), (st, slots)
        renamed += any(k not in sgd_slots for k in st["slot_values"])
    assert 0.2 * len(rows) < renamed < 0.8 * len(rows)
    assert build_sgd_dst(ROOT, "train", seed=5, rename=0.0) != rows
    assert all(set(F.parse_dst(r["output"])["slot_values"]) <= sgd_slots
               for r in build_sgd_dst(ROOT, "train", seed=5, rename=0.0))


def test_cli_errors_name_the_missing_folder(tmp_path, capsys):
    assert main(["build", "--data-root", str(tmp_path), "--out", str(tmp_path / "x.jsonl"), "--synth-rows", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"folder {tmp_path / 'sgd'} is missing" in err
    assert main(["build", "--data-root", str(tmp_path), "--out", str(tmp_path / "x.jsonl"),
                 "--weights", "snips_dst=1,sgd_dst=0,sgd_la=0,sgd_cra=0,synth_la=0"]) == 2
    assert f"folder {tmp_path / 'snips'} is missing" in capsys.readouterr().err
    (tmp_path / "sgd").mkdir()
    assert main(["build", "--data-root", str(tmp_path), "--out", str(tmp_path / "x.jsonl"), "--synth-rows", "10"]) == 2
    assert f"no SGD split folders (train, dev) under {tmp_path / 'sgd'}" in capsys.readouterr().err
    assert main(["build", "--data-root", str(tmp_path), "--out", str(tmp_path / "x.jsonl"),
                 "--weights", "snips_dst=0,sgd_dst=0,sgd_la=0,sgd_cra=0,synth_la=1", "--synth-rows", "5"]) == 2
    assert "no benchmark test sets" in capsys.readouterr().err
    assert main(["build", "--out", "x.jsonl", "--weights", "wiki=1"]) == 2
    assert "SOURCE=NUMBER" in capsys.readouterr().err


def test_stats_counts_rows_and_tokens_per_format(tmp_path, capsys):
    from coalm.data.synth import generate_la

    rows = generate_la(6, seed=1) + [{"instruction": F.dst_instruction({"d": ["a"]}), "input": "User: hi",
                                      "output": F.dst_output("d", {"a": "hi"})}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["stats", str(path), "--tokenizer", "llama3"]) == 0  # llama3: loads in seconds (no GGUF to read)
    out = json.loads(capsys.readouterr().out)
    assert out["formats"]["la"]["rows"] == 6 and out["formats"]["dst"]["rows"] == 1
    for s in out["formats"].values():
        assert s["tokens"] > s["target_tokens"] > 0
    assert out["total"]["rows"] == 7


def test_pipeline_steps(tmp_path):
    a = argparse.Namespace(model="smollm2-135m", steps=7, seed=0, data_root=None, constrained="on")
    cmd = pipeline.train_command(a, tmp_path / "d.jsonl", tmp_path / "train", ["--lr", "1e-3"])
    assert cmd[1:3] == ["-m", "engine.train"] and "--resume" not in cmd
    assert cmd[cmd.index("--steps") + 1] == "7" and cmd[-2:] == ["--lr", "1e-3"]
    (tmp_path / "train" / "checkpoints").mkdir(parents=True)
    assert pipeline.train_command(a, tmp_path / "d.jsonl", tmp_path / "train", [])[-1] == "--resume"
    s = pipeline.suite_command(a, "coalm", tmp_path / "adapter", tmp_path / "card")
    assert s[1:5] == ["-m", "coalm.eval", "--suite", "coalm"] and s[s.index("--prompt-style") + 1] == "coalm"
    assert s[s.index("--bfcl-limit") + 1] == "50" and s[s.index("--multiwoz-dialogues") + 1] == "40"
    assert s[s.index("--constrained") + 1] == "on"  # the CoALM-IT card has the constrained column beside the free one
    assert "--constrained" not in pipeline.suite_command(a, "official", tmp_path / "adapter", tmp_path / "card")
    a.constrained = "off"
    assert "--constrained" not in pipeline.suite_command(a, "coalm", tmp_path / "adapter", tmp_path / "card")


def test_adapter_reuse_is_keyed_on_the_recipe_and_training_config(tmp_path, capsys):
    a = argparse.Namespace(model="smollm2-135m", steps=7, seed=0, data_root=str(tmp_path), weights=None,
                           synth_rows=10, max_chars=100)
    train = tmp_path / "run" / "train"
    cmd = pipeline.train_command(a, tmp_path / "agent-x.jsonl", train, [])
    key = pipeline.config_hash(pipeline.train_config(cmd))
    assert pipeline.prepare_train_dir(train, key, cmd) == "train"
    (train / "adapter").mkdir()
    (train / "adapter" / "adapter_config.json").write_text("{}")
    assert pipeline.prepare_train_dir(train, key, cmd) == "reuse"
    assert f"reusing {train / 'adapter'}" in capsys.readouterr().out
    # another flag or another recipe: the old run is moved aside (kept), and training starts again
    a.steps = 8
    cmd2 = pipeline.train_command(a, tmp_path / "agent-x.jsonl", train, [])
    key2 = pipeline.config_hash(pipeline.train_config(cmd2))
    assert key2 != key and pipeline.prepare_train_dir(train, key2, cmd2) == "train"
    assert (train.with_name(f"train.{key}") / "adapter" / "adapter_config.json").is_file()
    assert f"hash {key} -> {key2}" in capsys.readouterr().out
    assert not (train / "adapter").exists()
    recipe = pipeline.recipe_config(a)
    assert pipeline.config_hash(recipe) != pipeline.config_hash({**recipe, "weights": {"synth_la": 2.0}})
    # an interrupted run of the same config resumes from its checkpoints
    (train / "checkpoints").mkdir()
    assert pipeline.prepare_train_dir(train, key2, cmd2) == "resume"
    assert pipeline.train_command(a, tmp_path / "agent-x.jsonl", train, [])[-1] == "--resume"
    assert pipeline.config_hash(pipeline.train_config(pipeline.train_command(a, tmp_path / "agent-x.jsonl", train,
                                                                             []))) == key2
