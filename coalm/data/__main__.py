"""`python -m coalm.data`: build, inspect and sample CoALM-IT data.

    python -m coalm.data build --sources snips,sgd,sample --out data/coalm_it.jsonl [--weights sgd=0.5] [--val-frac 0.02]
    python -m coalm.data stats data/coalm_it.jsonl [--tokenizer smollm2-135m] [--max-seq-len 1024]
    python -m coalm.data show sample --n 3
    python -m coalm.data sample --out engine/data/sample/train.jsonl [--seed 0]
    python -m coalm.data download
    python -m coalm.data download coalm-it         # uiuc-convai/CoALM-IT through the HF cache

FILE arguments accept "sample" and "sample-eval" for the embedded sample. `stats` reports one epoch of the
trainer's own micro-batches (`engine.data.StepBatches`, with engine.train's batch-size and length defaults). `build` always runs the contamination
check against the benchmark test sets under the data root and drops overlapping rows (`--no-decontaminate` skips
it, e.g. on a machine without the test sets). User errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections import Counter
from importlib.util import find_spec
from pathlib import Path

from coalm.paths import data_root
from engine.data import IGNORE, DataError, StepBatches, load, render_rows, save_rows
from engine.train_config import TrainConfig

from .builders import BUILDERS
from .contamination import ContaminationIndex
from .formats import row_format
from .mix import mix
from .sample import SAMPLE_EVAL_FILE, generate_sample, load_sample

SOURCES = (*BUILDERS, "sample")
DOWNLOADS = {
    "snips": "github.com/sonos/nlu-benchmark, folder 2017-06-custom-intent-engines/ (CC0)",
    "sgd": "github.com/google-research-datasets/dstc8-schema-guided-dialogue (CC BY-SA 4.0)",
    "apibank": "github.com/AlibabaResearch/DAMO-ConvAI, folder api-bank/ (Apache-2.0)",
    "multiwoz": "MultiWOZ 2.4: github.com/smartyfh/MultiWOZ2.4, data/MULTIWOZ2.4.zip (MIT)",
}


def _parse_weights(text: str | None) -> dict[str, float]:
    out = {}
    for part in filter(None, (text or "").split(",")):
        name, sep, val = part.partition("=")
        try:
            out[name.strip()] = float(val)
        except ValueError:
            raise DataError(f"--weights: {part!r} is not NAME=NUMBER") from None
        if not sep:
            raise DataError(f"--weights: {part!r} is not NAME=NUMBER")
    return out


def cmd_build(a) -> int:
    names = [s.strip() for s in a.sources.split(",") if s.strip()]
    bad = [s for s in names if s not in SOURCES]
    if bad or not names:
        raise DataError(f"--sources: unknown {bad or 'empty list'}; valid: {','.join(SOURCES)}")
    root = data_root(a.data_root)
    sources = {n: (load_sample("train") if n == "sample" else BUILDERS[n](root, seed=a.seed)) for n in names}
    if not a.no_decontaminate:
        index = ContaminationIndex.from_providers(root)
        for n in names:
            sources[n], dropped = index.filter(sources[n])
            if dropped:
                print(f"{n}: dropped {sum(dropped.values())} rows overlapping test sets {dropped}", file=sys.stderr)
    train, val, stats = mix(sources, _parse_weights(a.weights), val_frac=a.val_frac, seed=a.seed)
    out = Path(a.out)
    save_rows(train, out)
    msg = f"wrote {len(train)} rows to {out}"
    if val:
        vpath = out.with_name(out.stem + ".val" + out.suffix)
        save_rows(val, vpath)
        msg += f" and {len(val)} validation rows to {vpath}"
    print(json.dumps(stats))
    print(msg)
    return 0


def _load_tok(name: str):
    from engine.tokenizer import load_tokenizer

    return load_tokenizer(name)


def _read(a) -> list[dict]:
    report: dict = {}
    rows = load(a.file, skip_invalid=a.skip_invalid, report=report)
    if report.get("skipped"):
        print(f"skipped {report['skipped']} invalid rows: {report['reasons']}", file=sys.stderr)
    if not rows:
        raise DataError(f"{a.file}: no rows")
    return rows


def _pct(xs: list[int], q: float) -> int:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]


def cmd_stats(a) -> int:
    rows = _read(a)
    tok = _load_tok(a.tokenizer)
    batches = StepBatches.from_rows(rows, tok, a.max_seq_len, a.global_batch_size, a.micro_batch_size, seed=a.seed)
    lengths = [len(x) for x, _ in batches.rendered]
    sizes = [b.num_tokens for s in range(batches.steps_per_epoch) for b in batches.step(s)]
    out = {
        "rows": len(rows),
        "formats": dict(Counter(row_format(r) for r in rows)),
        "tokenizer": tok.name,
        "tokens": {f"p{int(q * 100)}": _pct(lengths, q) for q in (0.5, 0.9, 0.99, 1.0)},
        "truncated": batches.render_stats.truncated,
        "dropped_too_long": batches.render_stats.dropped,
        # one epoch as engine.train runs it (one process): each micro-batch is one packed, padding-free row
        "micro_batches": {
            "global_batch_size": a.global_batch_size, "micro_batch_size": a.micro_batch_size,
            "steps_per_epoch": batches.steps_per_epoch, "per_epoch": len(sizes),
            "tokens": {"min": min(sizes), "mean": round(sum(sizes) / len(sizes), 1), "max": max(sizes)},
            "target_tokens": sum(b.n_targets for s in range(batches.steps_per_epoch) for b in batches.step(s)),
        },
    }
    print(json.dumps(out, indent=1))
    return 0


def cmd_show(a) -> int:
    rows = _read(a)
    tok = _load_tok(a.tokenizer)
    for i, row in enumerate(rows[: a.n]):
        rendered, _ = render_rows([row], tok, max_len=a.max_seq_len)
        if not rendered:
            print(f"--- row {i}: dropped (target longer than --max-seq-len {a.max_seq_len})")
            continue
        ids, labels = rendered[0]
        k = next(j for j, y in enumerate(labels) if y != IGNORE)
        print(f"--- row {i} [{row_format(row)}] {len(ids)} tokens, {len(ids) - k} trained")
        print(tok.decode(ids[:k]) + "[[TRAIN>>" + tok.decode(ids[k:]) + "<<TRAIN]]")
    return 0


def cmd_sample(a) -> int:
    train, evals = generate_sample(seed=a.seed)
    out = Path(a.out)
    save_rows(train, out)
    epath = out.with_name(SAMPLE_EVAL_FILE) if out.name.endswith(".jsonl") else Path(str(out) + ".eval.jsonl")
    save_rows(evals, epath)
    print(f"wrote {len(train)} train rows to {out} and {len(evals)} eval rows to {epath}")
    return 0


COALM_IT = "uiuc-convai/CoALM-IT"  # the released training set (parquet, Alpaca columns)


def download_coalm_it() -> Path:
    """The CoALM-IT dataset snapshot from the HF cache, downloaded when missing (not when HF_HUB_OFFLINE is set)."""
    from engine.hub import HubError, download

    try:
        return Path(download(COALM_IT, repo_type="dataset", allow_patterns=["*.parquet", "*.json", "*.md"]))
    except HubError as e:
        raise DataError(str(e)) from None


def cmd_download(a) -> int:
    if a.name == "coalm-it":
        path = download_coalm_it()
        files = sorted(str(p.relative_to(path)) for p in path.rglob("*.parquet"))
        print(f"coalm-it: {path} ({len(files)} parquet files{': ' + ', '.join(files[:4]) if files else ''})")
        if files:
            print(f"train on it: python -m engine.train --data {path / files[0]}")
        return 0
    root = data_root(a.data_root)
    dest = root / "bfcl"
    spec = find_spec("bfcl_eval")
    if dest.is_dir() and any(dest.glob("BFCL_v3_*.json")):
        print(f"bfcl: present at {dest}")
    elif spec is None or not spec.submodule_search_locations:
        print("bfcl: not found; install it with `pip install --no-deps bfcl-eval==2025.6.8` and rerun")
    else:
        src = Path(spec.submodule_search_locations[0]) / "data"
        files = sorted(src.glob("BFCL_v3_*.json"))
        if not files:
            raise DataError(f"bfcl_eval at {src} has no BFCL_v3_*.json (V3 data ships in bfcl-eval==2025.6.8)")
        dest.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy2(f, dest / f.name)
        for sub in ("possible_answer", "multi_turn_func_doc"):
            if (src / sub).is_dir():
                shutil.copytree(src / sub, dest / sub, dirs_exist_ok=True)
        print(f"bfcl: copied {len(files)} files from {src} to {dest}")
    for name, where in DOWNLOADS.items():
        state = "present" if (root / name).is_dir() else "missing"
        print(f"{name}: {state} at {root / name}; source: {where}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m coalm.data", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build a training mixture from sources")
    b.add_argument("--sources", default="snips,sgd,sample", help=f"comma list of {','.join(SOURCES)}")
    b.add_argument("--out", required=True, help=".jsonl or .parquet")
    b.add_argument("--weights", help="NAME=W,... (W copies of each row; fractions subsample)")
    b.add_argument("--val-frac", type=float, default=0.0)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--data-root")
    b.add_argument("--no-decontaminate", action="store_true")
    train = TrainConfig()  # the trainer's defaults, so that stats and show describe what it would run
    for name, helptext in (("stats", "rows per format, token lengths, the trainer's micro-batches"),
                           ("show", "rendered rows")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("file", help=".jsonl, .parquet, sample or sample-eval")
        s.add_argument("--tokenizer", default="smollm2-135m", help="llama3, smollm2-135m, or a path")
        s.add_argument("--max-seq-len", type=int, default=train.max_seq_len)
        s.add_argument("--skip-invalid", action="store_true")
        if name == "show":
            s.add_argument("--n", type=int, default=3)
        else:
            s.add_argument("--global-batch-size", type=int, default=train.global_batch_size)
            s.add_argument("--micro-batch-size", type=int, default=train.micro_batch_size)
            s.add_argument("--seed", type=int, default=train.seed, help="seed of the data order")
    s = sub.add_parser("sample", help="write the embedded sample (train + eval)")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    d = sub.add_parser("download", help="fetch sources that have a download path; say where to get the rest")
    d.add_argument("name", nargs="?", choices=["coalm-it"],
                   help="coalm-it: the released CoALM-IT set from the Hugging Face Hub (uiuc-convai/CoALM-IT)")
    d.add_argument("--data-root")
    a = p.parse_args(argv)
    try:
        return {"build": cmd_build, "stats": cmd_stats, "show": cmd_show, "sample": cmd_sample,
                "download": cmd_download}[a.cmd](a)
    except (DataError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
