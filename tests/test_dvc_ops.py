"""pipeline/engines/dvc/ (cli, project, runs, experiments, remotes) against real git + DVC: states, runs, experiments, remotes, cancel."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_diff_repo import empty_repo, git, make_two_versions  # noqa: E402

from pipeline.commands.diff import diff_records  # noqa: E402
from pipeline.core import overrides  # noqa: E402
from pipeline.core.errors import UserError  # noqa: E402
from pipeline.core.params import RemoteParams  # noqa: E402
from pipeline.engines.dvc import cli, experiments, project, remotes, revisions, runs  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, built_once) -> Path:
    # A copy of the two versions test_diff and the app's tests also start from (built once per process);
    # this module's tests then share it in order.
    return built_once(make_two_versions, tmp_path_factory.mktemp("opsrepo") / "r")


def states(repo) -> dict[str, str]:
    return {s.name: s.state for s in project.stage_states(repo)}


def test_states_runs_experiments_in_order(repo):
    assert states(repo) == {"count": "never run", "report": "never run"}
    lines: list[str] = []
    assert runs.stream(runs.repro_args("count"), repo, lines.append) == 0
    assert any("counted 11" in line for line in lines)
    s = {x.name: x for x in project.stage_states(repo)}
    assert s["count"].state == "up to date" and s["report"].state == "never run"
    assert s["count"].metrics == {"records": 11, "lr_seen": 0.002}
    # A param change makes the stage "changed", in DVC's words.
    (repo / "params.yaml").write_text("train:\n  lr: 0.005\n")
    s = {x.name: x for x in project.stage_states(repo)}
    assert s["count"].state == "changed" and "train.lr" in s["count"].detail
    (repo / "params.yaml").write_text("train:\n  lr: 0.002\n")
    assert runs.stream(runs.repro_args(), repo, lines.append) == 0
    assert states(repo) == {"count": "up to date", "report": "up to date"}
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "ran")

    # dvc exp run -S: an experiment whose params and metrics differ.
    assert runs.stream(runs.exp_run_args(["train.lr=0.01"], name="lr-up"), repo, lines.append) == 0
    rows = experiments.exp_show(repo)
    names = [r.name for r in rows]
    assert "workspace" in names and "lr-up" in names
    exp = next(r for r in rows if r.name == "lr-up")
    assert exp.params["train.lr"] == 0.01 and exp.metrics["lr_seen"] == 0.01 and exp.ref == "lr-up"
    r = diff_records(repo, "HEAD", "lr-up")
    assert r.unchanged == 11 and r.added == 0
    assert r.params["params.yaml"]["train.lr"] == {"old": 0.002, "new": 0.01, "diff": pytest.approx(0.008)}
    assert r.metrics["reports/count.json"]["lr_seen"]["new"] == 0.01


def test_reading_at_a_revision_names_what_is_missing(repo, tmp_path):
    """dvc.lock read through its one reader: an output it lists whose data is not cached says `dvc pull`;
    a path it does not list (a prefix of one, which a text search once took for it) is not in the repo."""
    if git(repo, "ls-files", "dvc.lock").stdout.strip() == "":  # run alone: commit a run first
        assert runs.stream(runs.repro_args(), repo, lambda line: None) == 0
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "ran")
    clone = tmp_path / "clone"  # a second machine: git has dvc.lock, the DVC cache is empty
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    assert "out/count.txt" in project.lock_outs(project.read_lock(clone, "HEAD"))
    for rev in ("HEAD", None):
        with pytest.raises(UserError, match="tracked by DVC but its data is not in the local cache: run `dvc pull`"):
            with revisions.open_at(clone, "out/count.txt", rev):
                pass
        with pytest.raises(UserError, match="not in the repository"):
            with revisions.open_at(clone, "out/count", rev):
                pass
    assert not revisions.exists_at(clone, "out/count", "HEAD")
    with revisions.open_at(clone, "count.py", "HEAD") as fh:  # plain git files come from git
        assert fh.read() == (repo / "count.py").read_bytes()


def test_parse_exp_show_shape():
    data = [
        {"rev": "workspace", "name": None, "data": {"params": {"params.yaml": {"data": {"train": {"lr": 1}}}},
                                                    "metrics": {}}, "error": None, "experiments": None},
        {"rev": "abc123", "name": "main", "data": {"timestamp": "2026-01-01T00:00:00",
                                                   "params": {"params.yaml": {"data": {"train": {"lr": 1}}}},
                                                   "metrics": {"m.json": {"data": {"loss": 0.5}}}},
         "experiments": [{"name": "e1", "revs": [{"rev": "def456", "name": "e1", "data": {
             "params": {"params.yaml": {"data": {"train": {"lr": 2}}}},
             "metrics": {"m.json": {"data": {"loss": 0.25}}}}}]}]},
    ]
    rows = experiments.parse_exp_show(data)
    assert [(r.name, r.ref, r.parent) for r in rows] == [("workspace", "workspace", None), ("main", "abc123", None),
                                                           ("e1", "e1", "abc123")]
    assert rows[2].params == {"train.lr": 2} and rows[2].metrics == {"loss": 0.25}


def test_push_pull_status_with_a_local_folder_remote(repo, tmp_path):
    storage = tmp_path / "storage"
    storage.mkdir()
    name = remotes.ensure_remote(repo, RemoteParams(name="shared", url=str(storage)))
    assert name == "shared" and remotes.remotes(repo)["shared"] == str(storage)
    assert remotes.cloud_status(repo, name)  # nothing pushed yet: DVC lists what the remote lacks
    lines: list[str] = []
    assert runs.stream(remotes.push_args(name), repo, lines.append) == 0
    assert remotes.cloud_status(repo, name) == {}
    assert any(storage.rglob("*")), "push wrote objects into the folder remote"
    # A second machine: a clone with an empty cache pulls the data version back.
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    remotes.ensure_remote(clone, RemoteParams(name="shared", url=str(storage)))
    assert not (clone / "data/deduped/samples.jsonl").exists()
    assert runs.stream(remotes.pull_args(name), clone, lines.append) == 0
    assert (clone / "data/deduped/samples.jsonl").read_bytes() == (repo / "data/deduped/samples.jsonl").read_bytes()


def test_relative_remote_url_is_relative_to_the_project(repo):
    remotes.ensure_remote(repo, RemoteParams(name="rel", url="../relstore"))
    assert remotes.remotes(repo)["rel"] == str((repo / "../relstore").resolve())
    assert remotes.ensure_remote(repo, RemoteParams()) is None  # no url: leave DVC's config alone


def test_cancel_stops_the_whole_process_group(tmp_path, built_once):
    repo = built_once(empty_repo, tmp_path / "slow")
    marker = repo / "child.pid"
    (repo / "dvc.yaml").write_text(
        "stages:\n  slow:\n    cmd: python -c \"import os,time; open('child.pid','w').write(str(os.getpid())); "
        "time.sleep(60)\"\n    outs: [never.txt]\n")
    run = runs.Run(runs.repro_args("slow"), repo).start()
    deadline = time.time() + 30
    while not marker.exists() or not marker.read_text():
        assert time.time() < deadline, "stage did not start"
        time.sleep(0.1)
    child = int(marker.read_text())
    t = time.time()
    run.cancel(grace_s=5)
    assert run.returncode is not None and run.cancelled
    assert time.time() - t < 10
    assert _gone(child), "the stage command (dvc's child) outlived the cancel"


def _gone(pid: int, wait_s: float = 5.0) -> bool:
    """Dead or a zombie: a killed grandchild is reaped by whoever adopted it, maybe late."""
    deadline = time.time() + wait_s
    while time.time() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def test_not_a_dvc_repo_and_dvc_missing(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="not inside a DVC repository"):
        cli.find_root(tmp_path)
    with pytest.raises(UserError, match="not a DVC repository"):
        project.stage_definitions(tmp_path)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "nobin" / "python"))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="dvc is not installed"):
        cli.dvc_command()


def test_parse_overrides():
    assert overrides.parse_overrides(" train.lr=1e-3, train.lora.r=16 ") == ["train.lr=1e-3", "train.lora.r=16"]
    with pytest.raises(UserError, match="dotted.key=value"):
        overrides.parse_overrides("train.lr")


def test_a_long_remote_url_is_read_whole(tmp_path, built_once):
    """`dvc remote list` wraps a long url at the terminal's width; the remote's url must come back whole."""
    repo = built_once(empty_repo, tmp_path / "r")
    url = str(tmp_path / ("a-folder-name-long-enough-to-wrap-" * 4) / "storage")
    assert remotes.ensure_remote(repo, RemoteParams(name="team", url=url)) == "team"
    assert remotes.remotes(repo) == {"team": url}
