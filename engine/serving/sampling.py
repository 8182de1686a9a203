"""Per-request sampling: the parameters (validated and normalised once, where a request enters) and the sampler.

The sampler takes one sequence's logits and its parameters, so a request's tokens never depend on the others in
its batch, and a per-sequence logits mask (a grammar, say) can be applied to `logits` before the call. It works in
float64 log space: a temperature just above `GREEDY_BELOW` scales float32 logits (|x| < 3.4e38) to at most 3.4e43,
still finite in float64, and the softmax subtracts the maximum first, so no probability is inf or NaN. Logits that
are NaN or +inf (a broken forward) raise `SamplingError` for that sequence alone; -inf (a masked token) is fine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

GREEDY_BELOW = 1e-5  # temperatures below this are greedy: nothing but the top token keeps measurable probability
SEED_RANGE = (-(2**63), 2**64)  # what torch.Generator.manual_seed accepts


class RequestError(ValueError):
    """A request the engine cannot serve as asked (bad parameters, too long, larger than the KV cache budget).
    The HTTP layer answers it with 400; any other exception of a sequence is a 500."""


class SamplingError(RuntimeError):
    """The logits of one sequence cannot be sampled (NaN or +inf): that sequence fails, the batch carries on."""


@dataclass
class Params:
    """One request's generation settings. Invalid values raise RequestError here, before the request is queued."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    def __post_init__(self):
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise RequestError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        t, p = _number("temperature", self.temperature), _number("top_p", self.top_p)
        if not (math.isfinite(t) and t >= 0):
            raise RequestError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not (math.isfinite(p) and 0 <= p <= 1):
            raise RequestError(f"top_p must be in [0, 1], got {self.top_p!r}")
        self.temperature = 0.0 if t < GREEDY_BELOW else t
        self.top_p = p  # 0 and subnormal values keep the top token (see sample)
        s = self.seed
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or not SEED_RANGE[0] <= s < SEED_RANGE[1]):
            raise RequestError(f"seed must be an integer in [-2**63, 2**64), got {s!r}")
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise RequestError("stop must be a list of non-empty strings")
        self.stop = list(self.stop)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def _number(name, x) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise RequestError(f"{name} must be a number, got {x!r}")
    return float(x)


def new_generator(params: Params, device) -> torch.Generator | None:
    """The request's own random stream (seeded), or None for the global one."""
    if params.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(params.seed % 2**64)


def bad_rows(logits: torch.Tensor) -> list[bool]:
    """Rows of (B, V) logits that hold NaN or +inf: one check for the batch, one device sync."""
    return (logits.isnan() | logits.isposinf()).any(-1).tolist()


def sample(logits: torch.Tensor, params: Params, generator: torch.Generator | None = None) -> int:
    """One token id from one sequence's logits (V,): argmax when greedy, else temperature + top-p sampling."""
    x = logits.detach().reshape(-1).double()
    top = float(x.max())
    if math.isnan(top) or top == math.inf or bool(x.isnan().any()):
        raise SamplingError("the model's logits are not finite (NaN or +inf)")
    if top == -math.inf:
        raise SamplingError("every token is masked out")
    if params.greedy:
        return int(x.argmax())
    logp = torch.log_softmax(x / params.temperature, dim=-1)
    if params.top_p < 1.0:
        logp, order = logp.sort(descending=True)
        p = logp.exp()
        keep = (p.cumsum(0) - p) < params.top_p  # the smallest prefix whose mass reaches top_p
        keep[0] = True  # the top token always stays, whatever top_p is (0 or subnormal included)
        choice = int(torch.multinomial(p * keep, 1, generator=generator))
        return int(order[choice])
    return int(torch.multinomial(logp.exp(), 1, generator=generator))
