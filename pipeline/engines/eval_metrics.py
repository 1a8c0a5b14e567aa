"""Offline answer metrics: does the adapter talk like the data, without a judge?

Pure functions over lists of strings (and token counts). Each returns a number
in [0, 1] unless it says otherwise; docs/pipeline.md says how to read them.

Words are lowercase runs of letters and digits (an apostrophe inside a word
keeps it whole: "don't" is one word), so punctuation and case never make two
n-grams differ.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from statistics import median

from rapidfuzz import fuzz, process
from rapidfuzz.utils import default_process

_WORD = re.compile(r"\w+(?:['’]\w+)*")

MEMORIZED_AT = 90.0  # the dedupe contract's score: what dedupe would call the same sample

# An "I don't know" answer, in the reference or in the model's reply. Small on
# purpose: a persona's sarcasm ("who knows?") must not count as a refusal, so
# only phrases that say the answer is unknown or absent are here.
REFUSAL_PATTERNS = (
    r"\bi (?:really |honestly |simply )?(?:do not|don'?t|can ?not|can'?t) (?:know|say|tell)\b",
    r"\bi have no (?:idea|way of knowing|information)\b",
    r"\bno one knows\b",
    r"\bnot (?:in|mentioned in|stated in|covered (?:in|by)|part of) the (?:document|text|context|source|notes)s?\b",
    r"\b(?:the )?(?:document|text|context|source)s? (?:does not|doesn'?t|do not|don'?t) (?:say|mention|cover|tell)\b",
)
_REFUSAL = re.compile("|".join(REFUSAL_PATTERNS), re.IGNORECASE)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("’", "'"))


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(answers: Iterable[str], n: int) -> float:
    """Unique word n-grams / all word n-grams, pooled over every answer.

    1.0: no n-gram repeats anywhere; low: the model says the same few things to
    every prompt. 0.0 when the answers hold no n-gram at all.
    """
    grams = [g for a in answers for g in ngrams(words(a), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def loops(answer: str, n: int = 4) -> bool:
    """Whether some word n-gram occurs twice inside this one answer."""
    counts = Counter(ngrams(words(answer), n))
    return any(c > 1 for c in counts.values())


def repeated_ngram_rate(answers: Sequence[str], n: int = 4) -> float:
    """Share of answers that repeat a word n-gram of their own: the model looping."""
    return sum(loops(a, n) for a in answers) / len(answers) if answers else 0.0


def median_words(texts: Iterable[str]) -> float:
    """Median answer length in words (0 for no texts); compare with the training answers'."""
    lengths = [len(words(t)) for t in texts]
    return float(median(lengths)) if lengths else 0.0


def eos_rate(generated_tokens: Sequence[int], max_new_tokens: int) -> float:
    """Share of answers that ended by themselves.

    ``generated_tokens`` counts each answer's tokens before its EOS token (the
    EOS itself excluded), so an answer cut off by the limit counts exactly
    ``max_new_tokens`` and one that stopped counts fewer. Low: the model never
    learnt to stop, and a chat would run on.
    """
    if not generated_tokens:
        return 0.0
    return sum(1 for n in generated_tokens if n < max_new_tokens) / len(generated_tokens)


def memorization_rate(answers: Sequence[str], train_answers: Sequence[str], threshold: float = MEMORIZED_AT) -> float:
    """Share of answers that nearly copy some training answer.

    Scored as dedupe scores (``fuzz.ratio`` of ``default_process``ed texts,
    >= ``threshold``). Some copying is what fine-tuning on a persona does; most
    answers copied means the adapter recites instead of answering. An empty
    answer never counts as a copy.
    """
    if not answers:
        return 0.0
    choices = [t for t in map(default_process, train_answers) if t]
    copied = 0
    for answer in map(default_process, answers):
        if answer and choices and process.extractOne(answer, choices, scorer=fuzz.ratio, processor=None,
                                                     score_cutoff=threshold) is not None:
            copied += 1
    return copied / len(answers)


def is_refusal(text: str) -> bool:
    """Whether ``text`` says it does not know (one of ``REFUSAL_PATTERNS``)."""
    return bool(_REFUSAL.search(text.replace("’", "'")))


def refusal_rates(references: Sequence[str], answers: Sequence[str]) -> dict[str, float | int] | None:
    """How the model handles questions the data says it cannot answer.

    A pair is unanswerable when its reference answer is a refusal. Returns
    ``refusal_rate`` (share of unanswerable prompts the model refused: high is
    good), ``false_refusal_rate`` (share of answerable prompts it refused: low
    is good) and how many of each there were; None when no reference is a
    refusal, since then there is nothing to measure.
    """
    unanswerable = [is_refusal(a) for r, a in zip(references, answers) if is_refusal(r)]
    if not unanswerable:
        return None
    answerable = [is_refusal(a) for r, a in zip(references, answers) if not is_refusal(r)]
    return {
        "refusal_rate": sum(unanswerable) / len(unanswerable),
        "false_refusal_rate": sum(answerable) / len(answerable) if answerable else 0.0,
        "unanswerable": len(unanswerable),
        "answerable": len(answerable),
    }


def answer_metrics(answers: Sequence[str], generated_tokens: Sequence[int], max_new_tokens: int,
                   train_answers: Sequence[str], references: Sequence[str | None]) -> dict[str, float | int]:
    """Every offline metric of one model's answers, rounded for reports/eval.json.

    ``references[i]`` is the val answer to prompt i, or None for a prompt of
    ``eval.prompts`` (no reference: left out of the refusal rates).
    """
    out: dict[str, float | int] = {
        "distinct_1": distinct_n(answers, 1),
        "distinct_2": distinct_n(answers, 2),
        "repeated_4gram_rate": repeated_ngram_rate(answers, 4),
        "median_words": median_words(answers),
        "eos_rate": eos_rate(generated_tokens, max_new_tokens),
        "memorization_rate": memorization_rate(answers, train_answers),
    }
    pairs = [(r, a) for r, a in zip(references, answers) if r is not None]
    rates = refusal_rates([r for r, _ in pairs], [a for _, a in pairs])
    if rates is not None:
        out["refusal_rate"], out["false_refusal_rate"] = rates["refusal_rate"], rates["false_refusal_rate"]
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}
