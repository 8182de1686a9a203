"""Text-overlap metrics shared by the API-Bank and MultiWOZ evaluators.

- `rouge_f(hyp, ref, metric)`: F of the PyPI `rouge` package (1.0.1, the metric the official API-Bank scorer uses);
  the package raises on degenerate strings (for example "." splits into no sentences): those score 0.
- `bleu4_method3(ref, hyp)`: sentence BLEU-4 with uniform weights and the "NIST geometric sequence" smoothing that
  NLTK calls `SmoothingFunction().method3`: the k-th n-gram order with no match gets precision 1 / (2**k * count),
  where count is the number of hypothesis n-grams (at least 1). No unigram match gives 0. Brevity penalty
  exp(1 - r/c) for c <= r (c: hypothesis length, r: reference length), 0 for an empty hypothesis.
- `llamafactory_scores(pred, label)`: what LLaMA-Factory's `compute_metrics` reports for one pair, scaled to 0-100:
  Rouge-1/2/L F on word tokens and BLEU-4 (method 3) on characters. LLaMA-Factory tokenizes with jieba and scores
  with `rouge_chinese`; for English text jieba yields runs of letters/digits, single punctuation marks and spaces,
  so `word_tokens` reproduces that split without jieba, and the `rouge` package stands in for `rouge_chinese`.
- `corpus_bleu4(refs, hyps)`: plain corpus BLEU-4 (clipped counts summed over the corpus, no smoothing) on
  whitespace tokens of lowercased text, for MultiWOZ responses.
"""

from __future__ import annotations

import math
import re
from collections import Counter

from rouge import Rouge

_ROUGE = Rouge()
_WORD_RE = re.compile(r"[A-Za-z0-9_]+|[^\sA-Za-z0-9_]")


def rouge_f(hyp: str, ref: str, metric: str = "rouge-l") -> float:
    """F score of `metric` ("rouge-1", "rouge-2" or "rouge-l") from the `rouge` package; 0 where it cannot score."""
    if not hyp.strip() or not ref.strip():
        return 0.0
    try:
        return float(_ROUGE.get_scores(hyp, ref)[0][metric]["f"])
    except (ValueError, ZeroDivisionError, RecursionError):
        # rouge 1.0.1 raises "Hypothesis is empty" when every sentence is "." or similar
        return 0.0


def word_tokens(text: str) -> list[str]:
    return _WORD_RE.findall(text)


def _ngrams(tokens, n):
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu4_method3(ref, hyp) -> float:
    """Sentence BLEU-4 of token sequence `hyp` against one reference `ref`, NLTK method-3 smoothing."""
    ref, hyp = list(ref), list(hyp)
    c, r = len(hyp), len(ref)
    if c == 0:
        return 0.0
    log_p = 0.0
    k = 0
    for n in range(1, 5):
        h, g = _ngrams(hyp, n), _ngrams(ref, n)
        matches = sum(min(cnt, g[ng]) for ng, cnt in h.items())
        count = max(1, sum(h.values()))
        if matches == 0:
            if n == 1:
                return 0.0
            k += 1
            p = 1.0 / (2**k * count)
        else:
            p = matches / count
        log_p += 0.25 * math.log(p)
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return bp * math.exp(log_p)


def llamafactory_scores(pred: str, label: str) -> dict:
    """Rouge-1/2/L (word tokens) and BLEU-4 (characters) of one prediction, in percent."""
    hyp, ref = " ".join(word_tokens(pred)), " ".join(word_tokens(label))
    out = {m: 100.0 * rouge_f(hyp, ref, m) for m in ("rouge-1", "rouge-2", "rouge-l")}
    out["bleu-4"] = 100.0 * bleu4_method3(label, pred)
    return out


def corpus_bleu4(refs: list[str], hyps: list[str]) -> float:
    """Corpus BLEU-4 in percent, one reference per hypothesis, lowercased whitespace tokens."""
    matches, totals = [0] * 4, [0] * 4
    c = r = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        rt, ht = ref.lower().split(), hyp.lower().split()
        c, r = c + len(ht), r + len(rt)
        for n in range(1, 5):
            h, g = _ngrams(ht, n), _ngrams(rt, n)
            matches[n - 1] += sum(min(cnt, g[ng]) for ng, cnt in h.items())
            totals[n - 1] += sum(h.values())
    if c == 0 or min(matches) == 0:
        return 0.0
    log_p = sum(0.25 * math.log(m / t) for m, t in zip(matches, totals))
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return 100.0 * bp * math.exp(log_p)
