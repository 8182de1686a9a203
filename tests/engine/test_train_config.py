"""Typed training configuration: YAML and flags are converted to the TrainConfig field types and validated before
anything is loaded or written; bad values are one line naming the key, the value and the expected type."""

import os
import subprocess
import sys
from dataclasses import fields

import pytest

from engine.train import TrainConfig, main, parse_config


def _yaml(tmp_path, text):
    f = tmp_path / "run.yaml"
    f.write_text(text)
    return str(f)


def test_yaml_values_take_the_field_types(tmp_path):
    # YAML 1.1 reads 1e-4 (no dot) as a string, and a quoted "2" is one: both convert to the field's type.
    text = 'lr: 1e-4\nsteps: "2"\nepochs: 1\ndata: a.jsonl\nlog: tensorboard\n'
    cfg = parse_config(["--config", _yaml(tmp_path, text)])
    assert (cfg.lr, cfg.steps, cfg.epochs, cfg.data, cfg.log) == (1e-4, 2, 1.0, ["a.jsonl"], ["tensorboard"])
    assert type(cfg.lr) is float and type(cfg.steps) is int and type(cfg.epochs) is float
    cfg = parse_config(["--lr", "3e-4", "--steps", "7", "--data", "a.jsonl", "b.parquet"])
    assert (cfg.lr, cfg.steps, cfg.data) == (3e-4, 7, ["a.jsonl", "b.parquet"])
    assert TrainConfig() == parse_config([])


@pytest.mark.parametrize(("yaml_text", "message"), [
    ("lr: fast\n", "run.yaml: lr: 'fast' is not a float"),
    ("data: 5\n", "run.yaml: data: 5 is not a file name or a list of file names"),
    ("steps: 2.5\n", "run.yaml: steps: 2.5 is not an integer"),
    ("resume: 'yes'\n", "run.yaml: resume: 'yes' is not one of latest, auto"),
    ("lr: [1\n", "run.yaml: invalid YAML: expected ',' or ']', but got '<stream end>' (line 2, column 1)"),
    ("a: b: c\n", "run.yaml: invalid YAML: mapping values are not allowed here (line 1, column 5)"),
    ("mode: qdora\n", "run.yaml: mode: 'qdora' is not one of qlora, lora, full"),
    ("learning_rate: 1\n", "unknown keys ['learning_rate']; valid keys: ["),
    ("- 1\n", "expected a mapping of TrainConfig keys"),
])
def test_bad_yaml_names_key_value_and_type(tmp_path, yaml_text, message):
    with pytest.raises(ValueError) as e:
        parse_config(["--config", _yaml(tmp_path, yaml_text)])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_resume_takes_an_optional_value(tmp_path):
    assert parse_config([]).resume is None
    assert parse_config(["--resume"]).resume == "latest"
    assert parse_config(["--resume", "auto"]).resume == "auto"
    assert parse_config(["--config", _yaml(tmp_path, "resume: true\n")]).resume == "latest"
    assert parse_config(["--config", _yaml(tmp_path, "resume: false\n")]).resume is None
    with pytest.raises(ValueError, match="--resume: 'always' is not one of latest, auto"):
        parse_config(["--resume", "always"])


@pytest.mark.parametrize(("argv", "message"), [
    (["--micro-batch-size", "0"], "--micro-batch-size must be >= 1, got 0"),
    (["--steps", "-1"], "--steps must be >= 1, got -1"),
    (["--lr", "fast"], "--lr: 'fast' is not a float"),
    (["--device", "foo"], "--device: 'foo' is not a device"),
    (["--tp", "2"], "needs one process per rank: launch with `torchrun"),
    (["--global-batch-size", "6", "--micro-batch-size", "4"], "must be a multiple of"),
    (["--val-frac", "1.5"], "--val-frac must be in [0, 1)"),
    (["--log", "mlflow"], "--log: 'mlflow' is not one of tensorboard, wandb"),
    (["--checkpoint", "DIR"], "--checkpoint was folded into --model"),
])
def test_bad_flags_fail_before_anything_is_written(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    out = tmp_path / "run"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_out_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["--out", str(f)]) == 2
    assert f"--out {f} is a file" in capsys.readouterr().err


def test_help_shows_every_flag_with_help_and_default():
    env = {**os.environ, "COLUMNS": "400"}  # argparse wraps help at hyphens otherwise
    r = subprocess.run([sys.executable, "-m", "engine.train", "--help"], capture_output=True, text=True, timeout=120,
                       check=True, env=env)
    text = " ".join(r.stdout.split())
    for f in fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in text
        assert " ".join(f.metadata["help"].split()) in text
    assert "peak learning rate (default: 0.0001)" in text and "(default: 1024)" in text
