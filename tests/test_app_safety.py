"""The app never harms the repo: overrides checked before DVC sees them, experiments
that run in DVC's temp copy, and cancels or kills that leave branch, index, refs
and outputs as the user left them. Real git and DVC on a small project whose
"train" stage is a slow loop (the same `dvc exp run` / `dvc repro` a real
training run gets, in seconds instead of minutes)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_app import wait_for  # noqa: E402
from test_diff_repo import GIT_ENV, dvc, git  # noqa: E402

from pipeline.core import overrides  # noqa: E402
from pipeline.core.errors import UserError  # noqa: E402
from pipeline.core.params import load_params  # noqa: E402
from pipeline.engines.dvc import runs, workspace  # noqa: E402
from tui.app import TennyApp  # noqa: E402

pytestmark = pytest.mark.timeout(120)

TRAIN_PY = """\
import json, pathlib, time, yaml
p = yaml.safe_load(open("params.yaml"))["train"]
out = pathlib.Path("models/adapter")
out.mkdir(parents=True, exist_ok=True)
for step in range(p["max_steps"]):
    print("step", step, flush=True)
    time.sleep(0.05)
(out / "adapter.txt").write_text(f"lr={p['lr']} steps={p['max_steps']}")
pathlib.Path("reports").mkdir(exist_ok=True)
json.dump({"lr": p["lr"], "steps": p["max_steps"]}, open("reports/train.json", "w"))
"""

DVC_YAML = """\
stages:
  train:
    cmd: python train.py
    deps: [train.py]
    params: [train.lr, train.max_steps]
    outs: [models/adapter]
    metrics:
      - reports/train.json:
          cache: false
"""

SLOW = "train.max_steps=2000"  # 100 s of steps: always cancelled long before the end


@pytest.fixture(autouse=True)
def git_identity(monkeypatch):
    # `dvc exp run` commits; the app's runs inherit this environment.
    for key, value in GIT_ENV.items():
        monkeypatch.setenv(key, value)


def make_trained_repo(repo: Path) -> Path:
    """A committed project whose one stage has run: outputs in the workspace and the cache."""
    repo.mkdir(parents=True)
    git(repo, "init", "-q")
    dvc(repo, "init", "-q")
    (repo / "train.py").write_text(TRAIN_PY)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "params.yaml").write_text("train:\n  lr: 0.002\n  max_steps: 3\n")
    dvc(repo, "repro", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "trained")
    return repo


def snapshot(repo: Path) -> dict:
    """Everything a run must leave as it was: branch, index, experiment refs, params and outputs."""
    def out(*args):
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True).stdout

    files = {}
    for path in ("params.yaml", "dvc.lock", "reports/train.json", "models/adapter/adapter.txt"):
        f = repo / path
        files[path] = hashlib.sha256(f.read_bytes()).hexdigest() if f.exists() else None
    return {"branch": out("symbolic-ref", "-q", "HEAD").strip(), "head": out("rev-parse", "HEAD").strip(),
            "status": out("status", "--porcelain"), "exec_refs": out("for-each-ref", "refs/exps/exec"), **files}


def start_until_step(args: list[str], repo: Path, step: int = 5) -> tuple[runs.Run, list[str]]:
    run = runs.Run(args, repo).start()
    seen: list[str] = []
    for line in run.lines():
        seen.append(line)
        if line == f"step {step}":
            return run, seen
    raise AssertionError("the run ended before it was interrupted:\n" + "\n".join(seen))


@pytest.fixture
def repo(tmp_path, built_once) -> Path:
    return built_once(make_trained_repo, tmp_path / "r")


def test_cancelled_experiment_leaves_branch_index_refs_and_outputs(repo):
    before = snapshot(repo)
    state = workspace.workspace_state(repo)
    run, _ = start_until_step(runs.exp_run_args([SLOW]), repo)
    assert snapshot(repo) == before  # while it runs, too: it runs in DVC's temp copy
    t0 = time.monotonic()
    run.cancel()
    assert time.monotonic() - t0 < 10, "SIGINT alone should stop dvc and the stage"
    assert workspace.settle_workspace(repo, state, interrupted_stage=run.workspace_stage, restore=True) == []
    assert snapshot(repo) == before
    assert not list((repo / workspace.EXPS_TEMP).glob("tmp*"))


def test_sigkilled_experiment_leaves_the_workspace_and_its_copy_is_removed(repo):
    before = snapshot(repo)
    state = workspace.workspace_state(repo)
    run, _ = start_until_step(runs.exp_run_args([SLOW]), repo)
    os.killpg(run.proc.pid, signal.SIGKILL)  # as a crash would: no cleanup at all
    run.wait()
    assert snapshot(repo) == before
    assert list((repo / workspace.EXPS_TEMP).glob("tmp*")), "DVC's copy is left behind by a kill"
    notes = workspace.settle_workspace(repo, state, restore=True)
    assert [n for n in notes if "removed the killed experiment's copy" in n] and len(notes) == 1
    assert not list((repo / workspace.EXPS_TEMP).glob("tmp*"))
    assert snapshot(repo) == before


def test_settle_repairs_what_a_workspace_experiment_breaks(repo):
    """Without --temp, a cancelled `dvc exp run` leaves a detached HEAD, EXEC refs, staged
    files and deleted outputs: what the app used to do. settle_workspace puts it all back."""
    before = snapshot(repo)
    state = workspace.workspace_state(repo)
    run, _ = start_until_step(["exp", "run", "-S", SLOW], repo)
    os.killpg(run.proc.pid, signal.SIGTERM)
    run.wait()
    broken = snapshot(repo)
    assert broken["branch"] == "" and broken["exec_refs"] and broken["reports/train.json"] is None
    notes = workspace.settle_workspace(repo, state, interrupted_stage=run.workspace_stage, restore=True)
    assert any("back on main" in n for n in notes) and any("refs/exps/exec/EXEC_HEAD" in n for n in notes)
    after = snapshot(repo)
    # The run's edit of params.yaml stays in the working tree (unstaged): the user's file, shown as modified.
    assert after.pop("params.yaml") != before.pop("params.yaml") and after.pop("status") == " M params.yaml\n"
    before.pop("status")
    assert after == before
    git(repo, "checkout", "--", "params.yaml")


def test_cancelled_repro_restores_the_previous_outputs(repo):
    (repo / "params.yaml").write_text("train:\n  lr: 0.002\n  max_steps: 2000\n")
    before = snapshot(repo)
    state = workspace.workspace_state(repo)
    workspace.backup_uncached(repo)
    run, _ = start_until_step(runs.repro_args(), repo)
    assert not (repo / "reports/train.json").exists()  # DVC deleted them before running the stage
    run.cancel()
    assert run.workspace_stage == "train"
    notes = workspace.settle_workspace(repo, state, interrupted_stage=run.workspace_stage, restore=True)
    assert notes == ["restored from the DVC cache: models/adapter", "restored reports/train.json as it was before the run"]
    assert snapshot(repo) == before
    assert not (repo / workspace.BACKUP).exists()


BAD_OVERRIDES = [
    ("train.lr=abc", "train.lr: Input should be a valid number"),
    ("train.nope=1", "unknown key 'train.nope'"),
    ("train.lorra.r=4", "did you mean 'train.lora'?"),
    ("train.lr=-1", "train.lr: Input should be greater than 0"),
    ("train.lr=0.002", "train.lr is already 0.002 in params.yaml: nothing to try"),
]


@pytest.mark.parametrize("override, message", BAD_OVERRIDES)
def test_check_overrides_refuses_before_dvc(repo, override, message):
    with pytest.raises(UserError, match=None) as err:
        overrides.check_overrides(repo, [override])
    assert message in str(err.value)


def test_check_overrides_accepts_a_real_change(repo):
    assert overrides.check_overrides(repo, ["train.lr=1e-3", "train.max_steps=3"]) == ["train.lr=1e-3", "train.max_steps=3"]


async def test_invalid_override_in_the_app_writes_and_starts_nothing(repo):
    before = snapshot(repo)
    raw = (repo / "params.yaml").read_bytes()
    app = TennyApp(repo, load_params(repo / "params.yaml"))
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: len(screen.stages) == 1, what="stage states")
        for override, message in BAD_OVERRIDES:
            await pilot.press("o")
            field = screen.query_one("#overrides")
            assert app.focused is field
            field.value = ""
            await pilot.press(*override, "enter")
            await pilot.pause(0.05)
            assert message in str(screen.query_one("#pipeline-message").render())
            assert screen.current is None and screen.last_exit is None
            await pilot.press("escape")
            assert app.focused is not field
        assert "$ dvc" not in screen.query_one("#run-log").text
    assert (repo / "params.yaml").read_bytes() == raw
    assert snapshot(repo) == before


async def test_experiment_cancelled_from_the_app_leaves_the_repo(repo):
    before = snapshot(repo)
    app = TennyApp(repo, load_params(repo / "params.yaml"))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: len(screen.stages) == 1, what="stage states")
        await pilot.press("o", *SLOW, "enter", "escape")
        log = screen.query_one("#run-log")
        await wait_for(pilot, lambda: "step 5" in log.text, what="training steps")
        assert "$ dvc exp run --temp -S train.max_steps=2000" in log.text
        await pilot.press("x")
        await wait_for(pilot, lambda: screen.current is None, what="cancel")
        assert "cancelled" in str(screen.query_one("#run-status").render())
        assert "workspace: branch, index and outputs as before the run" in log.text
    assert snapshot(repo) == before


async def test_every_screen_opens_without_a_text_field_focused_and_digits_switch(tmp_path):
    from textual.widgets import Input

    (tmp_path / ".dvc").mkdir()
    app = TennyApp(tmp_path, load_params(tmp_path / "none.yaml"))
    async with app.run_test(size=(80, 24)) as pilot:
        for key, mode in (("2", "training"), ("3", "diff"), ("4", "experiments"), ("5", "eval"), ("1", "pipeline")):
            await pilot.press(key)
            await pilot.pause(0.05)
            assert app.current_mode == mode
            assert not isinstance(app.focused, Input), f"{mode} opened in a text field"
        await pilot.press("o")
        assert app.focused is app.screen.query_one("#overrides")
        await pilot.press("3")  # typed into the field, not a screen switch
        assert app.current_mode == "pipeline" and app.focused.value == "3"
        await pilot.press("escape", "3")
        assert app.current_mode == "diff"
