"""The figures in reports/judge.json: win rate with its Wilson interval, position bias, mean scores.

Verdicts are counted from the challenger's side (the adapter in the eval
stage, REV_B in ``tenny judge``). Every prompt is judged in both orders, so a
judge that always picks the first answer gives one win and one loss per
prompt: a win rate of 0.5 whatever the answers, with position_bias 1.0.

The unit of the win rate is the prompt, not the verdict: a prompt's two
verdicts share its answers, so counting them as two independent draws makes
the interval up to √2 too narrow. A prompt scores the mean of its valid
verdicts (win 1, tie ½, loss 0): both orders agree on the challenger, 1; on
the baseline, 0; they split, ½. The interval is Wilson's over the prompts,
with the summed scores as successes; a score between 0 and 1 varies less than
a coin with the same mean, so the interval is, if anything, a little wide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist, mean, stdev

Z95 = NormalDist().inv_cdf(0.975)


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for a proportion (``successes`` may hold halves: ties)."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def t_quantile(df: int, z: float = Z95) -> float:
    """Student's t 97.5 % quantile (Cornish-Fisher expansion: within 0.3 % for df >= 3, no scipy)."""
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    g4 = (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160
    return z + g1 / df + g2 / df ** 2 + g3 / df ** 3 + g4 / df ** 4


T_SMALL = {1: 12.706, 2: 4.303}  # where the expansion is poor


def mean_interval(scores: Sequence[int], low: float = 1, high: float = 10) -> dict:
    """Mean with a 95 % t interval, clipped to the scale; low/high are null below two scores."""
    n = len(scores)
    if n == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    m = mean(scores)
    if n < 2:
        return {"mean": round(m, 3), "low": None, "high": None, "n": n}
    t = T_SMALL.get(n - 1) or t_quantile(n - 1)
    half = t * stdev(scores) / math.sqrt(n)
    return {"mean": round(m, 3), "low": round(max(low, m - half), 3), "high": round(min(high, m + half), 3), "n": n}


def prompt_figures(per_prompt: Sequence[Sequence[str | None]], challenger: str, baseline: str) -> dict:
    """Win rate and its interval over prompts, and how often a prompt's two orders agree.

    ``per_prompt[i]`` holds prompt i's winners (challenger, baseline, "tie" or
    None for an invalid or missing verdict), one per order it was shown in.
    """
    scores, split, both = [], 0, 0
    for winners in per_prompt:
        valid = [w for w in winners if w is not None]
        if not valid:
            continue
        scores.append(mean(1.0 if w == challenger else 0.0 if w == baseline else 0.5 for w in valid))
        if len(valid) == 2:
            both += 1
            split += valid[0] != valid[1]
    n = len(scores)
    interval = wilson(sum(scores), n)
    return {
        "prompts_judged": n,
        "prompt_wins": sum(1 for x in scores if x == 1.0), "prompt_losses": sum(1 for x in scores if x == 0.0),
        "prompt_splits": split,
        "win_rate": round(sum(scores) / n, 4) if n else None,
        "win_rate_low": round(interval[0], 4) if interval else None,
        "win_rate_high": round(interval[1], 4) if interval else None,
        "consistency": round((both - split) / both, 4) if both else None,
    }


def pair_figures(verdicts: Sequence[str | None], winners: Sequence[str | None], challenger: str, baseline: str) -> dict:
    """wins / losses / ties and position bias over the valid verdicts (the win rate is by prompt: prompt_figures).

    ``verdicts[i]`` is what the judge said ("A" = the answer shown first);
    ``winners[i]`` the side it maps to (challenger, baseline or "tie").
    """
    wins = sum(1 for w in winners if w == challenger)
    losses = sum(1 for w in winners if w == baseline)
    ties = sum(1 for w in winners if w == "tie")
    valid = wins + losses + ties
    decisive = [v for v in verdicts if v in ("A", "B")]
    return {
        "wins": wins, "losses": losses, "ties": ties, "verdicts_valid": valid,
        "position_bias": round(sum(1 for v in decisive if v == "A") / len(decisive), 4) if decisive else None,
    }
