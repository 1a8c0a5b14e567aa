"""`tenny diff`: exact counts on a real git + DVC repository, and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_diff_repo import (  # noqa: E402
    EXPECTED, HOSTILE_ID, HOSTILE_TEXT, V1, dvc, empty_repo, git, make_hostile_versions, make_two_versions,
)

from pipeline import cli  # noqa: E402
from pipeline.commands.diff import diff_records, distribution, histogram  # noqa: E402
from pipeline.core.errors import UserError  # noqa: E402


@pytest.fixture(scope="module")
def repo(tmp_path_factory, built_once) -> Path:
    # A copy of the two versions test_dvc_ops and the app's tests also start from (built once per process).
    return built_once(make_two_versions, tmp_path_factory.mktemp("diffrepo") / "r")


def test_counts_are_exact(repo):
    r = diff_records(repo, "HEAD~1", "HEAD")
    assert {k: getattr(r, k) for k in EXPECTED} == EXPECTED
    assert (r.a.records, r.b.records) == (10, 11)
    assert r.a.kinds == {"text": 10} and r.b.kinds == {"text": 11}
    assert r.b.edits_applied == 1 and r.a.edits_applied == 0
    ids = {e.id for e in r.removed_examples}
    assert ids == {V1[0]["id"], V1[1]["id"]}
    edited = {e.id: e for e in r.edited_examples}
    assert set(edited) == {V1[3]["id"], V1[4]["id"]}
    assert edited[V1[4]["id"]].text == "an edited take on airports"
    assert edited[V1[4]["id"]].old_text == V1[4]["text"]
    assert r.meta_examples == [V1[2]["id"]]
    d = r.decisions
    assert (d.decided_a, d.decided_b, d.changed) == (1, 3, 3)
    assert d.transitions == {"pending → accepted": 2, "accepted → rejected": 1}
    assert d.edit_text_changed == 1
    # Token figures side by side, from counts only.
    assert r.a.token_stats()["count"] == 10 and r.b.token_stats()["count"] == 11
    # params and metrics diffs come from DVC itself.
    assert r.params["params.yaml"]["train.lr"]["old"] == 0.001
    assert r.params["params.yaml"]["train.lr"]["new"] == 0.002
    assert r.metrics["reports/count.json"]["records"]["new"] == 11


def test_reverse_direction_swaps_added_and_removed(repo):
    r = diff_records(repo, "HEAD", "HEAD~1", with_params=False)
    assert (r.added, r.removed, r.edited, r.meta_changed, r.unchanged) == (2, 3, 2, 1, 5)


def test_same_revision_is_all_unchanged(repo):
    r = diff_records(repo, "HEAD", "HEAD", with_params=False, examples=0)
    assert (r.added, r.removed, r.edited, r.meta_changed, r.unchanged) == (0, 0, 0, 0, 11)
    assert r.decisions.changed == 0


def test_workspace_revision(repo):
    r = diff_records(repo, "HEAD", "workspace", with_params=False)
    assert r.unchanged == 11


def test_without_edits_applied_only_the_respaced_body_is_edited(repo):
    r = diff_records(repo, "HEAD~1", "HEAD", apply_edits=False, with_params=False)
    assert r.edited == 1 and r.unchanged == 6


def test_cli_summary_and_json(repo, capsys, monkeypatch):
    monkeypatch.chdir(repo)
    assert cli.main(["--params", "params.yaml", "diff", "HEAD~1", "HEAD", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {k: out[k] for k in EXPECTED} == EXPECTED
    assert out["decisions"]["transitions"]["accepted → rejected"] == 1
    assert out["a"]["tokens"]["count"] == 10
    assert cli.main(["diff", "HEAD~1", "HEAD"]) == 0
    text = capsys.readouterr().out
    assert "added" in text and "edited" in text and "train.lr" in text
    assert "pending → accepted" in text


@pytest.fixture(scope="module")
def hostile_repo(tmp_path_factory, built_once) -> Path:
    return built_once(make_hostile_versions, tmp_path_factory.mktemp("hostile") / "r")


def raw_controls(out: str) -> list[str]:
    """Characters a terminal would act on or hide: C0 (but newline), C1, bidi, zero-width."""
    return [c for c in out if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F
            or c in "\u061c\u200b\u200c\u200d\u200e\u200f\u2060\ufeff"
            or 0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069]


def test_cli_summary_shows_hostile_ids_and_text_escaped(hostile_repo, capsys, monkeypatch):
    monkeypatch.chdir(hostile_repo)
    assert cli.main(["diff", "HEAD~1", "HEAD", "--no-params"]) == 0
    out = capsys.readouterr().out
    assert raw_controls(out) == []
    shown_id = "\\x1b[31m[bold red]x[/]\\u202e\\x9b\\u200b"
    shown_text = "evil \\x1b[2J\\x9b31m \\u202eright-to-left\\u202c zero\\u200bwidth [bold red]x[/]\\nsecond line"
    assert f"  + {shown_id}  {shown_text}\n" in out
    assert f"  - {shown_id}-old  {shown_text}\n" in out
    assert "  ~ to-edit  plain\n" in out and f"→ {shown_text}\n" in out


def test_cli_json_keeps_the_exact_text(hostile_repo, capsys, monkeypatch):
    monkeypatch.chdir(hostile_repo)
    assert cli.main(["diff", "HEAD~1", "HEAD", "--no-params", "--json"]) == 0
    out = capsys.readouterr().out
    assert raw_controls(out) == []  # JSON escapes, not raw characters ...
    data = json.loads(out)  # ... which decode to exactly what the files hold
    assert data["added_examples"] == [{"id": HOSTILE_ID, "text": HOSTILE_TEXT, "old_text": None}]
    assert data["removed_examples"] == [{"id": HOSTILE_ID + "-old", "text": HOSTILE_TEXT, "old_text": None}]
    assert data["edited_examples"] == [{"id": "to-edit", "text": HOSTILE_TEXT, "old_text": "plain"}]


@pytest.mark.parametrize("args, needle", [
    (["diff", "nope-rev", "HEAD"], "revision 'nope-rev' not found"),
    (["diff", "HEAD~1", "HEAD", "data/final/train.jsonl"], "'data/final/train.jsonl' is not in the repository at revision 'HEAD~1'"),
    (["diff", "HEAD", "HEAD", "--examples", "-1"], "--examples"),
])
def test_bad_input_is_one_line(repo, capsys, monkeypatch, args, needle):
    monkeypatch.chdir(repo)
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_path_added_at_one_revision_names_the_revision(tmp_path, built_once):
    repo = built_once(empty_repo, tmp_path / "r")
    (repo / "a.txt").write_text("x")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "one")
    data = repo / "data/deduped/samples.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text(json.dumps(V1[0]) + "\n")
    dvc(repo, "add", "-q", "data/deduped/samples.jsonl")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "two")
    with pytest.raises(UserError, match="at revision 'HEAD~1'"):
        diff_records(repo, "HEAD~1", "HEAD")
    r = diff_records(repo, "HEAD", "HEAD", with_params=False)
    assert r.unchanged == 1 and any("no review log" in n for n in r.notes)


def test_not_a_dvc_repo(tmp_path, capsys, monkeypatch):
    (tmp_path / "plain").mkdir()
    monkeypatch.chdir(tmp_path / "plain")
    assert cli.main(["diff", "HEAD~1", "HEAD"]) == 2
    assert "not inside a DVC repository" in capsys.readouterr().err


def test_data_missing_from_cache_says_pull(repo, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(repo, copy)
    shutil.rmtree(copy / ".dvc" / "cache")
    shutil.rmtree(copy / ".dvc" / "tmp", ignore_errors=True)
    with pytest.raises(UserError, match="dvc pull"):
        diff_records(copy, "HEAD~1", "HEAD", with_params=False)


@pytest.mark.parametrize("bad", ["{not json", '{"id": "x", "text": "\\ud800"}', "[1]", '{"id": "x"}'])
def test_bad_line_names_file_revision_and_line(tmp_path, built_once, bad):
    repo = built_once(empty_repo, tmp_path / "r")
    data = repo / "data/deduped/samples.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text(json.dumps(V1[0]) + "\n" + bad + "\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "bad")
    with pytest.raises(UserError, match=r"samples.jsonl@HEAD:2"):
        diff_records(repo, "HEAD", "HEAD", with_params=False)


def test_distribution_and_histogram():
    d = distribution({1: 5, 10: 4, 100: 1})
    assert d == {"count": 10, "mean": 14.5, "min": 1, "max": 100, "p50": 1, "p90": 10, "p99": 100}
    h = dict(histogram({1: 5, 10: 4, 5000: 1}))
    assert h["0-7"] == 5 and h["8-15"] == 4 and h["4096+"] == 1


@pytest.fixture(scope="module")
def big_repo(tmp_path_factory, built_once) -> Path:
    """v1 → v2 adds 3000 records: `--json --examples 3000` prints far more than a pipe buffer (64 KiB)."""
    from test_diff_repo import rec, write_version

    repo = built_once(empty_repo, tmp_path_factory.mktemp("bigdiff") / "r")
    write_version(repo, [rec(0)], [], 0.001, "v1")
    write_version(repo, [rec(i) for i in range(3000)], [], 0.001, "v2")
    return repo


@pytest.mark.parametrize("args, reader", [
    # head reads a line and exits while diff is still writing
    ("--json --examples 3000", "head -1"),
    # the reader is gone before diff writes anything (this one failed every time before the fix)
    ("", "true"),
])
def test_piping_into_a_reader_that_stops_is_quiet(big_repo, args, reader):
    from test_diff_repo import env

    shell = f"set -o pipefail; tenny diff HEAD~1 HEAD --no-params {args} | {reader}; echo \"status=${{PIPESTATUS[0]}}\""
    done = subprocess.run(["bash", "-c", shell], cwd=big_repo, env=env(), capture_output=True, text=True, timeout=60)
    assert done.stderr == ""
    assert done.stdout.rstrip().endswith("status=0")
    if reader.startswith("head"):
        assert done.stdout.startswith("{")
