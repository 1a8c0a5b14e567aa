"""Helpers (no tests here): a real git + DVC repository with two committed dataset versions.

Imported by test_diff*, test_dvc_ops*, test_app*. Git identity comes from the
environment of each call, never from global config.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pipeline.core.records import make_record, write_records

DVC = str(Path(sys.executable).parent / "dvc")

GIT_ENV = {"GIT_AUTHOR_NAME": "tenny-test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
           "GIT_COMMITTER_NAME": "tenny-test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
           "GIT_CONFIG_NOSYSTEM": "1", "DVC_NO_ANALYTICS": "1"}

# A small two-stage pipeline: "count" reads the dataset and a param, "report" reads count's output.
COUNT_PY = """\
import json, pathlib, yaml
p = yaml.safe_load(open("params.yaml")) or {}
lr = (p.get("train") or {}).get("lr", 0)
n = sum(1 for line in open("data/deduped/samples.jsonl") if line.strip())
pathlib.Path("out").mkdir(exist_ok=True)
pathlib.Path("out/count.txt").write_text(str(n))
pathlib.Path("reports").mkdir(exist_ok=True)
json.dump({"records": n, "lr_seen": lr}, open("reports/count.json", "w"))
print("counted", n)
"""

DVC_YAML = """\
stages:
  count:
    cmd: python count.py
    deps: [count.py, data/deduped/samples.jsonl]
    params: [train.lr]
    outs: [out/count.txt]
    metrics:
      - reports/count.json:
          cache: false
  report:
    cmd: python -c "print(open('out/count.txt').read())" > out/report.txt
    deps: [out/count.txt]
    outs: [out/report.txt]
"""


def env() -> dict:
    e = {**os.environ, **GIT_ENV}
    e["PATH"] = str(Path(sys.executable).parent) + os.pathsep + e.get("PATH", "")
    return e


def sh(repo: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(list(args), cwd=repo, env=env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed in {repo}:\n{done.stdout}\n{done.stderr}")
    return done


def git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return sh(repo, "git", "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main", *args)


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return sh(repo, DVC, *args)


def rec(i: int, text: str | None = None, **meta) -> dict:
    return make_record(text=text or f"sample number {i} about airports", meta={"source": "test", "n": i, **meta})


def init_repo(repo: Path, *, pipeline: bool = True) -> Path:
    repo.mkdir(parents=True, exist_ok=True)
    git(repo, "init", "-q")
    dvc(repo, "init", "-q")
    if pipeline:
        (repo / "count.py").write_text(COUNT_PY)
        (repo / "dvc.yaml").write_text(DVC_YAML)
        (repo / ".gitignore").write_text("/out\n")
    return repo


def empty_repo(repo: Path) -> Path:
    """An empty git + DVC repository: for conftest's `built_once`, so a test copies it instead of
    paying `git init` + `dvc init` (two processes, a second of CPU) each time."""
    return init_repo(repo, pipeline=False)


def write_version(repo: Path, records: list[dict], decisions: list[dict], lr: float, message: str) -> None:
    """One committed version: records DVC-tracked, decisions and params in git."""
    data = repo / "data/deduped/samples.jsonl"
    write_records(data, records)
    log = repo / "data/reviews/decisions.jsonl"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(json.dumps(d) + "\n" for d in decisions))
    (repo / "params.yaml").write_text(f"train:\n  lr: {lr}\n")
    (repo / "reports").mkdir(exist_ok=True)
    (repo / "reports/count.json").write_text(json.dumps({"records": len(records), "lr_seen": lr}))
    dvc(repo, "add", "-q", "data/deduped/samples.jsonl")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)


def decision(rid: str, action: str, **extra) -> dict:
    return {"id": rid, "action": action, "at": "2026-01-01T00:00:00", "by": "test", **extra}


V1 = [rec(i) for i in range(10)]


def v2_records() -> list[dict]:
    """v1 → v2: r0, r1 removed; r10-r12 added; r2 meta changed; r3 re-spaced (same id, new body)."""
    out = []
    for r in V1[2:]:
        r = json.loads(json.dumps(r))
        if r["meta"]["n"] == 2:
            r["meta"]["template"] = "changed"
        if r["meta"]["n"] == 3:
            r["text"] = r["text"].replace(" ", "   ", 1)
        out.append(r)
    return out + [rec(i) for i in (10, 11, 12)]


V1_DECISIONS = [decision(V1[6]["id"], "accept")]
V2_DECISIONS = V1_DECISIONS + [
    decision(V1[4]["id"], "edit", text="an edited take on airports"),
    decision(V1[5]["id"], "accept"),
    decision(V1[6]["id"], "reject"),
]

# What `tenny diff HEAD~1 HEAD` must report for the versions above.
EXPECTED = {"added": 3, "removed": 2, "edited": 2, "meta_changed": 1, "unchanged": 5}


def make_two_versions(repo: Path) -> Path:
    init_repo(repo)
    write_version(repo, V1, V1_DECISIONS, 0.001, "v1")
    write_version(repo, v2_records(), V2_DECISIONS, 0.002, "v2")
    return repo


# Text no terminal may receive raw: an SGR and a clear-screen, a C1 CSI, a bidi
# override, a zero-width space, Rich markup; in ids as well as bodies.
HOSTILE_ID = "\x1b[31m[bold red]x[/]\u202e\x9b\u200b"
HOSTILE_TEXT = "evil \x1b[2J\x9b31m \u202eright-to-left\u202c zero\u200bwidth [bold red]x[/]\nsecond line"


def make_hostile_versions(repo: Path) -> Path:
    """v1 → v2: one hostile record removed, one added, one edited into hostile text."""
    init_repo(repo, pipeline=False)
    kept = rec(0)
    write_version(repo, [kept, {"id": HOSTILE_ID + "-old", "text": HOSTILE_TEXT}, {"id": "to-edit", "text": "plain"}],
                  [], 0.001, "v1")
    write_version(repo, [kept, {"id": HOSTILE_ID, "text": HOSTILE_TEXT}, {"id": "to-edit", "text": HOSTILE_TEXT}],
                  [], 0.001, "v2")
    return repo


def test_the_two_versions_are_what_the_expected_counts_say():
    """The fixture's own arithmetic (cheap; keeps this module from being an empty test file)."""
    v1 = {r["id"]: r for r in V1}
    v2 = {r["id"]: r for r in v2_records()}
    assert len(v2) == 11 and len(v1.keys() - v2.keys()) == EXPECTED["removed"]
    assert len(v2.keys() - v1.keys()) == EXPECTED["added"]
    same = v1.keys() & v2.keys()
    assert sum(v1[i]["text"] != v2[i]["text"] for i in same) == 1  # plus one review edit = 2 edited
    assert sum(v1[i]["meta"] != v2[i]["meta"] for i in same) == EXPECTED["meta_changed"]
