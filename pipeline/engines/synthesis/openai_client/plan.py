"""The request plan: every chat request a prompt file stands for, generated lazily.

The plan is never materialized: a grid of a million cells costs one cell of
memory at a time, and it can be walked twice (batch mode writes the input file,
then reads the answers back in the same order). Each request carries its hash,
the cache key and ``meta.request_hash``: a digest of everything that shapes the
answer (model, messages with the nonce, sampling params), never the API key or
the URL.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from math import prod
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.core.records import editable_text, read_records_lenient_ids
from pipeline.engines.synthesis.openai_client.prompt_files import PromptFile, fill


@dataclass(slots=True)
class Sampling:
    model: str
    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None


@dataclass(slots=True)
class Planned:
    key: str
    body: dict             # the request as sent (model, messages, sampling)
    pf: PromptFile
    slots: dict
    meta: dict = field(default_factory=dict)   # mode-specific provenance (source, chunk, rewritten_from)
    source: dict | None = None                 # rewrite: the record being rewritten


def request_body(messages: list[dict], sampling: Sampling) -> dict:
    body = {
        "model": sampling.model,
        "messages": messages,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
    }
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    return body


def request_hash(body: dict) -> str:
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).hexdigest()


def nonce(seed: int, slots: dict, repeat: int) -> str:
    """A uuid derived from the seed and the cell: fresh entropy for the model, same on replay."""
    material = json.dumps([seed, slots, repeat], sort_keys=True, ensure_ascii=False, default=str)
    digest = hashlib.blake2b(material.encode("utf-8"), digest_size=16).digest()
    return str(uuid.UUID(bytes=digest, version=4))


# ---------------------------------------------------------------- grid


def grid_size(pf: PromptFile) -> int:
    total = prod(len(v) for v in pf.grid.values()) if pf.grid else 1
    return min(total, pf.sample) if pf.sample else total


def grid_cells(pf: PromptFile) -> Iterator[dict]:
    names = list(pf.grid)
    if not names:
        yield {}
        return
    values = [pf.grid[n] for n in names]
    total = prod(len(v) for v in values)
    if not pf.sample or pf.sample >= total:
        for combo in itertools.product(*values):
            yield dict(zip(names, combo))
        return
    # A seeded sample of cell indices, decoded in mixed radix: the product is never built.
    for index in sorted(random.Random(pf.seed).sample(range(total), pf.sample)):
        cell = {}
        for name, vals in zip(reversed(names), reversed(values)):
            index, digit = divmod(index, len(vals))
            cell[name] = vals[digit]
        yield {n: cell[n] for n in names}


# ---------------------------------------------------------------- sources per mode


def chunks(pf: PromptFile) -> Iterator[tuple[str, int, str]]:
    """(document, chunk index, text): paragraphs packed up to chunk_chars."""
    for doc in doc_paths(pf):
        text = doc.read_text(encoding="utf-8")
        buf: list[str] = []
        size = 0
        index = 0
        for para in _paragraphs(text, pf.chunk_chars):
            if buf and size + len(para) > pf.chunk_chars:
                yield doc.as_posix(), index, "\n\n".join(buf)
                index += 1
                buf, size = [], 0
            buf.append(para)
            size += len(para) + 2
        if buf:
            yield doc.as_posix(), index, "\n\n".join(buf)


def _paragraphs(text: str, limit: int) -> Iterator[str]:
    for para in (p.strip() for p in text.replace("\r\n", "\n").split("\n\n")):
        while len(para) > limit:  # an overlong paragraph is cut at the last sentence end that fits
            cut = max(para.rfind(". ", 0, limit), para.rfind("\n", 0, limit))
            cut = cut + 1 if cut > limit // 2 else limit
            yield para[:cut].strip()
            para = para[cut:].strip()
        if para:
            yield para


def doc_paths(pf: PromptFile) -> list[Path]:
    paths = sorted(Path(p) for p in glob.glob(pf.docs or "", recursive=True) if Path(p).is_file())
    if not paths:
        raise UserError(f"{pf.path}: docs: no file matches {pf.docs!r}; put source documents there or fix the glob")
    return paths


def rewrite_sources(pf: PromptFile) -> Iterator[dict]:
    path = Path(pf.input or "")
    if not path.is_file():
        raise UserError(f"{pf.path}: input: {path.as_posix()} not found; point it at a records file (.jsonl)")
    return read_records_lenient_ids(path)


# ---------------------------------------------------------------- the plan


def _items(pf: PromptFile) -> Iterator[tuple[dict, dict, dict | None]]:
    """(mode slots, meta, source record) per item the grid is crossed with."""
    if pf.mode == "pairs":
        n_idk = round(pf.per_response * pf.idk_share)
        for doc, index, text in chunks(pf):
            yield ({"chunk": text, "n": pf.per_response, "n_idk": n_idk, "source": Path(doc).name},
                   {"source": doc, "chunk": index}, None)
    elif pf.mode == "rewrite":
        for record in rewrite_sources(pf):
            yield {"text": editable_text(record)}, {"rewritten_from": record["id"]}, record
    elif pf.mode == "lines":
        yield {"n": pf.per_response}, {}, None
    elif pf.mode == "conversations":
        yield {"turns": pf.turns}, {}, None
    else:
        yield {}, {}, None


def item_count(pf: PromptFile) -> int:
    if pf.mode == "pairs":
        return sum(1 for _ in chunks(pf))
    if pf.mode == "rewrite":
        return sum(1 for _ in rewrite_sources(pf))
    return 1


def planned_count(pf: PromptFile) -> int:
    return item_count(pf) * grid_size(pf) * pf.repeat


def plan(pf: PromptFile, sampling: Sampling) -> Iterator[Planned]:
    head: list[dict] = []
    if pf.system:
        head.append({"role": "system", "content": pf.system})
    for ex in pf.examples:
        head += [{"role": "user", "content": ex.user}, {"role": "assistant", "content": ex.assistant}]
    for mode_slots, meta, source in _items(pf):
        for cell in grid_cells(pf):
            for r in range(pf.repeat):
                user = fill(pf.user, {**cell, **mode_slots})
                if pf.nonce:
                    user += f"\n\nNonce: {nonce(pf.seed, {**cell, **meta}, r)}"
                body = request_body(head + [{"role": "user", "content": user}], sampling)
                yield Planned(request_hash(body), body, pf, cell, dict(meta), source)


def plan_all(files: list[PromptFile], sampling: Sampling) -> Iterator[Planned]:
    for pf in files:
        yield from plan(pf, sampling)
