"""The CoALM suite: BFCL, API-Bank and MultiWOZ in one command and one scorecard, base vs adapter.

    python -m coalm.eval --suite coalm --model smollm2-135m --adapter runs/agent/train/adapter --prompt-style coalm
    python -m coalm.eval --suite coalm --model smollm2-135m --limit-per-bench 10 --out reports/suite-smoke

Parts (each through its benchmark module, scored by its own checker):
- BFCL V3 non-live AST (simple, multiple, parallel, parallel_multiple; "non_live_ast" is their mean), irrelevance,
  live_simple: accuracy, the first `--bfcl-limit` items of each category;
- API-Bank level 1: call accuracy ("rate") on the first `--apibank-limit` call samples, Rouge-L on the first
  `--apibank-limit` response samples;
- MultiWOZ DST: joint goal accuracy (exact state match, TRADE's rule; the fuzzy mwzeval-style number is kept in
  scorecard.json) on every turn of the first `--multiwoz-dialogues` test dialogues of the shared quick subset
  (`quick_subset200_ids.txt`; all 900 for more than 200).
`--limit-per-bench N` sets all three limits. With `--adapter` the base model is scored first, then the adapter.
`--constrained on` (with `--prompt-style coalm`) adds a constrained column beside each free one: the same items
decoded under their grammars (BFCL calls, API-Bank calls, MultiWOZ DST; engine.structured), the same checkers.

Outputs in `--out`: scorecard.json, scorecard.md (a table), scorecard.png (bars, when matplotlib is installed) and
cache/<model>/<style>/<part>-max<tokens>.jsonl, one generated text per item with a fingerprint of its prompt, appended
as it is made: a run that is stopped and started again with the same flags generates only the items not yet cached,
and an item whose prompt has changed since (another prompt handler, other data) is generated again. An adapter
trained on another base model is refused before anything is generated.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from coalm.eval.base import EvalError, write_report
from coalm.eval.options import ModelOptions, RunOptions, option_choices
from coalm.eval.pipeline import as_responses
from coalm.eval.registry import get_task
from coalm.eval.runner import ItemCache, generate
from coalm.eval.task import STYLES
from coalm.paths import data_root

BFCL_CATEGORIES = ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance", "live_simple")
NON_LIVE_AST = ("simple", "multiple", "parallel", "parallel_multiple")
# Output budgets per part, in tokens: calls are short JSON/Python lists, a DST state a short object.
MAX_NEW_TOKENS = {"bfcl": 128, "api-bank:api_call": 96, "api-bank:response": 64, "multiwoz": 96}
COLUMNS = [("bfcl.non_live_ast", "BFCL non-live AST"), ("bfcl.irrelevance", "BFCL irrelevance"),
           ("bfcl.live_simple", "BFCL live_simple"), ("api_bank.call_accuracy", "API-Bank L1 calls"),
           ("api_bank.rouge_l", "API-Bank L1 Rouge-L"), ("multiwoz.jga", "MultiWOZ JGA")]


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m coalm.eval --suite coalm", description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", required=True, choices=["coalm"])
    p.add_argument("--model", required=True, help="preset name, HF checkpoint dir or .gguf file")
    p.add_argument("--adapter", default=None, help="LoRA adapter dir: scored after the base model")
    p.add_argument("--prompt-style", default="official", choices=list(STYLES))
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", default=None, help="output folder (default: reports/suite-<style>-<timestamp>)")
    p.add_argument("--limit-per-bench", type=int, default=None, help="sets the three limits below")
    p.add_argument("--bfcl-limit", type=int, default=50, help="items per BFCL category")
    p.add_argument("--apibank-limit", type=int, default=60, help="API-Bank level-1 call samples, and response samples")
    p.add_argument("--multiwoz-dialogues", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=RunOptions.batch_size)
    p.add_argument("--dtype", default=ModelOptions.dtype, choices=option_choices(ModelOptions, "dtype"),
                   help="base and adapter dtype; auto: bf16 on GPUs and AVX512-BF16/AMX CPUs, else fp32")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"cap every part's output budget (defaults {MAX_NEW_TOKENS}); a cut answer counts as given")
    p.add_argument("--skip-base", action="store_true",
                   help="with --adapter: score only the adapter (e.g. the base model runs in another process on the "
                        "same --out; a later run without this flag assembles both from the cache)")
    p.add_argument("--constrained", default="off", choices=["off", "on", "only"],
                   help="on: every model is also scored with grammar-constrained decoding (engine.structured), a "
                        "'<model> constrained' column beside the free one (needs --prompt-style coalm); only: the "
                        "constrained columns alone (e.g. in a process beside one scoring the free ones on the same --out)")
    a = p.parse_args(argv)
    if a.constrained != "off" and a.prompt_style != "coalm":
        raise EvalError("--constrained on needs --prompt-style coalm (the constrained answers are CoALM-IT formats)")
    if a.skip_base and not a.adapter:
        raise EvalError("--skip-base needs --adapter")
    if a.limit_per_bench is not None:
        a.bfcl_limit = a.apibank_limit = a.multiwoz_dialogues = a.limit_per_bench
    for name in ("bfcl_limit", "apibank_limit", "multiwoz_dialogues", "batch_size", "max_new_tokens"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            raise EvalError(f"--{name.replace('_', '-')} must be >= 1")
    return a


def check_adapter(model: str, adapter: str) -> None:
    """Refuse an adapter whose adapter_config.json names another base model."""
    cfg_path = Path(adapter) / "adapter_config.json"
    if not cfg_path.is_file():
        raise EvalError(f"--adapter {adapter}: no adapter_config.json there")
    try:
        base = json.loads(cfg_path.read_text()).get("base_model_name_or_path")
    except json.JSONDecodeError as e:
        raise EvalError(f"{cfg_path}: not JSON ({e.msg})") from None
    from engine.hub import portable_name

    if base and portable_name(base) != portable_name(model):
        raise EvalError(f"--adapter {adapter} was trained on {base!r}, not on --model {model!r} "
                        f"({portable_name(model)}); pass --model {base}")


# ---------------------------------------------------------------- the three parts

def load_parts(a) -> dict[str, list[dict]]:
    """{part: examples}; a part is one benchmark, or one kind of API-Bank sample (they differ in output budget)."""
    root, style = data_root(a.data_root), a.prompt_style
    bfcl, api, mwz = get_task("bfcl"), get_task("api-bank"), get_task("multiwoz")
    bfcl_exs = bfcl.load(root, bfcl.Options(category=",".join(BFCL_CATEGORIES), per_category_limit=a.bfcl_limit),
                         style)
    api_exs = api.load(root, api.Options(apibank_levels="1", apibank_kinds="api_call,response"), style)
    # the first N dialogues of the shared quick subset (200 test dialogues; loading all 900 costs half a minute)
    mwz_all = mwz.load(root, mwz.Options(multiwoz_task="dst", multiwoz_file="mwz21_test_shared900.json",
                                         multiwoz_subset="quick" if a.multiwoz_dialogues <= 200 else "all"), style)
    keep = list(dict.fromkeys(ex["dialogue_id"] for ex in mwz_all))[: a.multiwoz_dialogues]
    parts = {
        "bfcl": bfcl_exs,
        "api-bank:api_call": [ex for ex in api_exs if ex["kind"] == "api_call"][: a.apibank_limit],
        "api-bank:response": [ex for ex in api_exs if ex["kind"] == "response"][: a.apibank_limit],
        "multiwoz": [ex for ex in mwz_all if ex["dialogue_id"] in set(keep)],
    }
    for name, exs in parts.items():
        off = [ex["id"] for ex in exs if ex.get("style", "official") != a.prompt_style]
        if off:
            raise EvalError(f"{name}: the benchmark module does not build --prompt-style {a.prompt_style} prompts "
                            f"(e.g. item {off[0]})")
    return parts


def _cache_path(out: Path, model_tag: str, style: str, part: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_tag)
    return out / "cache" / safe / style / (part.replace(":", "-") + ".jsonl")


def generate_cached(backend_factory, parts, out: Path, model_tag: str, style: str, batch_size: int,
                    cap: int | None = None, constrained: bool = False) -> dict:
    """{part: {id: output}} through the runner (coalm.eval.runner): cached outputs are reused, the rest generated
    (longest prompts first, similar lengths batched together) and appended to the part's cache after every batch.
    `constrained`: each item that has a constrained form (`Task.constraint`) decodes under its grammar."""
    outputs_by_part, backend = {}, None
    for part, exs in parts.items():
        budget = min(MAX_NEW_TOKENS[part], cap or MAX_NEW_TOKENS[part])
        cache = ItemCache(_cache_path(out, model_tag, style, f"{part}-max{budget}"))  # another budget: other outputs
        task = get_task(part.split(":")[0])
        if constrained:
            exs = [dict(ex, constraint=task.constraint(ex)) for ex in exs]

        class _Lazy:  # the model is loaded only if some item of some part is not cached
            def chat(self, conversations, max_new_tokens, constraints=None):
                nonlocal backend
                backend = backend or backend_factory()
                if constraints is None:
                    return backend.chat(conversations, max_new_tokens)
                return backend.chat(conversations, max_new_tokens, constraints=constraints)

        outcome = generate(task, exs, _Lazy(), max_new_tokens=budget, chunk=batch_size, cache=cache,
                           longest_first=True, desc=f"{model_tag} {style} {part}")
        if outcome.errors:
            raise EvalError(f"{part}: {len(outcome.errors)} items failed to generate, e.g. "
                            f"{next(iter(outcome.errors.values()))}")
        outputs_by_part[part] = outcome.responses
    return outputs_by_part


def score(parts, texts_by_part) -> dict:
    """The scorecard's numbers for one model, from each benchmark's own evaluate()."""
    out = {}
    exs = parts["bfcl"]
    bfcl = get_task("bfcl")
    rep = bfcl.score(exs, as_responses(bfcl, exs, texts_by_part["bfcl"]))
    acc = {c: v["accuracy"] for c, v in rep["summary"]["categories"].items()}
    out["bfcl"] = {**acc, "non_live_ast": sum(acc[c] for c in NON_LIVE_AST) / len(NON_LIVE_AST),
                   "n": {c: v["total"] for c, v in rep["summary"]["categories"].items()}}
    api = get_task("api-bank")
    exs = parts["api-bank:api_call"] + parts["api-bank:response"]
    texts = {ex["id"]: texts_by_part[f"api-bank:{ex['kind']}"][ex["id"]] for ex in exs}
    lvl = api.score(exs, as_responses(api, exs, texts))["summary"]["levels"]["level-1"]
    out["api_bank"] = {"call_accuracy": lvl["rate"], "rouge_l": lvl["rouge_l"], "n_calls": lvl["api_calls"],
                       "n_responses": lvl["response_samples"]}
    mwz = get_task("multiwoz")
    exs = parts["multiwoz"]
    s = mwz.score(exs, as_responses(mwz, exs, texts_by_part["multiwoz"]))["summary"]
    # JGA as TRADE and the CoALM paper count it: the exact (domain, slot, value) set of the turn
    out["multiwoz"] = {"jga": s.get("jga_strict", s.get("jga")), "jga_fuzzy": s.get("jga_fuzzy"), "turns": s["turns"],
                       "dialogues": s["dialogues"], "data_version": s["data_version"]}
    return out


# ---------------------------------------------------------------- the scorecard

def _get(scores: dict, key: str):
    bench, metric = key.split(".")
    return scores[bench][metric]


def markdown(card: dict) -> str:
    models = list(card["models"])
    head = "| metric | " + " | ".join(models) + " |\n|---|" + "---:|" * len(models)
    rows = [f"| {label} | " + " | ".join(f"{100 * _get(card['models'][m], key):.1f}" for m in models) + " |"
            for key, label in COLUMNS]
    m0 = card["models"][models[0]]
    note = (f"\nprompt style: {card['prompt_style']}; dtype {card.get('dtype', 'float32')}; "
            f"BFCL items per category: {m0['bfcl']['n']}; API-Bank level-1 "
            f"{m0['api_bank']['n_calls']} call / {m0['api_bank']['n_responses']} response samples; MultiWOZ "
            f"{m0['multiwoz']['dialogues']} dialogues ({m0['multiwoz']['turns']} turns, data "
            f"{m0['multiwoz']['data_version']}). Numbers are percentages (Rouge-L x 100).")
    return "\n".join([head, *rows]) + "\n" + note + "\n"


def plot(card: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no scorecard.png; pip install matplotlib)", file=sys.stderr)
        return False
    models = list(card["models"])
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        vals = [100 * _get(card["models"][m], key) for key, _ in COLUMNS]
        ax.bar([j + i * width for j in range(len(COLUMNS))], vals, width, label=m)
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(COLUMNS))], [c for _, c in COLUMNS],
                  rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("%")
    ax.set_title(f"CoALM suite, prompt style {card['prompt_style']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def adapter_tag(adapter) -> str:
    """The adapter's path and a fingerprint of its files: outputs cached for an adapter are never reused for another
    one trained later into the same folder."""
    h = hashlib.sha256()
    for f in sorted(Path(adapter).glob("adapter_*")):
        h.update(f.name.encode() + f.read_bytes())
    return f"{Path(adapter).resolve()}#{h.hexdigest()[:12]}"


def run(a) -> tuple[dict, Path]:
    if a.adapter:
        check_adapter(a.model, a.adapter)
    out = Path(a.out or f"reports/suite-{a.prompt_style}-{time.strftime('%Y%m%d-%H%M%S')}")
    parts = load_parts(a)
    from coalm.eval.backends import LocalBackend
    from engine.loader import resolve_dtype

    # outputs depend on the dtype: it names the cache, so a bf16 run never reuses fp32 texts (or the reverse)
    dtype = str(resolve_dtype(a.dtype)).removeprefix("torch.")
    runs = ([] if a.skip_base else [("base", None)]) + ([("adapter", a.adapter)] if a.adapter else [])
    card = {"suite": "coalm", "prompt_style": a.prompt_style, "model": a.model, "adapter": a.adapter, "dtype": dtype,
            "max_new_tokens": {p: min(n, a.max_new_tokens or n) for p, n in MAX_NEW_TOKENS.items()},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "models": {}, "seconds": {}}
    modes = {"off": [False], "on": [False, True], "only": [True]}[a.constrained]
    for (label, adapter), constrained in [(r, c) for r in runs for c in modes]:
        tag = (a.model if adapter is None else f"{a.model}+{adapter_tag(adapter)}") + f"@{dtype}"
        if constrained:  # constrained outputs have their own cache and column
            tag, label = tag + "+constrained", label + " constrained"
        t0 = time.time()
        texts = generate_cached(lambda ad=adapter: LocalBackend(a.model, adapter=ad, batch_size=a.batch_size,
                                                                         dtype=a.dtype),
                                parts, out, tag, a.prompt_style, a.batch_size, a.max_new_tokens, constrained)
        card["seconds"][label] = round(time.time() - t0, 1)
        card["models"][label] = score(parts, texts)
    write_report(card, out / "scorecard.json")
    (out / "scorecard.md").write_text(markdown(card))
    plot(card, out / "scorecard.png")
    return card, out


def main(argv=None) -> int:
    try:
        a = parse_args(sys.argv[1:] if argv is None else argv)
        card, out = run(a)
    except (EvalError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(card))
    print(f"scorecard: {out / 'scorecard.json'}")
    return 0
