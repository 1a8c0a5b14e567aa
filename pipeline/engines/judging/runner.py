"""Asking the judge: base vs adapter (or any two sets of answers), through the synthesize client.

Every prompt's two answers are judged in both orders (challenger shown first,
then baseline shown first), and, with ``persona_score``, each answer gets a
1-10 score. Requests go through the synthesize engine with its own cache file
(.tenny/judge-cache.sqlite): retries, concurrency, budget and the progress bar
are the same code, and a rerun with the same answers asks nothing.

A reply that cannot be read is asked once more, as a follow-up turn ("reply
with only the JSON object"): a different request, so the cache cannot hand
back the same unreadable reply. Still unreadable, it is counted as invalid
and never guessed. A request that got no reply at all (failed after retries,
or not sent after a budget stop) is counted as unanswered.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.core.params import JudgeParams, SynthesizeParams
from pipeline.core.records import write_json, write_jsonl
from pipeline.core.text import clean
from pipeline.engines.judging import formats, prompt_file
from pipeline.engines.judging.stats import mean_interval, pair_figures, prompt_figures
from pipeline.engines.judging.verdicts import parse_score, parse_verdict
from pipeline.engines.synthesis.openai_client.cost import Budget
from pipeline.engines.synthesis.openai_client.engine import Engine, RunStats
from pipeline.engines.synthesis.openai_client.plan import Planned, Sampling, request_body, request_hash
from pipeline.engines.synthesis.openai_client.progress import Progress
from pipeline.engines.synthesis.openai_client.request_cache import NoCache, RequestCache

CACHE_FILE = "judge-cache.sqlite"
OFF_REPORT = {"model": None, "n_pairs": 0}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Answers:
    """One prompt and the two answers to compare."""

    prompt: str
    baseline: str
    challenger: str


@dataclass
class Job:
    """One question to the judge and what came of it."""

    kind: str                  # "pair" | "persona"
    item: Answers
    messages: list[dict]
    first: str = ""            # pair: whose answer is shown as A
    second: str = ""           # pair: whose answer is shown as B
    answer_a: str = ""
    answer_b: str = ""
    who: str = ""              # persona: whose answer is scored
    answer: str = ""           # persona: the answer scored
    status: str = "unanswered"  # ok | invalid | unanswered
    value: str | int | None = None  # the verdict ("A" | "B" | "tie") or the score
    reason: str = ""
    retried: bool = False


# ---------------------------------------------------------------- configuration


def client_params(jp: JudgeParams) -> SynthesizeParams:
    """The judge's settings in the form the synthesize client takes."""
    return SynthesizeParams(
        provider="openai", base_url=jp.base_url, api_key_env=jp.api_key_env, model=jp.model or "",
        temperature=jp.temperature, top_p=1.0, max_tokens=jp.max_tokens, seed=jp.seed,
        concurrency=jp.concurrency, adaptive_concurrency=jp.adaptive_concurrency, timeout_s=jp.timeout_s, max_retries=jp.max_retries,
        retry_base_s=jp.retry_base_s, retry_max_s=jp.retry_max_s, max_cost_usd=jp.max_cost_usd,
        prices=jp.prices, cache=jp.cache,
    )


def _as_judge(err: UserError) -> UserError:
    # The client's messages name its settings as synthesize.*; the judge's have the same names under eval.judge.
    return UserError(str(err).replace("synthesize.", "eval.judge."))


def api_key(jp: JudgeParams) -> str:
    name = jp.api_key_env
    if not _ENV_NAME.match(name):
        raise UserError("params.yaml: eval.judge.api_key_env must name an environment variable (e.g. OPENAI_API_KEY), "
                        "not hold a key; remove the key from params.yaml and export it instead")
    key = os.environ.get(name, "").strip()
    if not key:
        raise UserError(f"eval.judge.api_key_env: ${name} is not set; export {name}=<your key> (read from the "
                        f"environment only; a local server that needs no key accepts any value, e.g. {name}=none)")
    return key


@dataclass
class Judge:
    """A configured judge, checked before any answer is generated (a typo fails in seconds, not after the models ran)."""

    jp: JudgeParams
    prompt: prompt_file.JudgePrompt
    key: str = field(repr=False)  # the API key: never in a repr, a log or a file
    cfg: SynthesizeParams


def prepare(jp: JudgeParams) -> Judge:
    if not jp.model:
        raise UserError("eval.judge.model is not set: no judge configured; set it in params.yaml "
                        "(or --set eval.judge.model=gpt-4o-mini) and see docs/judge.md")
    if jp.base_url is not None and not re.match(r"^https?://[^\s/]+", jp.base_url):
        raise UserError(f"params.yaml: eval.judge.base_url {jp.base_url!r} is not an http(s) URL; "
                        f"use e.g. http://localhost:8000/v1 (vLLM) or leave it out for OpenAI")
    cfg = client_params(jp)
    try:
        Budget(cfg)  # a max_cost_usd without a price for the model is an error now, not after the eval
    except UserError as err:
        raise _as_judge(err) from None
    return Judge(jp, prompt_file.load(jp.prompt), api_key(jp), cfg)


# ---------------------------------------------------------------- asking


def _jobs(judge: Judge, items: Sequence[Answers], baseline: str, challenger: str) -> list[Job]:
    jobs: list[Job] = []
    jp = judge.prompt
    for it in items:
        for (first, a), (second, b) in (((challenger, it.challenger), (baseline, it.baseline)),
                                        ((baseline, it.baseline), (challenger, it.challenger))):
            jobs.append(Job("pair", it, jp.pair_messages(it.prompt, a, b), first=first, second=second, answer_a=a, answer_b=b))
    if judge.jp.persona_score:
        for it in items:
            jobs.append(Job("persona", it, jp.score_messages(it.prompt, it.baseline), who=baseline, answer=it.baseline))
            jobs.append(Job("persona", it, jp.score_messages(it.prompt, it.challenger), who=challenger, answer=it.challenger))
    return jobs


def _planned(job: Job, messages: list[dict], sampling: Sampling, base_url: str, structured: bool) -> Planned:
    body = request_body(messages, sampling)
    if structured:
        body["response_format"] = formats.VERDICT if job.kind == "pair" else formats.SCORE
    # The server is part of the question: llama.cpp serves any model name, so the
    # same name at another URL is another judge. (Never the key: it is no part of it.)
    return Planned(request_hash({**body, "_base_url": base_url}), body, None, {}, {"job": job})


def _read(job: Job, content: str) -> bool:
    value, reason = parse_verdict(content) if job.kind == "pair" else parse_score(content)
    job.reason = reason
    if value is None:
        job.status = "invalid"
        job.reason = f"unreadable ({reason}): {content[:200]}"  # what the judge said, for judgments.jsonl
        return False
    job.status, job.value = "ok", value
    return True


class _Progress(Progress):
    def counts(self) -> str:
        s = self.stats
        return (f"ok {s.ok} cached {s.cached} failed {s.failed} retried {s.retries} | "
                f"{s.prompt_tokens + s.completion_tokens} tok | ${s.cost_usd:.4f}")


def _ask(judge: Judge, requests: list[Planned], cache, budget: Budget, stats: RunStats, desc: str):
    if not requests:
        return
    progress = _Progress(len(requests), stats, desc=desc)
    try:
        yield from Engine(judge.cfg, judge.key, cache, budget, stats, progress).run(iter(requests))
    except UserError as err:
        raise _as_judge(err) from None
    finally:
        progress.close()


def judge_answers(judge: Judge, items: Sequence[Answers], baseline: str = "base",
                  challenger: str = "adapter") -> tuple[dict, list[dict]]:
    """(judge.json, judgments.jsonl rows) for ``items``; see docs/judge.md for every figure."""
    if baseline == challenger:
        raise UserError(f"the two sides need different names (both are {baseline!r})")
    jp = judge.jp
    sampling = Sampling(judge.cfg.model, jp.temperature, 1.0, jp.max_tokens, jp.seed)
    jobs = _jobs(judge, items, baseline, challenger)
    stats = RunStats(planned=len(jobs))
    budget = Budget(judge.cfg)
    cache = RequestCache(paths.STATE_DIR / CACHE_FILE) if jp.cache else NoCache()
    retries: list[Planned] = []
    try:
        url = jp.base_url or "https://api.openai.com/v1"
        structured = _takes_schema(judge, url, sampling, budget, stats)
        plan = [_planned(j, j.messages, sampling, url, structured) for j in jobs]
        for req, answer in _ask(judge, plan, cache, budget, stats, "judge"):
            job = req.meta["job"]
            if answer is not None and not _read(job, answer["content"]):
                job.retried = True
                retries.append(_planned(job, judge.prompt.retry_messages(job.messages, answer["content"]), sampling, url,
                                        structured))
        for req, answer in _ask(judge, retries, cache, budget, stats, "judge (asked again)"):
            job = req.meta["job"]
            if answer is None:
                job.reason = "no reply to the second request"  # status stays invalid: the first reply was unreadable
            else:
                _read(job, answer["content"])
    finally:
        cache.close()
    _warn(budget, stats)
    report = _report(judge, jobs, items, baseline, challenger, stats, len(retries))
    report["structured"] = int(structured)  # 1: verdicts asked for with a JSON schema (response_format)
    return report, [_row(j) for j in jobs]


def _takes_schema(judge: Judge, url: str, sampling: Sampling, budget: Budget, stats: RunStats) -> bool:
    """Whether the server takes response_format: remembered per server and model, else asked with one probe."""
    memory = formats.Memory()
    key = formats.server_key(url, judge.cfg.model)
    known = memory.get(key)
    if known is not None:
        return known
    body = {**request_body(formats.PROBE, sampling), "response_format": formats.VERDICT}
    probe = RunStats(planned=1)
    try:
        answers = list(Engine(judge.cfg, judge.key, NoCache(), budget, probe).run(  # paid from the judge's budget
            iter([Planned(request_hash(body), body, None, {}, {})])))
    except UserError as err:
        raise _as_judge(err) from None
    stats.cost_usd += probe.cost_usd
    stats.prompt_tokens += probe.prompt_tokens
    stats.completion_tokens += probe.completion_tokens
    if answers and answers[0][1] is not None:
        memory.put(key, True)
        return True
    if any(reason in probe.failed_by_reason for reason in formats.REJECTED_STATUSES):
        memory.put(key, False)
        formats.say_rejected(url, judge.cfg.model)
        return False
    return True  # the probe failed for another reason (timeouts...): not remembered, the run will say more


def _winner(job: Job) -> str | None:
    if job.status != "ok":
        return None
    return {"A": job.first, "B": job.second, "tie": "tie"}[job.value]


def _row(job: Job) -> dict:
    ok = job.status == "ok"
    if job.kind == "pair":
        return {"kind": "pair", "prompt": job.item.prompt, "shown_first": job.first, "answer_a": job.answer_a,
                "answer_b": job.answer_b, "verdict": job.value if ok else None, "winner": _winner(job),
                "reason": job.reason, "status": job.status, "retried": job.retried}
    return {"kind": "persona", "prompt": job.item.prompt, "model": job.who, "answer": job.answer,
            "score": job.value if ok else None, "reason": job.reason, "status": job.status, "retried": job.retried}


def _report(judge: Judge, jobs: list[Job], items: Sequence[Answers], baseline: str, challenger: str,
            stats: RunStats, asked_again: int) -> dict:
    pairs = [j for j in jobs if j.kind == "pair"]
    valid = [j for j in pairs if j.status == "ok"]
    report: dict = {
        "model": judge.jp.model, "baseline": baseline, "challenger": challenger,
        "n_prompts": len(items), "n_pairs": len(pairs),
        "invalid": sum(1 for j in pairs if j.status == "invalid"),
        "unanswered": sum(1 for j in pairs if j.status == "unanswered"),
        **pair_figures([j.value for j in valid], [_winner(j) for j in valid], challenger, baseline),
        **prompt_figures([[_winner(j) for j in pairs if j.item is it] for it in items], challenger, baseline),
    }
    if judge.jp.persona_score:
        report["persona"] = {}
        for side, name in (("baseline", baseline), ("challenger", challenger)):
            scored = [j for j in jobs if j.kind == "persona" and j.who == name]
            report["persona"][side] = {**mean_interval([j.value for j in scored if j.status == "ok"]),
                                       "invalid": sum(1 for j in scored if j.status != "ok")}
    report["cost_usd"] = round(stats.cost_usd, 6)
    report["cost_usd_cached"] = round(stats.cost_usd_cached, 6)
    report["requests"] = {"sent": stats.sent, "cached": stats.cached, "failed": stats.failed,
                          "unsent": stats.unsent, "asked_again": asked_again}
    report["tokens"] = {"prompt": stats.prompt_tokens, "completion": stats.completion_tokens}
    report["client"] = dict(stats.client)  # the concurrency the server sustained and its latency
    return report


def _warn(budget: Budget, stats: RunStats) -> None:
    if stats.budget_stop:
        print(f"judge: budget stop: eval.judge.{budget.stopped_by or 'max_cost_usd'} reached (spent ${stats.cost_usd:.4f}); "
              f"{stats.unsent} requests not sent, counted as unanswered. Raise it and run again: verdicts already "
              f"paid for come from the cache", file=sys.stderr)
    if stats.failed:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(stats.failed_by_reason.items()))
        print(f"judge: warning: {stats.failed} requests failed after retries ({reasons}), counted as unanswered; "
              f"run again to ask only for those", file=sys.stderr)


# ---------------------------------------------------------------- files and summary


def write_reports(report: dict, rows: Sequence[dict], report_path: str | Path = paths.JUDGE_REPORT,
                  judgments_path: str | Path = paths.JUDGMENTS) -> None:
    write_json(report_path, report)
    write_jsonl(judgments_path, rows)


def _num(value, fmt: str = ".2f") -> str:
    return "n/a" if value is None else format(value, fmt)


def summary(report: dict) -> str:
    """A few plain lines for the terminal; names are cleaned (revision names come from the command line)."""
    if not report.get("model"):
        return "judge: off (eval.judge.model not set)"
    base, chal = clean(report["baseline"]), clean(report["challenger"])
    lines = [
        f"judge {clean(report['model'])}: {chal} (challenger) vs {base} (baseline), "
        f"{report['n_prompts']} prompts, {report['n_pairs']} verdicts asked (both orders)",
        f"  win rate {_num(report['win_rate'])} (95% {_num(report['win_rate_low'])}-{_num(report['win_rate_high'])}) "
        f"over {report['prompts_judged']} prompts: {report['prompt_wins']} won in both orders, "
        f"{report['prompt_losses']} lost in both, {report['prompt_splits']} split",
        f"  consistency {_num(report['consistency'])} (share of prompts whose two orders agree); "
        f"verdicts: wins {report['wins']}, losses {report['losses']}, ties {report['ties']}",
        f"  position bias {_num(report['position_bias'])} (share of decisive verdicts for the answer shown first)",
        f"  invalid {report['invalid']}, unanswered {report['unanswered']}",
    ]
    persona = report.get("persona")
    if persona:
        parts = []
        for side, name in (("baseline", base), ("challenger", chal)):
            p = persona[side]
            parts.append(f"{name} {_num(p['mean'], '.1f')} ({_num(p['low'], '.1f')}-{_num(p['high'], '.1f')}, n {p['n']})")
        lines.append("  persona score (1-10): " + ", ".join(parts))
    r = report["requests"]
    lines.append(f"  cost ${report['cost_usd']:.4f} ({r['sent']} sent, {r['cached']} from the cache)")
    c = report.get("client") or {}
    if r["sent"] and c.get("latency_s_median") is not None:  # how the server kept up (nothing to say if all was cached)
        rate = f", {c['answers_per_min']:.1f} answers/min" if c.get("answers_per_min") is not None else ""
        lines.append(f"  server: concurrency {c['concurrency_final']} of {c['concurrency_ceiling']} "
                     f"(lowest {c['concurrency_lowest']}), median latency {c['latency_s_median']:.1f} s{rate}")
    return "\n".join(lines)
