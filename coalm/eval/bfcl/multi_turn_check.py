"""The BFCL V3 multi-turn checker, written from bfcl-eval 2025.6.8's documented rules (`multi_turn_checker`,
`multi_turn_runner`), with the calls run by `executor.Backends` (parsed, never `eval`ed).

- A result that is not a list of turns is `multi_turn:inference_error`; one with fewer turns than the ground truth
  (the model was forced to quit) is `multi_turn:force_terminated`.
- Each step is decoded to call strings; steps that do not decode, or decode to no call, are dropped.
- Turn by turn, the model's steps run on the model's instances and the turn's ground-truth calls on a second set;
  both sets live across turns. Then, for a turn whose ground truth is not empty:
  no model step left -> `multi_turn:empty_turn_model_response`;
  an instance whose public attributes differ from the ground truth's -> `multi_turn:instance_state_mismatch`;
  a ground-truth execution result missing from the model's results of this and all earlier turns (as a multiset,
  in any order) -> `multi_turn:execution_response_mismatch`.
  A turn whose ground truth is empty (a function or parameter is missing) is not checked; its calls still run, so
  the next turn's state check sees what they changed. The item fails at its first failing turn.
"""

from __future__ import annotations

from coalm.eval.base import brief, clip
from coalm.eval.bfcl.executor import Backends, decode_execute
from coalm.eval.bfcl.multi_turn import long_context


def _fail(error_type: str, error: str) -> dict:
    return {"valid": False, "error": clip(error, 1000), "error_type": error_type}


def _decoded_turns(result: list) -> list[list[list[str]]]:
    turns = []
    for turn in result:
        steps = []
        for text in turn:
            try:
                calls = decode_execute(text)
            except Exception:  # noqa: BLE001 - undecodable steps are chat, ignored as upstream
                calls = []
            if calls:
                steps.append(calls)
        turns.append(steps)
    return turns


def _state_mismatch(model: Backends, truth: Backends) -> str | None:
    for cls, gt in truth.instances.items():
        mine = model.instances[cls]
        diffs = []
        for attr, value in vars(gt).items():
            if attr.startswith("_"):
                continue
            if not hasattr(mine, attr) or getattr(mine, attr) != value:
                diffs.append(attr)
        if diffs:
            return f"{cls} state differs from the ground truth's in {', '.join(diffs)}"
    return None


def _missing(truth_results: list[str], model_results: list[str]) -> list[str]:
    pool = list(model_results)
    missing = []
    for r in truth_results:
        if r in pool:
            pool.remove(r)
        else:
            missing.append(r)
    return missing


def score_multi_turn(example: dict, result) -> dict:
    """-> {"valid", "error", "error_type"} for one multi-turn item and its saved result."""
    truth_turns = example["answer"]
    if not isinstance(result, list):
        return _fail("multi_turn:inference_error",
                     "Error during inference phase. Model did not output a list of model responses: " + brief(result))
    if len(result) != len(truth_turns):
        return _fail("multi_turn:force_terminated", f"the model was force-terminated: {len(result)} turns in its "
                                                    f"result, {len(truth_turns)} in the ground truth")
    lc = long_context(example)
    model = Backends(example["involved_classes"], example["initial_config"], lc)
    truth = Backends(example["involved_classes"], example["initial_config"], lc)
    model_results: list[str] = []
    for i, (steps, gt_calls) in enumerate(zip(_decoded_turns(result), truth_turns)):
        for calls in steps:
            model_results += model.execute(calls)
        gt_results = truth.execute(gt_calls)
        if not gt_calls:
            continue
        if not steps:
            return _fail("multi_turn:empty_turn_model_response", f"Model response list is empty for turn {i}")
        diff = _state_mismatch(model, truth)
        if diff:
            return _fail("multi_turn:instance_state_mismatch", f"turn {i}: {diff}")
        missing = _missing(gt_results, model_results)
        if missing:
            return _fail("multi_turn:execution_response_mismatch",
                         f"turn {i}: the model's execution results so far lack {len(missing)} of the ground truth's, "
                         f"e.g. {brief(missing[0])}")
    return {"valid": True, "error": None, "error_type": None}
