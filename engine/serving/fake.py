"""A scripted stand-in for the model, for tests of the API surface (tool-call round trips) that a 135M model cannot
be relied on to produce: `python -m engine.serve --fake-model script.json`.

script.json: {"rules": [{"when": "text in the rendered prompt", "reply": "model output"}, ...]}. The first rule
whose `when` occurs in the prompt (a rule without `when` matches anything) gives the reply, which is sent word by
word through the same events as the real scheduler, so streaming, stop strings, max_tokens and tool-call parsing
are all exercised. Stop tokens do not exist here: the reply ends the answer. A rule with `"error": "message"` instead
of a reply fails its sequence after the reply's words (if any) as the real scheduler fails one bad sequence, so the
server's handling of a per-request failure is testable.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from .scheduler import Sequence

log = logging.getLogger("engine.serve")


class FakeScheduler:
    def __init__(self, script: str | Path):
        try:
            rules = json.loads(Path(script).read_text())["rules"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"--fake-model {script}: expected JSON {{\"rules\": [{{\"when\", \"reply\"}}]}} ({e})") from None
        if not isinstance(rules, list) or not all(isinstance(r, dict) and isinstance(r.get("reply", ""), str) and
                                                  ("reply" in r or isinstance(r.get("error"), str)) for r in rules):
            raise ValueError(f"--fake-model {script}: every rule needs a string 'reply' (or 'error')")
        self.rules = rules

    def start(self):
        return self

    def shutdown(self):
        pass

    def stats(self) -> dict:
        return {"running": 0, "waiting": 0, "slots": 0, "decode_steps": 0}

    def cancel(self, seq: Sequence):
        seq.cancelled = True

    def submit(self, seq: Sequence):
        log.info("fake model prompt: %s", json.dumps(seq.prompt_text, ensure_ascii=False))  # tests read it
        rule = next((r for r in self.rules if r.get("when", "") in seq.prompt_text), {})
        pieces = re.findall(r"\S+\s*|\s+", rule.get("reply", ""))
        text, p = "", seq.params
        for n, piece in enumerate(pieces, 1):
            text += piece
            cut = min((text.find(s) for s in p.stop if s in text), default=-1)
            if cut >= 0:
                seq.emit(text[:cut][seq.sent:], "stop")
                return
            if n >= p.max_tokens:
                seq.emit(text[seq.sent:], "length")
                return
            seq.emit(text[seq.sent:])
            seq.sent = len(text)
        if "error" in rule:
            seq.emit(rule["error"], "error")
            return
        seq.emit("", "stop")
