"""Synthetic corpora that look like generator output, for the dedupe benchmark and tests.

A generator asked for many samples of one persona repeats its own patterns with
different words in the slots, and now and then says nearly the same thing twice.
So a corpus here is sentences built from patterns with slot fillers, plus about
a quarter planted near-twins of earlier samples (a typo, case, punctuation, a
bullet, numbering, quotes).

- ``realistic``: a few hundred patterns; most pairs are far apart.
- ``hostile``: a dozen patterns with short fillers, so a large share of all
  pairs score 70-89: close enough that no cheap filter prunes them, yet below
  a threshold of 90, so each must be verified exactly.
"""

from __future__ import annotations

import random

_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "vo", "shi", "pe", "do", "gra", "fen", "bli", "tor",
              "sa", "qui", "zel", "mo", "ar", "en", "ix", "ul", "or", "ha", "be", "cy", "wu", "jo")


def _word(rng: random.Random, lo: int = 1, hi: int = 3) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(lo, hi)))


def _fillers(rng: random.Random, n: int, lo: int, hi: int) -> list[str]:
    out: set[str] = set()
    while len(out) < n:
        out.add(" ".join(_word(rng) for _ in range(rng.randint(lo, hi))))
    return sorted(out)


def _pattern(rng: random.Random, vocab: list[str], slots: int, target: int, filler_len: int) -> list[str | int]:
    """Fixed text pieces and slot numbers, about ``target`` characters with fillers."""
    pieces: list[str | int] = []
    fixed_len = max(20, target - slots * filler_len)
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < fixed_len:
        words.append(rng.choice(vocab))
    cuts = sorted(rng.sample(range(1, len(words)), min(slots, len(words) - 1)))
    start = 0
    for k, cut in enumerate(cuts):
        pieces.append(" ".join(words[start:cut]).capitalize() if start == 0 else " ".join(words[start:cut]))
        pieces.append(k)
        start = cut
    pieces.append(" ".join(words[start:]) + rng.choice(".!?"))
    return pieces


def _twin(rng: random.Random, text: str) -> str:
    kind = rng.randrange(8)
    if kind == 0 and len(text) > 3:  # typo: swap two neighbours
        i = rng.randrange(len(text) - 1)
        return text[:i] + text[i + 1] + text[i] + text[i + 2:]
    if kind == 1 and len(text) > 3:  # typo: drop or double a character
        i = rng.randrange(len(text))
        return text[:i] + text[i + 1:] if rng.random() < 0.5 else text[:i] + text[i] + text[i:]
    if kind == 2:
        return text.upper() if rng.random() < 0.3 else text.lower()
    if kind == 3:
        return text.rstrip(".!?") + rng.choice(("!!", "...", " :)", ""))
    if kind == 4:
        return rng.choice(("- ", "* ", "• ")) + text
    if kind == 5:
        return f"{rng.randint(1, 99)}. {text}"
    if kind == 6:
        return rng.choice(('"{}"', "“{}”", "'{}'")).format(text)
    words = text.split()  # a word changed
    if len(words) > 2:
        words[rng.randrange(len(words))] = _word(rng)
    return " ".join(words)


def make_corpus(n: int, kind: str = "realistic", seed: int = 0, twins: float = 0.25) -> list[str]:
    """``n`` texts of about 100 characters, deterministic for a seed."""
    rng = random.Random(f"{kind}:{seed}")
    if kind == "realistic":
        n_patterns, slots, filler_words, n_fillers, filler_len = 300, 3, (2, 4), 150, 17
    elif kind == "hostile":
        n_patterns, slots, filler_words, n_fillers, filler_len = 12, 3, (1, 1), 25, 6
    else:
        raise ValueError(f"unknown corpus kind {kind!r}: realistic or hostile")
    vocab = _fillers(rng, 2000, 1, 1)
    filler_lists = [_fillers(rng, n_fillers, *filler_words) for _ in range(slots)]
    patterns = [_pattern(rng, vocab, slots, rng.randint(80, 120), filler_len) for _ in range(n_patterns)]
    out: list[str] = []
    for _ in range(n):
        if out and rng.random() < twins:
            out.append(_twin(rng, rng.choice(out[-5000:])))
            continue
        pattern = rng.choice(patterns)
        out.append(" ".join(p if isinstance(p, str) else rng.choice(filler_lists[p]) for p in pattern))
    return out


def make_records(n: int, kind: str = "realistic", seed: int = 0) -> list[dict]:
    """The corpus as tenny records (ids from the records module)."""
    from pipeline.core.records import make_record

    seen: set[str] = set()
    out = []
    for text in make_corpus(n, kind, seed):
        rec = make_record(text=text)
        if rec["id"] not in seen:  # same normalized body → same id; records forbid that
            seen.add(rec["id"])
            out.append(rec)
    return out
