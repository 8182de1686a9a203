"""BFCL V3 aggregation as the leaderboard computes it, and `evaluate`: per-item verdicts -> the report."""

from __future__ import annotations

from coalm.eval.base import EvalError, clip
from coalm.eval.bfcl.checker import _fail, score_item
from coalm.eval.bfcl.prompts import FULL_V3_SIZES, MULTI_TURN, MULTI_TURN_SIZES, SINGLE_TURN


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _weighted(acc: dict, weights: dict, cats):
    present = [c for c in cats if c in acc]
    if not present:
        return None
    return sum(acc[c] * weights[c] for c in present) / sum(weights[c] for c in present)


def aggregate(acc: dict[str, float], weights: dict[str, int] | None = None) -> dict:
    """Per-category accuracies -> the V3 leaderboard's section scores, each over the categories present (else None).

    Overall is the leaderboard's: the unweighted mean of Non-Live overall, Live overall and Multi-Turn overall
    (itself the mean of the four multi-turn categories); here over the sections present."""
    weights = weights or FULL_V3_SIZES
    simple = _mean([acc.get(c) for c in ("simple", "java", "javascript")])
    ast_parts = [simple] + [acc.get(c) for c in ("multiple", "parallel", "parallel_multiple")]
    live_ast = ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple")
    non_live_overall = _mean(ast_parts + [acc.get("irrelevance")])
    live_overall = _weighted(acc, weights, live_ast + ("live_irrelevance", "live_relevance"))
    multi_turn = _mean([acc.get(c) for c in MULTI_TURN])
    return {
        "overall": _mean([non_live_overall, live_overall, multi_turn]),
        "non_live_simple": simple,
        "non_live_ast": _mean(ast_parts),
        "non_live_overall": non_live_overall,
        "live_ast": _weighted(acc, weights, live_ast),
        "live_overall": live_overall,
        "multi_turn_overall": multi_turn,
        "irrelevance": _mean([acc.get("irrelevance"), acc.get("live_irrelevance")]),
        "relevance": acc.get("live_relevance"),
        "overall_single_turn": _mean([non_live_overall, live_overall]),
    }


def _verdict(ex: dict, result, where: str | None) -> dict:
    from coalm.eval.bfcl.multi_turn_check import score_multi_turn

    if ex["category"] in MULTI_TURN:
        if isinstance(result, list) and len(result) > len(ex["answer"]):
            raise EvalError(f"{where or ex['id']}: {len(result)} turns in the result, but item {ex['id']} has "
                            f"{len(ex['answer'])}")
        return score_multi_turn(ex, result)
    return score_item(ex, result)


def evaluate(examples, responses) -> dict:
    items, per_cat = [], {}
    sizes = {**FULL_V3_SIZES, **MULTI_TURN_SIZES}
    where = getattr(responses, "where", {})
    for ex in examples:
        stats = per_cat.setdefault(ex["category"], {"correct": 0, "total": 0, "missing_responses": 0})
        stats["total"] += 1
        if ex["id"] not in responses:
            stats["missing_responses"] += 1
            verdict = _fail("missing_response", "no model output for this item")
        else:
            try:
                verdict = _verdict(ex, responses[ex["id"]], where.get(ex["id"]))
            except EvalError:
                raise
            except Exception as e:  # noqa: BLE001 - one item's failure is that item's error, never the run's end
                verdict = _fail("checker_error", f"{type(e).__name__}: {clip(str(e))}")
        stats["correct"] += verdict["valid"]
        items.append({"id": ex["id"], "category": ex["category"],
                      "verdict": "correct" if verdict["valid"] else "incorrect",
                      "error": verdict["error"], "error_type": verdict["error_type"]})
    acc = {c: s["correct"] / s["total"] for c, s in per_cat.items()}
    categories = {c: {"accuracy": acc[c], **per_cat[c], "full_v3_size": sizes[c]}
                  for c in SINGLE_TURN + MULTI_TURN if c in per_cat}
    subsets = [f"{c} {s['total']}/{sizes[c]}" for c, s in categories.items() if s["total"] < sizes[c]]
    notes = [("scores are over the categories present; Live sections are weighted by full V3 category sizes; "
             "overall = mean of Non-Live, Live and Multi-Turn overall, as the V3 leaderboard")]
    if subsets:
        notes.append("subsampled categories (scored/full V3): " + ", ".join(subsets)
                     + "; numbers differ slightly from full-set ones")
    absent = [c for c in SINGLE_TURN + MULTI_TURN if c not in per_cat]
    if absent:
        notes.append("categories not evaluated (the leaderboard counts them as 0): " + ", ".join(absent))
    return {
        "summary": {
            "benchmark": "BFCL V3",
            "n_items": len(items),
            "correct": sum(s["correct"] for s in per_cat.values()),
            "missing_responses": sum(s["missing_responses"] for s in per_cat.values()),
            "scores": aggregate(acc),
            "categories": categories,
            "notes": notes,
        },
        "items": items,
    }
