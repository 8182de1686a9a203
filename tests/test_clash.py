"""No importable name of ours shadows a PyPI distribution that we or our users' stack (transformers, peft,
bitsandbytes) depend on, and the environment's requirements hold.

Our top-level package was once named `kernels`, as is Hugging Face's `kernels` distribution that transformers 5.x
requires: from the repo root ours won and `from transformers import LlamaForCausalLM` failed. These tests import the
user's stack and our packages in both orders, in a fresh interpreter started from the repo root (so the checkout is
first on sys.path, as it is for `python -m engine.train`), and ask pip whether any installed requirement is broken.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

pytestmark = pytest.mark.slow  # starts interpreters

ROOT = Path(__file__).resolve().parents[1]
STACK = ["import transformers", "from transformers import LlamaForCausalLM", "import peft", "import bitsandbytes"]


def _our_packages() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["scikit-build"]["wheel"]["packages"]


def _data_packages() -> set[str]:
    """The packages the Makefile installs with --no-deps for the files they ship (their requirements are unmet on
    purpose: llama.cpp builds, cloud SDKs); pip check's complaints about them are expected."""
    line = re.search(r"^DATA_PKGS \?= (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE).group(1)
    return {re.split(r"[=<>]", spec)[0].lower().replace("_", "-") for spec in line.split()}


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def test_our_packages_are_ours_alone():
    dists = md.packages_distributions()
    for name in _our_packages():
        others = [d for d in dists.get(name, []) if d.lower().replace("_", "-") != "coalm-engine"]
        assert not others, f"top-level package {name!r} is also installed by {others}: rename ours"


@pytest.mark.parametrize("ours_first", [False, True], ids=["stack-first", "ours-first"])
def test_stack_and_ours_import_together_from_the_repo_root(ours_first):
    ours = [f"import {name}" for name in _our_packages()] + ["import engine.train, engine.serve, coalm.eval"]
    lines = ours + STACK if ours_first else STACK + ours
    # whatever `kernels` resolves to from the repo root (HF's distribution, when installed) lives in site-packages
    check = ("import importlib.util; s = importlib.util.find_spec('kernels'); "
             "assert s is None or '-packages' in s.origin, s.origin")
    r = _run("; ".join(lines + [check]))
    assert r.returncode == 0, r.stderr[-3000:]


def test_pip_check_reports_no_broken_requirement():
    r = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=300, check=False)
    data = _data_packages()
    broken = [line for line in r.stdout.splitlines()
              if line.strip() and line.split()[0].lower().replace("_", "-") not in data
              and not line.startswith("No broken requirements")]
    assert not broken, "\n".join(broken)
