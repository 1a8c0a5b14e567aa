"""A training run's identity: everything that can change the adapter's weights, hashed.

Two runs with the same identity reach the same adapter (seeded), so one may
continue the other's checkpoints; a run of another identity never does. The
parts, each a digest one can compare:

- ``params``: the train params but the bookkeeping ones (when to save, log or
  evaluate; how many checkpoints to keep; threads; which checkpoint to resume);
- ``data``: the bytes of data/final/{train,val}.jsonl;
- ``base``: the bytes of every file in models/base/ (weights, tokenizer,
  config, base.json);
- ``code``: the bytes of every project module the train stage imports (the
  import closure dvc.yaml's deps list, engines/code_closure.py), as installed;
- ``init_adapter``: the bytes of the adapter a run continues from (or none);
- ``processes``: how many processes train (the global batch is per process).

Not in it: the device and the library versions. A run killed on one GPU may
continue on another; numerics differ in the last bits, not in what the run is.

Digests of big files (a base's weights) are kept in .tenny/file_hashes.json
by path, size, mtime and inode, as DVC and git do: a run start reads a
multi-GB base once, not every time. A file modified in the last seconds is
always read again (git's "racy" rule: its mtime may not have ticked yet).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.records import write_json
from pipeline.engines.code_closure import code_digests

# Knobs that change when and how a run saves, reports or resumes, never the weights it reaches.
BOOKKEEPING = {"resume", "save_every", "keep_checkpoints", "eval_every", "threads", "log_every", "dataloader_workers",
               "sample_every", "sample_prompts", "sample_max_new_tokens"}
PARTS = ("params", "data", "base", "code", "init_adapter", "processes")
# The files of an adapter that decide its weights (not its training.json: seconds, dates).
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
TRAIN_MODULE = "pipeline.stages.train"
RACY_NS = 3_000_000_000  # files younger than this are hashed afresh, never taken from the cache


@dataclass(frozen=True)
class RunIdentity:
    id: str
    parts: dict

    def differs(self, other: dict) -> list[str]:
        """The parts in which ``other`` (another run's parts) differs from this run, in PARTS order."""
        return [p for p in PARTS if other.get(p) != self.parts.get(p)]

    def as_json(self) -> dict:
        return {"id": self.id, "parts": self.parts}


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class DigestCache:
    """File digests remembered by (size, mtime, inode); ``path=None``: remember nothing."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, list] = {}
        self.dirty = False
        if path is not None:
            try:
                self.entries = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self.entries = {}

    def digest(self, f: Path) -> str:
        st = f.stat()
        key, sig = str(f.resolve()), [st.st_size, st.st_mtime_ns, st.st_ino]
        hit = self.entries.get(key)
        if hit is not None and hit[:3] == sig:
            return hit[3]
        value = file_digest(f)
        if self.path is not None and time.time_ns() - st.st_mtime_ns > RACY_NS:
            self.entries[key] = sig + [value]
            self.dirty = True
        return value

    def save(self) -> None:
        if self.dirty and self.path is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_json(self.path, self.entries)
            except OSError:
                pass  # a cache: the next run reads the files again


def digest_of(named: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(named, sort_keys=True).encode()).hexdigest()[:16]


def folder_digest(folder: Path, names: tuple[str, ...] | None = None, cache: DigestCache | None = None) -> str:
    """One digest over the files in ``folder`` (recursively; only ``names`` when given) and their paths."""
    cache = cache or DigestCache(None)
    files = sorted(f for f in folder.rglob("*") if f.is_file() and (names is None or f.name in names))
    return digest_of({f.relative_to(folder).as_posix(): cache.digest(f) for f in files})


def params_digest(train_params: dict) -> str:
    # With early stopping, the evaluations decide where the run stops: then eval_every moves the weights.
    skip = BOOKKEEPING - {"eval_every"} if train_params.get("early_stopping") else BOOKKEEPING
    knobs = {k: v for k, v in train_params.items() if k not in skip}
    return hashlib.sha256(json.dumps(knobs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def identify(train_params: dict, data_files: list[Path], base_dir: Path, init_adapter: Path | None,
             processes: int, cache_file: Path | None = None) -> RunIdentity:
    """The identity of a run of ``train_params`` on these files with ``processes`` processes."""
    cache = DigestCache(cache_file)
    parts = {
        "params": params_digest(train_params),
        "data": digest_of({f.name: cache.digest(f) for f in data_files}),
        "base": folder_digest(base_dir, cache=cache),
        "code": digest_of(code_digests(TRAIN_MODULE)),
        "init_adapter": folder_digest(init_adapter, ADAPTER_FILES, cache) if init_adapter is not None else None,
        "processes": processes,
    }
    cache.save()
    return RunIdentity(digest_of({k: str(v) for k, v in parts.items()}), parts)


def difference_note(mine: RunIdentity, theirs: dict | None) -> str:
    """What makes another run another run, in a few words: "its code and data differ"."""
    if not theirs:
        return "made before tenny recorded run identities"
    differ = mine.differs(theirs)
    if not differ:
        return "the same identity"
    named = [f"processes ({theirs.get('processes')} vs {mine.parts['processes']})" if p == "processes" else p
             for p in differ]
    return "its " + (", ".join(named[:-1]) + " and " + named[-1] if len(named) > 1 else named[0]) + \
        (" differ" if len(named) > 1 else " differs")
