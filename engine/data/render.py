"""Chat rendering: an Alpaca row -> token ids and labels, loss only on the assistant's output and end-of-turn.

    messages    = [system: instruction, user: input]          (assistant: output is the target)
    prompt_ids  = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True), bos=False)
    target_ids  = tok.encode(output) + [tok.eot_id]
    input_ids   = prompt_ids + target_ids
    labels      = [-100] * len(prompt_ids) + target_ids        (aligned to input_ids; the trainer shifts)

`bos=False` because both templates carry their own start: the Llama 3 template text begins with
`<|begin_of_text|>`, and ChatML (SmolLM2) has no BOS. The tokenizer is the engine's (`engine.tokenizer`), used only
through `encode`, `decode`, `apply_chat_template` and `eot_id`.

Truncation to `max_len` never touches the target. The template is split into its fixed parts (the header before
the instruction, the text between instruction and input, the tail after the input, i.e. the assistant header) and
the two content parts; the instruction is cut from the left first, then the input, so the tokens of every template
marker stay intact. A row whose target plus fixed parts alone exceed `max_len` is dropped and counted (so is any
over-long row when the template does not insert contents verbatim, since it cannot then be cut safely).

Speed: `render_rows` renders the template once with placeholders and builds each prompt by concatenating the cached
parts around the row's contents; that is the template's own text whenever the placeholders (which carry leading and
trailing whitespace) come out verbatim, and otherwise it falls back to one template call per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .pack import IGNORE

# Placeholders with surrounding whitespace: a template that trims or rewrites content will not keep them verbatim,
# and then the per-row template rendering is used instead of the (faster) concatenation of the cached parts.
_S, _U = " \n\x00SYSTEM\x00 \n", " \n\x00USER\x00 \n"


def messages(row: dict) -> list[dict]:
    return [{"role": "system", "content": row["instruction"]}, {"role": "user", "content": row["input"]}]


@dataclass
class RenderStats:
    rendered: int = 0
    truncated: int = 0
    dropped: int = 0  # target (plus template markers) longer than max_len
    dropped_ids: list = field(default_factory=list)


def _template_parts(tok) -> tuple[str, str, str] | None:
    """(header, middle, tail) of the chat template around the system and user contents; None when the template
    does not insert the contents verbatim (then rows are never truncated: they are dropped and counted)."""
    text = tok.apply_chat_template(
        [{"role": "system", "content": _S}, {"role": "user", "content": _U}], add_generation_prompt=True
    )
    i, j = text.find(_S), text.find(_U)
    if i < 0 or j < i:
        return None
    return text[:i], text[i + len(_S) : j], text[j + len(_U) :]


def render_row(row: dict, tok, max_len: int | None = None, stats: RenderStats | None = None,
               _parts: tuple | None = None) -> tuple[list[int], list[int]] | None:
    """(input_ids, labels) for one row, or None when it cannot fit `max_len` without cutting the target."""
    target = tok.encode(row["output"], bos=False) + [tok.eot_id]
    if _parts:  # same text as the template renders (checked in _template_parts), without a Jinja call per row
        prompt_text = _parts[0] + row["instruction"] + _parts[1] + row["input"] + _parts[2]
    else:
        prompt_text = tok.apply_chat_template(messages(row), add_generation_prompt=True)
    prompt = tok.encode(prompt_text, bos=False)
    if max_len is not None and len(prompt) + len(target) > max_len:
        parts = _parts or _template_parts(tok)
        header, middle, tail = (tok.encode(p, bos=False) for p in parts) if parts else ([], [], [])
        budget = max_len - len(target) - len(header) - len(middle) - len(tail)
        if budget < 0 or not parts:
            if stats is not None:
                stats.dropped += 1
                stats.dropped_ids.append((row.get("meta") or {}).get("id"))
            return None
        sys_ids = tok.encode(row["instruction"], bos=False)
        usr_ids = tok.encode(row["input"], bos=False)
        usr_ids = usr_ids[max(0, len(usr_ids) - budget):] if budget else []
        budget -= len(usr_ids)
        sys_ids = sys_ids[max(0, len(sys_ids) - budget):] if budget else []
        prompt = header + sys_ids + middle + usr_ids + tail
        if stats is not None:
            stats.truncated += 1
    if stats is not None:
        stats.rendered += 1
    return prompt + target, [IGNORE] * len(prompt) + target


def render_rows(rows: list[dict], tok, max_len: int | None = None) -> tuple[list[tuple[list[int], list[int]]],
                                                                            RenderStats]:
    """Render every row; dropped rows are counted (and their meta ids listed) in the returned stats."""
    stats = RenderStats()
    parts = _template_parts(tok)
    out = []
    for r in rows:
        x = render_row(r, tok, max_len, stats, parts)
        if x is not None:
            out.append(x)
    return out, stats
