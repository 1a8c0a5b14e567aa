"""How far reviewers agree: Cohen's kappa per pair, Krippendorff's alpha overall and per tag.

The statistics come from the ``krippendorff`` package (alpha) and a direct
2x2 table (kappa, checked against scikit-learn's ``cohen_kappa_score`` in the
tests). Everything runs on the team's status matrix (``team.Matrix``: one row
per decided id, one column per reviewer), so 900k decisions take numpy time.

Alpha's interval is a bootstrap over records (units). For accept/reject the
data of a unit is only its pattern (how many accepted, how many rejected), so
a resample is a multinomial draw of pattern counts, and its alpha is the
package's own coincidence arithmetic (``_coincidences``, ``_random_coincidences``,
``_distances``) over those counts: a thousand resamples of 900k decisions cost
milliseconds, not a thousand passes over the data. The test checks that this
path gives ``krippendorff.alpha`` exactly on the full data.
"""

from __future__ import annotations

from itertools import combinations

import krippendorff
import numpy as np
from krippendorff import krippendorff as _kd

from pipeline.core.team import ACCEPTED, REJECTED, Matrix, Team, id_keys

BOOTSTRAP = 1000  # resamples for alpha's 95% interval
SEED = 0  # the interval is reproducible: the same logs give the same report
MAX_TAGS = 50  # tags reported, most used first


def cohen_kappa(a: np.ndarray, b: np.ndarray) -> float | None:
    """Cohen's kappa of two label arrays of 0/1 (None when chance agreement is total: one label only)."""
    n = len(a)
    if n == 0:
        return None
    po = float(np.count_nonzero(a == b)) / n
    pa, pb = float(a.mean()), float(b.mean())
    pe = pa * pb + (1 - pa) * (1 - pb)
    if pe >= 1.0:
        return None
    return (po - pe) / (1 - pe)


def _patterns(value_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of ``value_counts`` among units two or more reviewers coded, and how often each occurs."""
    pairable = value_counts[value_counts.sum(axis=1) >= 2]
    if not len(pairable):
        return np.zeros((0, value_counts.shape[1]), np.int64), np.zeros(0, np.int64)
    return np.unique(pairable, axis=0, return_counts=True)


def _alpha_of(unit_o: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Nominal alpha for each row of ``weights`` (counts per pattern), from per-pattern coincidences."""
    o = np.tensordot(weights, unit_o, axes=(1, 0))  # (B, V, V)
    v = unit_o.shape[1]
    d = _kd._distances(np.arange(v), _kd._distance_metric("nominal"), o[0].sum(axis=0))
    out = np.empty(len(weights))
    for i, ob in enumerate(o):
        n_v = ob.sum(axis=0)
        e = _kd._random_coincidences(n_v)
        denom = (e * d).sum()
        out[i] = 1 - (ob * d).sum() / denom if denom > 0 else np.nan
    return out


def alpha_with_interval(value_counts: np.ndarray, resamples: int = BOOTSTRAP, seed: int = SEED) -> dict:
    """Krippendorff's alpha (nominal) of a (units x values) count table, with a bootstrap 95% interval."""
    pats, counts = _patterns(value_counts)
    out = {"alpha": None, "ci95": None, "units": int(counts.sum())}
    if not len(pats) or np.count_nonzero(pats.sum(axis=0)) < 2:
        return out  # no unit two people coded, or one value only: alpha is undefined
    out["alpha"] = float(krippendorff.alpha(value_counts=pats.repeat(counts, axis=0), level_of_measurement="nominal"))
    unit_o = np.stack([_kd._coincidences(p[None, :]) for p in pats])
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(int(counts.sum()), counts / counts.sum(), size=resamples)
    boot = _alpha_of(unit_o, draws)
    boot = boot[np.isfinite(boot)]
    if len(boot):
        out["ci95"] = [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))]
    return out


def pairs(matrix: Matrix) -> list[dict]:
    """Per reviewer pair, on the records both decided: count, raw agreement and Cohen's kappa on accept/reject."""
    status = matrix.status
    out = []
    for i, j in combinations(range(len(matrix.names)), 2):
        both = (status[:, i] > 0) & (status[:, j] > 0)
        a, b = (status[both, i] == ACCEPTED).astype(np.int8), (status[both, j] == ACCEPTED).astype(np.int8)
        n = int(both.sum())
        kappa = cohen_kappa(a, b)
        out.append({"a": matrix.names[i], "b": matrix.names[j], "both_decided": n,
                    "agreement": round(float(np.count_nonzero(a == b)) / n, 6) if n else None,
                    "kappa": None if kappa is None else round(kappa, 6)})
    return out


def by_tag(team: Team, matrix: Matrix) -> dict:
    """Per tag, on the records two or more reviewers decided: how often all agree on it, and alpha."""
    status = matrix.status
    deciders = (status > 0).sum(axis=1)
    multi = deciders >= 2
    if not multi.any():
        return {}
    tagged: dict[str, np.ndarray] = {}
    for j, name in enumerate(matrix.names):
        by_name: dict[str, list[str]] = {}
        for rid, tags in team.logs[name].tags.items():
            for t in tags:
                by_name.setdefault(t, []).append(rid)
        for tag, ids in by_name.items():
            k = id_keys(ids)
            at = np.minimum(np.searchsorted(matrix.keys, k), len(matrix.keys) - 1)
            at = at[matrix.keys[at] == k]
            at = at[status[at, j] > 0]  # a tag counts where its reviewer decided
            counts = tagged.setdefault(tag, np.zeros(len(matrix.keys), np.int32))
            np.add.at(counts, at, 1)
    out = {}
    for tag, counts in sorted(tagged.items(), key=lambda kv: -int(kv[1].sum()))[:MAX_TAGS]:
        c = counts[multi]
        m = deciders[multi]
        vc = np.stack([c, m - c], axis=1).astype(np.int64)
        agree = (c == 0) | (c == m)
        fig = alpha_with_interval(vc, resamples=200)
        out[tag] = {"records": int(np.count_nonzero(c)), "agreement": round(float(agree.mean()), 6),
                    "alpha": None if fig["alpha"] is None else round(fig["alpha"], 6)}
    return out


def reviewers(team: Team, matrix: Matrix) -> dict:
    out = {}
    for j, name in enumerate(matrix.names):
        col = matrix.codes[:, j]
        out[name] = {"decided": int(np.count_nonzero(col & 3)), "accepted": int(np.count_nonzero((col & 3) == ACCEPTED)),
                     "rejected": int(np.count_nonzero((col & 3) == REJECTED)),
                     "edited": int(np.count_nonzero(col & 4))}
    return out


def agreement(team: Team, adjudicators: list[str] = (), overlap: int = 1, scores=None,
              resamples: int = BOOTSTRAP) -> dict:
    """The agreement section of reports/review.json (adjudicators are left out: they settle, they do not vote).

    ``scores`` (prescore_file.Scores): the judge against the people, on the records both decided
    where the people's majority is clear (a tie says nothing): AUC and kappa at the best threshold.
    """
    people = [n for n in team.names if n not in adjudicators]
    matrix = team.matrix(people)
    status = matrix.status
    acc = (status == ACCEPTED).sum(axis=1)
    rej = (status == REJECTED).sum(axis=1)
    vc = np.stack([acc, rej], axis=1).astype(np.int64)
    overall = alpha_with_interval(vc, resamples=resamples)
    deciders = acc + rej
    return {
        "reviewers": reviewers(team, matrix),
        "records_decided": int(np.count_nonzero(deciders)),
        "records_done": int(np.count_nonzero(deciders >= overlap)),
        "disagreements": int(np.count_nonzero((acc > 0) & (rej > 0))),
        "alpha": None if overall["alpha"] is None else round(overall["alpha"], 6),
        "alpha_ci95": None if overall["ci95"] is None else [round(x, 6) for x in overall["ci95"]],
        "alpha_units": overall["units"],
        "pairs": pairs(matrix),
        "tags": by_tag(team, matrix),
        "judge": _judge(matrix, acc, rej, scores),
    }


def _judge(matrix: Matrix, acc: np.ndarray, rej: np.ndarray, scores) -> dict | None:
    if scores is None or not len(scores):
        return None
    from pipeline.engines.prescore_file import judge_vs_people

    s = scores.lookup(matrix.keys)
    both = (s > 0) & (acc != rej)
    out = {"model": scores.model, "judge": scores.judge, "scored": len(scores),
           "stale_rows": sum(scores.stale.values())}
    out.update(judge_vs_people(s[both].astype(np.int64), (acc > rej)[both]))
    return out
