"""MultiWOZ in the CoALM style: the DST format (domains with their slots; the conversation so far as input); each
turn's answer is the state of one domain, and a dialogue's state at turn t merges the answers of turns <= t (a later
answer for a domain replaces an earlier one), since the format names one domain per answer."""

from __future__ import annotations

from coalm.data import formats as F
from coalm.eval.task import HandlerError


def multiwoz_messages(log: list[dict], t: int, ontology: dict, history_turns: int = 4) -> list[dict]:
    """DST format for user turn t: the last `history_turns` exchanges up to it as `User:`/`System:` lines."""
    lines = [("User: " if i % 2 == 0 else "System: ") + turn["text"] for i, turn in enumerate(log[: 2 * t + 1])]
    return [{"role": "system", "content": F.dst_instruction(ontology)},
            {"role": "user", "content": "\n".join(lines[-(2 * history_turns - 1):])}]


def multiwoz_turn_state(text: str) -> dict:
    """{domain: {slot: value}} from one DST answer."""
    if not isinstance(text, str):
        raise HandlerError(f"output is a {type(text).__name__}, not text")
    parsed = F.parse_dst(text.strip().splitlines()[0] if text.strip() else "")
    if parsed is None:
        raise HandlerError('not a DST answer System: {"domain": ..., "slot_values": {...}}')
    return {parsed["domain"]: {k: v for k, v in parsed["slot_values"].items() if not isinstance(v, (dict, list))}}


def multiwoz_responses(examples: list[dict], texts: list[str]) -> dict:
    """MultiWOZ DST responses {id: {"response", "state", "raw", "parse_error"}}; `examples` in turn order per
    dialogue (as loaded), so each turn's state merges the answers of the dialogue's earlier turns."""
    out, states = {}, {}
    for ex, text in zip(examples, texts):
        try:
            turn, err = multiwoz_turn_state(text), False
        except HandlerError:
            turn, err = None, True
        state = {**states.get(ex["dialogue_id"], {}), **(turn or {})}
        states[ex["dialogue_id"]] = state
        out[ex["id"]] = {"response": "", "state": state, "raw": text, "parse_error": err}
    return out
