"""The CoALM-IT format parsers (training-data parsers and the coalm prompt style's decoders) take model output,
which is adversarial: deep nesting, huge or odd values and non-text must be parse failures, never exceptions."""

import pytest

from coalm.data import formats as F
from coalm.eval.api_bank.coalm_style import apibank_call
from coalm.eval.multiwoz.coalm_style import multiwoz_turn_state
from coalm.eval.task import HandlerError, decode_la

HOSTILE = [
    "[" * 100_000,
    "{" * 100_000,
    "System: " + '{"a":' * 50_000,
    "Action: f(" + "(" * 10_000 + ")" * 10_000 + ")",
    "Action: f(x=" + "[" * 5_000 + "]" * 5_000 + ")",
    "Action: f(x=1e999999, y='\ud800')",
    '[{"name": "f", "arguments": {"x": ' + "9" * 5_000 + "}}]",
    "",
    "\x00\ufffd",
]


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_training_format_parsers_never_raise(text):
    assert F.parse_calls(text) is None or isinstance(F.parse_calls(text), list)
    assert F.parse_dst(text) is None or isinstance(F.parse_dst(text), dict)
    assert F.parse_action(text) is None or isinstance(F.parse_action(text), tuple)


@pytest.mark.parametrize("text", HOSTILE + [None, 5], ids=range(len(HOSTILE) + 2))
def test_coalm_style_decoders_fail_as_handler_errors(text):
    for decode in (decode_la, multiwoz_turn_state, apibank_call):
        try:
            decode(text)
        except HandlerError:
            pass
