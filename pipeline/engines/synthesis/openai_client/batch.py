"""Batch mode: the uncached part of the plan goes through the Batch API
(upload, create, poll, download) at its lower price; answers land in the
request cache, and the normal engine then reads them back in plan order.

The batch id is saved the moment the batch is created, keyed by a hash of the
request keys it holds, so a killed run resumes polling that batch instead of
paying for a second one. A batch that ended (completed, expired, failed) is
collected once; whatever it did not answer is what the next run submits.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.core.params import SynthesizeParams
from pipeline.core.records import dumps
from pipeline.engines.synthesis.openai_client.cost import Budget
from pipeline.engines.synthesis.openai_client.engine import RunStats
from pipeline.engines.synthesis.openai_client.limits import estimate_tokens

ENDPOINT = "/v1/chat/completions"
ENDED = ("completed", "failed", "expired", "cancelled")


def write_input(planned, cache, budget: Budget, stats: RunStats) -> tuple[str, int, os.PathLike]:
    """The batch input file (streamed to .tenny/batches/), its plan hash and request count."""
    folder = paths.STATE_DIR / "batches"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "input.jsonl.tmp"
    digest = hashlib.blake2b(digest_size=16)
    n = 0
    seen: set[str] = set()
    with open(tmp, "w", encoding="utf-8") as fh:
        for req in planned:
            if req.key in seen or req.key in cache:
                continue
            if budget.reserve(estimate_tokens(req.body["messages"])) is None:
                stats.budget_stop = 1
                stats.unsent += 1
                continue
            seen.add(req.key)
            fh.write(dumps({"custom_id": req.key, "method": "POST", "url": ENDPOINT, "body": req.body}) + "\n")
            digest.update(req.key.encode())
            n += 1
    plan_id = digest.hexdigest()
    path = folder / f"{plan_id}.jsonl"
    os.replace(tmp, path)
    return plan_id, n, path


def run_batch(cfg: SynthesizeParams, api_key: str, cache, planned, budget: Budget, stats: RunStats) -> None:
    plan_id, n, path = write_input(planned, cache, budget, stats)
    if n == 0:
        path.unlink(missing_ok=True)
        return
    asyncio.run(_run(cfg, api_key, cache, plan_id, n, path, budget, stats))


async def _run(cfg, api_key, cache, plan_id, n, path, budget: Budget, stats: RunStats) -> None:
    import openai

    client = openai.AsyncOpenAI(api_key=api_key, base_url=cfg.base_url, max_retries=cfg.max_retries, timeout=cfg.timeout_s)
    try:
        saved = cache.batch_for(plan_id)
        if saved and saved["state"] == "submitted":
            batch_id = saved["batch_id"]
            print(f"synthesize: resuming batch {batch_id} ({n} requests); not submitting again", file=sys.stderr)
        else:
            with open(path, "rb") as fh:
                uploaded = await client.files.create(file=(path.name, fh), purpose="batch")
            batch = await client.batches.create(input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h")
            batch_id = batch.id
            cache.save_batch(plan_id, batch_id, uploaded.id, n, "submitted")
            stats.sent += n
            print(f"synthesize: submitted batch {batch_id} ({n} requests); a killed run resumes it", file=sys.stderr)
        batch = await _poll(client, batch_id, cfg.batch_poll_s)
        if batch.output_file_id:
            await _collect(client, batch.output_file_id, cache, budget, stats)
        if batch.error_file_id:
            await _collect(client, batch.error_file_id, cache, budget, stats)
        cache.save_batch(plan_id, batch_id, saved["input_file_id"] if saved else "", n, batch.status)
        if batch.status != "completed":
            print(f"synthesize: warning: batch {batch_id} ended {batch.status}; run again to submit what it left", file=sys.stderr)
    except openai.AuthenticationError:
        raise UserError(f"the API refused the key in ${cfg.api_key_env}; export a valid key in {cfg.api_key_env}") from None
    except openai.APIConnectionError:
        raise UserError(f"synthesize.base_url: cannot reach {cfg.base_url or 'https://api.openai.com/v1'} for batch mode; start the server or fix the URL (the batch id is kept)") from None
    finally:
        await client.close()


async def _poll(client, batch_id: str, every_s: float):
    from tqdm import tqdm

    bar = tqdm(desc=f"batch {batch_id}", unit="req", file=sys.stderr, mininterval=every_s)
    try:
        while True:
            batch = await client.batches.retrieve(batch_id)
            counts = batch.request_counts
            if counts is not None:
                bar.total = counts.total
                bar.n = counts.completed + counts.failed
                bar.set_postfix_str(f"{batch.status}, failed {counts.failed}", refresh=True)
            if batch.status in ENDED:
                return batch
            await asyncio.sleep(every_s)
    finally:
        bar.close()


async def _collect(client, file_id: str, cache, budget: Budget, stats: RunStats) -> None:
    """Stream an output (or error) file into the cache, line by line."""
    async with client.files.with_streaming_response.content(file_id) as response:
        async for line in response.iter_lines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                stats.fail("batch_garbage")
                continue
            key = item.get("custom_id")
            resp = item.get("response") or {}
            body = resp.get("body") if isinstance(resp, dict) else None
            if not key or item.get("error") or resp.get("status_code") != 200 or not isinstance(body, dict):
                stats.fail("batch_error")
                continue
            answer = answer_from_body(body, budget)
            if answer is None:
                stats.fail("batch_garbage")
                continue
            stats.paid(answer)
            cache.put(key, answer)


def answer_from_body(body: dict, budget: Budget) -> dict | None:
    try:
        choice = body["choices"][0]
        content = choice["message"].get("content") or ""
        usage = body.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens", 0))
        completion_tokens = int(usage.get("completion_tokens", 0))
    except (KeyError, IndexError, TypeError, AttributeError, ValueError):
        return None
    return {
        "content": content,
        "finish_reason": choice.get("finish_reason"),
        "model": body.get("model"),
        "created": body.get("created"),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cost_usd": budget.cost(prompt_tokens, completion_tokens),
        "batch": True,
    }
