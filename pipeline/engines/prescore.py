"""The judge's first pass: a persona-fit score 1-10 and a one-line reason per sample to review.

``review.prescore: true`` makes ``tenny review`` ask the eval judge
(``eval.judge``: the same client, cache, budget, retries and concurrency as
``tenny eval``'s judge, through ``pipeline.engines.judging``) about every
sample not scored yet, before the screen opens, with a progress bar. Rows go
to data/reviews/prescore.jsonl, appended as answers arrive:

    {"id": "...", "score": 7, "reason": "...", "judge": "<fingerprint>", "model": "gpt-4o-mini"}

A kill loses only answers in flight; a rerun asks only for samples without a
row of this judge, and the request cache (.tenny/judge-cache.sqlite) answers
any request already paid for. The fingerprint is a hash of the judge model,
its sampling and the score prompt as rendered: rows of another judge or
prompt are *stale* and never mixed with this judge's (a reader takes one
fingerprint's rows only).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.core.records import body_kind, read_records
from pipeline.core.team import id_key
from pipeline.engines.prescore_file import PRESCORE, Scores, read_scores, row_line


def sample_turns(record: dict) -> tuple[str, str]:
    """(prompt, answer) the judge sees: a pair as it is, a chat's last user and assistant turns, a text alone."""
    kind = body_kind(record)
    if kind == "pair":
        return record["prompt"], record["completion"]
    if kind == "chat":
        msgs = record["messages"]
        answer = next((m["content"] for m in reversed(msgs) if m["role"] == "assistant"), "")
        prompt = next((m["content"] for m in reversed(msgs) if m["role"] == "user"), "")
        return prompt, answer
    return "(no prompt: a line in the persona's voice)", record["text"]


def fingerprint(judge) -> str:
    """Which judge scored: model, sampling and the score prompt as rendered (any change makes old rows stale)."""
    return fingerprint_of(judge.jp, judge.prompt)


def fingerprint_of(jp, prompt=None) -> str | None:
    """``fingerprint`` from eval.judge alone (no key needed: the review screen asks); None: no judge set."""
    if not jp.model:
        return None
    if prompt is None:
        from pipeline.engines.judging import prompt_file

        prompt = prompt_file.load(jp.prompt)
    probe = prompt.score_messages("{prompt}", "{answer}")
    blob = json.dumps({"model": jp.model, "temperature": jp.temperature, "max_tokens": jp.max_tokens,
                       "seed": jp.seed, "messages": probe}, sort_keys=True)
    return hashlib.blake2b(blob.encode(), digest_size=6).hexdigest()


def _drop_cut_tail(path: Path) -> None:
    """A run killed mid-write leaves a cut last line: drop it before appending (its answer is in the
    request cache, so asking again costs nothing), else the next row would be glued onto it."""
    if not path.exists() or not path.stat().st_size:
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if data.endswith(b"\n"):
            return
        fh.truncate(data.rfind(b"\n") + 1)


def _todo(records: Path, done: Scores) -> Iterator[dict]:
    for record in read_records(records):
        if done.lookup(np.array([id_key(record["id"])], np.uint64))[0] == 0:
            yield record


def prescore(records: str | os.PathLike, jp, out: str | os.PathLike = PRESCORE) -> dict:
    """Score every record of ``records`` this judge has not scored yet; return counts for the shell."""
    from pipeline.engines.judging.runner import prepare
    from pipeline.engines.judging.verdicts import parse_score
    from pipeline.engines.synthesis.openai_client.cost import Budget
    from pipeline.engines.synthesis.openai_client.engine import Engine, RunStats
    from pipeline.engines.synthesis.openai_client.plan import Planned, Sampling, request_body, request_hash
    from pipeline.engines.synthesis.openai_client.progress import Progress
    from pipeline.engines.synthesis.openai_client.request_cache import NoCache, RequestCache

    judge = prepare(jp)
    fp = fingerprint(judge)
    out = Path(out)
    _drop_cut_tail(out)
    done = read_scores(out, fp)
    todo = list(_todo(Path(records), done))
    counts = {"judge": fp, "model": judge.cfg.model, "already": len(done), "asked": len(todo), "scored": 0,
              "unreadable": 0, "unanswered": 0, "stale": sum(done.stale.values())}
    if not todo:
        return counts
    sampling = Sampling(judge.cfg.model, jp.temperature, 1.0, jp.max_tokens, jp.seed)
    cache = RequestCache(paths.STATE_DIR / "judge-cache.sqlite") if jp.cache else NoCache()
    stats = RunStats(planned=len(todo))
    progress = Progress(len(todo), stats, desc="prescore")
    out.parent.mkdir(parents=True, exist_ok=True)

    def planned() -> Iterator[Planned]:
        for record in todo:
            body = request_body(judge.prompt.score_messages(*sample_turns(record)), sampling)
            yield Planned(request_hash(body), body, None, {}, {"id": record["id"]})

    try:
        for req, answer in Engine(judge.cfg, judge.key, cache, Budget(judge.cfg), stats, progress).run(planned()):
            if answer is None:
                counts["unanswered"] += 1
                continue
            score, reason = parse_score(answer["content"])
            if score is None:
                counts["unreadable"] += 1
                continue
            # one whole line per answer, as it arrives: a kill keeps every answer already written
            with open(out, "a", encoding="utf-8") as fh:  # O_APPEND, one whole line per write
                fh.write(row_line(req.meta["id"], fp, score, " ".join(reason.split())[:300], judge.cfg.model) + "\n")
            counts["scored"] += 1
    except UserError as err:
        raise UserError(str(err).replace("synthesize.", "eval.judge.")) from None
    finally:
        progress.close()
        cache.close()
    return counts
