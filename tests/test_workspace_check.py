"""On startup the app looks for damage an earlier crash left (kill -9 of the app, of tenny or
of DVC mid-experiment): DVC's own bookkeeping is repaired, the rest is named with the exact
command, and nothing that could be a person's own work is touched. Real git and DVC."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_app import wait_for  # noqa: E402
from test_app_safety import SLOW, make_trained_repo, snapshot, start_until_step  # noqa: E402
from test_diff_repo import GIT_ENV, git  # noqa: E402

from pipeline.core.params import load_params  # noqa: E402
from pipeline.engines.dvc import processes, recovery, runs, workspace  # noqa: E402
from tui.app import TennyApp  # noqa: E402

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def git_identity(monkeypatch):
    for key, value in GIT_ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def repo(tmp_path, built_once) -> Path:
    """A copy of one trained repo per test process (conftest's `built_once`): each test gets its own."""
    return built_once(make_trained_repo, tmp_path / "r")


def refs(repo: Path) -> str:
    return subprocess.run(["git", "for-each-ref", "refs/exps/exec"], cwd=repo, capture_output=True, text=True,
                          check=True).stdout


async def start_app(repo: Path):
    """The app's startup check as a user sees it: the findings and the notifications shown."""
    app = TennyApp(repo, load_params(repo / "params.yaml"))
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await wait_for(pilot, lambda: app.workspace_findings is not None, what="the startup check")
        await pilot.pause()
        shown = [(n.title, n.message, n.severity) for n in app._notifications]
        mode = app.current_mode
    return app.workspace_findings, shown, mode


async def test_a_clean_repo_shows_nothing(repo):
    before = snapshot(repo)
    findings, shown, mode = await start_app(repo)
    assert findings == [] and shown == [] and mode == "pipeline"
    assert snapshot(repo) == before


async def test_a_stray_exec_ref_is_removed_and_the_app_says_so(repo):
    git(repo, "update-ref", "refs/exps/exec/EXEC_BASELINE", "HEAD")  # as a kill -9 mid `dvc exp run` leaves it
    findings, shown, _ = await start_app(repo)
    assert refs(repo) == ""
    assert [f.line() for f in findings] == [
        "repaired: removed stale experiment refs refs/exps/exec/EXEC_BASELINE (a crashed `dvc exp run` left them)"]
    (title, message, severity), = shown
    assert severity == "warning" and "crashed" in title
    assert message == "• " + findings[0].line()


async def test_a_killed_workspace_experiment_is_named_command_by_command(repo):
    """kill -9 of a `dvc exp run` in the workspace (what older tenny did): HEAD detached, EXEC
    refs, DVC's info files, an uncached metric deleted. The app removes DVC's bookkeeping and
    names the rest; it leaves HEAD and the files alone."""
    run, _ = start_until_step(["exp", "run", "-S", SLOW], repo)
    os.killpg(run.proc.pid, signal.SIGKILL)
    run.wait()
    broken = snapshot(repo)
    assert broken["branch"] == "" and broken["exec_refs"] and broken["reports/train.json"] is None
    findings, _, _ = await start_app(repo)
    lines = [f.line() for f in findings]
    assert lines[0].startswith("repaired: removed stale experiment refs refs/exps/exec/EXEC_BASELINE")
    assert any(line.startswith("repaired: removed") and ".dvc/tmp/exps/run" in line for line in lines)
    assert f"HEAD is detached at {broken['head'][:7]} (it was on main; a crashed `dvc exp run` leaves it so): " \
           "run `git checkout main`" in lines
    assert "missing metrics reports/train.json: run `git checkout -- reports/train.json`" in lines
    assert refs(repo) == "" and not (repo / recovery.EXPS_RUN / "workspace").exists()
    after = snapshot(repo)
    assert {k: after[k] for k in ("branch", "head", "status", "params.yaml")} == \
           {k: broken[k] for k in ("branch", "head", "status", "params.yaml")}
    # The named commands do fix it; then the next start is quiet.
    git(repo, "checkout", "-q", "main")
    git(repo, "checkout", "--", "params.yaml", "reports/train.json")
    assert recovery.repair_safe(repo) == []


def test_a_persons_own_detached_checkout_and_staged_params_raise_nothing(repo):
    (repo / "params.yaml").write_text("train:\n  lr: 0.003\n  max_steps: 3\n")
    git(repo, "commit", "-qam", "lr 0.003")
    (repo / "params.yaml").write_text("train:\n  lr: 0.004\n  max_steps: 3\n")
    git(repo, "add", "params.yaml")
    assert recovery.inspect_workspace(repo) == []
    git(repo, "stash", "-q")
    git(repo, "checkout", "-q", "HEAD~1")  # looking at an older version: not a crash
    assert recovery.inspect_workspace(repo) == []


def test_nothing_is_touched_while_a_dvc_command_runs_here(repo):
    run, _ = start_until_step(runs.exp_run_args([SLOW]), repo)
    try:
        assert run.proc.pid in processes.dvc_processes(repo)
        git(repo, "update-ref", "refs/exps/exec/EXEC_BASELINE", "HEAD")
        assert recovery.repair_safe(repo) == []
        assert "EXEC_BASELINE" in refs(repo)
    finally:
        # Time for DVC's own SIGINT cleanup (removing its --temp copy) even on a loaded machine: past the
        # default 10 s grace it gets SIGTERM and leaves the copy, which the repair then (rightly) reports
        # too; seen once with two workers on 2 busy cores. How fast a cancel is: test_app_safety.
        run.cancel(grace_s=60)
    assert processes.dvc_processes(repo) == []
    assert [f.line() for f in recovery.repair_safe(repo)] == [
        "repaired: removed stale experiment refs refs/exps/exec/EXEC_BASELINE (a crashed `dvc exp run` left them)"]
    assert refs(repo) == ""


def test_a_killed_temp_experiments_copy_is_removed(repo):
    """kill -9 of the app mid `dvc exp run --temp` leaves DVC's copy of the project
    (test_app_safety shows DVC leaves it); the next start removes it and says which."""
    copy = repo / workspace.EXPS_TEMP / "tmpkilled"
    (copy / "models").mkdir(parents=True)
    findings = recovery.repair_safe(repo)
    assert [f.line() for f in findings] == [f"repaired: removed a killed experiment's copy {workspace.EXPS_TEMP}/tmpkilled"]
    assert not copy.exists()


def test_reading_the_config_does_not_hold_the_repair_back():
    """The Pipeline screen reads remotes with `dvc config --list` as the app starts: a read, not a run
    whose refs the startup repair must leave alone; `dvc config KEY VALUE` writes and counts."""
    assert not processes._argv_is_dvc(["/venv/bin/dvc", "config", "--list"])
    assert processes._argv_is_dvc(["/venv/bin/dvc", "config", "core.remote", "shared"])
    assert processes._argv_is_dvc(["python", "-m", "dvc", "exp", "run", "--temp"])
