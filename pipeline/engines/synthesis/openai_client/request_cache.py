"""Answers already paid for, keyed by request hash: a kill -9 loses at most the
requests in flight.

One SQLite file, .tenny/synthesize-cache.sqlite (git-ignored, not a DVC output:
DVC caches the stage's *output*, this caches the *API answers* the output was
made from, so changing a filter or a parser re-runs the stage without paying
again). Each answer is committed as it arrives; with ``synchronous=OFF`` a
commit is a write into the OS, which survives the process being killed (only a
power cut can lose the last ones, and those are simply asked again).

Stored per answer: content, finish reason, model, created, token usage and
cost. Never the API key, headers or URL.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from pipeline.core import paths

FILENAME = "synthesize-cache.sqlite"


def default_path() -> Path:
    return paths.STATE_DIR / FILENAME


class RequestCache:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL, at REAL NOT NULL)")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS batches (plan TEXT PRIMARY KEY, batch_id TEXT NOT NULL, "
            "input_file_id TEXT, requests INTEGER, state TEXT NOT NULL, at REAL NOT NULL)"
        )

    def get(self, key: str) -> dict | None:
        row = self.db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def __contains__(self, key: str) -> bool:
        return self.db.execute("SELECT 1 FROM answers WHERE key = ?", (key,)).fetchone() is not None

    def put(self, key: str, answer: dict) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO answers (key, answer, at) VALUES (?, ?, ?)",
            (key, json.dumps(answer, ensure_ascii=False, separators=(",", ":")), time.time()),
        )

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    # batch ids: a killed batch run resumes polling instead of paying again

    def batch_for(self, plan: str) -> dict | None:
        row = self.db.execute(
            "SELECT batch_id, input_file_id, requests, state FROM batches WHERE plan = ?", (plan,)
        ).fetchone()
        return dict(zip(("batch_id", "input_file_id", "requests", "state"), row)) if row else None

    def save_batch(self, plan: str, batch_id: str, input_file_id: str, requests: int, state: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO batches (plan, batch_id, input_file_id, requests, state, at) VALUES (?, ?, ?, ?, ?, ?)",
            (plan, batch_id, input_file_id, requests, state, time.time()),
        )

    def close(self) -> None:
        self.db.close()


class NoCache:
    """``synthesize.cache: false``: remembers nothing, so every run asks again."""

    path = None

    def get(self, key):
        return None

    def __contains__(self, key):
        return False

    def put(self, key, answer):
        pass

    def batch_for(self, plan):
        return None

    def save_batch(self, *args):
        pass

    def close(self):
        pass
