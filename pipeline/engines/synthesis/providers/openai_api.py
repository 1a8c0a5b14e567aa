"""Provider ``openai``: samples from any OpenAI-compatible API, from prompt files.

Reads ``synthesize.prompts`` (data/prompts/*.yaml, five modes: lines, single,
pairs, conversations, rewrite), asks the model through AsyncOpenAI with bounded
concurrency, pacing and retries, keeps every answer in the request cache
(.tenny/) so nothing is paid for twice, and yields records in plan order with
their provenance in ``meta``. docs/synthesize.md is the user's guide.

The API key is read from the environment variable named by
``synthesize.api_key_env`` and handed to the client; it is never written,
logged, hashed into a cache key or put in an error message.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator

from pipeline.core.errors import UserError
from pipeline.core.params import Params, SynthesizeParams

EMPTY_HINT = (
    "see reports/synthesize.json (requests.failed, failed_by_reason, dropped) and the prompt files in "
    "synthesize.prompts; a failed or budget-stopped run keeps its answers in .tenny/, so run it again"
)

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def api_key(cfg: SynthesizeParams) -> str:
    name = cfg.api_key_env
    if not _ENV_NAME.match(name):
        # Someone pasted the key itself into params: say so without repeating it.
        raise UserError(
            "params.yaml: synthesize.api_key_env must name an environment variable (e.g. OPENAI_API_KEY), "
            "not hold a key; remove the key from params.yaml and export it instead"
        )
    key = os.environ.get(name, "").strip()
    if not key:
        raise UserError(
            f"synthesize.api_key_env: ${name} is not set; export {name}=<your key> "
            f"(read from the environment only; a local server that needs no key accepts any value)"
        )
    return key


def check_base_url(cfg: SynthesizeParams) -> None:
    if cfg.base_url is not None and not re.match(r"^https?://[^\s/]+", cfg.base_url):
        raise UserError(
            f"params.yaml: synthesize.base_url {cfg.base_url!r} is not an http(s) URL; "
            f"use e.g. http://localhost:8000/v1 (vLLM) or leave it out for OpenAI"
        )


def generate(params: Params, report) -> Iterator[dict]:
    from pipeline.engines.synthesis.openai_client import batch, prompt_files
    from pipeline.engines.synthesis.openai_client.cost import Budget
    from pipeline.engines.synthesis.openai_client.engine import Engine, RunStats
    from pipeline.engines.synthesis.openai_client.plan import Sampling, plan_all, planned_count
    from pipeline.engines.synthesis.openai_client.progress import Progress
    from pipeline.engines.synthesis.openai_client.quirks import Counts, records_from
    from pipeline.engines.synthesis.openai_client.request_cache import NoCache, RequestCache

    cfg = params.synthesize
    if not cfg.prompts:
        raise UserError("params.yaml: synthesize.prompts is empty; list prompt files, e.g. [data/prompts/persona.yaml]")
    check_base_url(cfg)
    if cfg.batch and not cfg.cache:
        raise UserError("params.yaml: synthesize.batch needs synthesize.cache: true (batch answers come back through the cache in .tenny/)")
    files = [prompt_files.load(p) for p in cfg.prompts]
    key = api_key(cfg)
    sampling = Sampling(cfg.model, cfg.temperature, cfg.top_p, cfg.max_tokens, cfg.seed)
    stats = RunStats(planned=sum(planned_count(pf) for pf in files))
    budget = Budget(cfg, factor=cfg.batch_price_factor if cfg.batch else 1.0)
    cache = RequestCache() if cfg.cache else NoCache()
    counts = Counts()
    progress = None
    try:
        if cfg.batch:
            batch.run_batch(cfg, key, cache, plan_all(files, sampling), budget, stats)
        progress = Progress(stats.planned, stats)
        engine = Engine(cfg, key, cache, budget, stats, progress, cache_only=cfg.batch,
                        in_step=cfg.stop_when_novelty_below is not None)
        for req, answer in engine.run(plan_all(files, sampling)):
            if report.stop_requested:  # answers already on their way: paid for, kept in the cache, unused
                continue
            if answer is None:
                continue
            records = records_from(req, answer, counts)
            stats.samples += len(records)
            for record in records:
                yield record
                if report.stop_requested:
                    # The stage saw the generator saturate (synthesize.stop_when_novelty_below).
                    # Said before the engine is asked for more: from here on nothing new is sent.
                    engine.stop_sending()
                    break
    finally:
        if progress is not None:
            progress.close()
        cache.close()
        for (what, kind), n in counts.items():
            (report.cleaned if what == "cleaned" else report.dropped)[kind] += n
        report.extra.update(stats.to_json())
        report.extra["batch"] = int(cfg.batch)
        _say(budget, stats)


def _say(budget, stats) -> None:
    if stats.budget_stop:
        which = budget.stopped_by or "max_cost_usd"
        print(
            f"synthesize: budget stop: synthesize.{which} reached (spent ${stats.cost_usd:.4f}, {stats.sent} requests sent); "
            f"{stats.unsent} requests not sent; kept what arrived. Raise synthesize.{which} and run again: "
            f"answers already paid for come from the cache",
            file=sys.stderr,
        )
    if stats.failed:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(stats.failed_by_reason.items()))
        print(
            f"synthesize: warning: {stats.failed} requests failed after retries ({reasons}); "
            f"run again to ask only for those",
            file=sys.stderr,
        )
