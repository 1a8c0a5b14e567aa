"""The app's Pipeline screen in a real terminal (tmux), on a real trained repo: a bad
override writes nothing, and an experiment cancelled with `x` or ended by kill -9
of the app leaves branch, index, experiment refs and outputs as they were."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_app_safety import SLOW, make_trained_repo, snapshot  # noqa: E402
from test_diff_repo import GIT_ENV  # noqa: E402
from test_review_tmux import TENNY, TMUX, Terminal, wait_dead  # noqa: E402

pytestmark = [pytest.mark.skipif(TMUX is None or not TENNY.exists(), reason="needs tmux and the tenny script"),
              pytest.mark.timeout(120)]


def start_app(repo: Path) -> Terminal:
    term = Terminal(repo, width=80, height=24)
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in GIT_ENV.items())
    bindir = shlex.quote(str(TENNY.parent))
    term.tmux("new-session", "-d", "-x", "80", "-y", "24", "-c", str(repo),
              f"env {env} PATH={bindir}:$PATH TERM=xterm-256color {shlex.quote(str(TENNY))}")
    term.wait_for("up to date", timeout=30)
    return term


def field_border(term: Terminal) -> str:
    """The override field's border with its colours, which change as it gains or loses focus."""
    # The border's colours, not the whole row: the cursor's blink changes the row on its own,
    # which read as "left the field" before a loaded machine had handled the Escape.
    rows = term.tmux("capture-pane", "-p", "-e", check=False).splitlines()
    row = next((r for r in rows if "Repro all" in r), "")
    return row[:row.find("▊") + 1]


def wait_border_change(term: Terminal, was: str, what: str) -> None:
    deadline = time.monotonic() + 10
    while field_border(term) == was:
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def type_override(term: Terminal, text: str) -> None:
    """Focus the field, type, and press Enter once the text is on screen, as a person would.
    The text goes only once the field is drawn focused: typed earlier, on a loaded machine, its
    characters reached the Pipeline screen as keys ("2" opened the Training screen)."""
    unfocused = field_border(term)
    term.keys("o")
    wait_border_change(term, unfocused, "o did not focus the override field")
    term.keys("-l", text)
    term.wait_for(text)
    term.keys("Enter")


def leave_field(term: Terminal) -> None:
    """Escape, then wait until the field is drawn unfocused (its colours change): ESC and a
    key that follow each other within the terminal's escape timeout read as alt+key."""
    focused = field_border(term)
    term.keys("Escape")
    wait_border_change(term, focused, "escape did not leave the override field")


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


@pytest.fixture
def repo(tmp_path, built_once) -> Path:
    """A copy of one trained repo per test process (conftest's `built_once`): each test gets its own."""
    return built_once(make_trained_repo, tmp_path / "r")


def test_invalid_override_writes_and_starts_nothing(repo):
    before = snapshot(repo)
    raw = (repo / "params.yaml").read_bytes()
    term = start_app(repo)
    try:
        type_override(term, "train.lr=abc")
        term.wait_for("train.lr: Input should be a valid number")
        assert "$ dvc" not in term.screen()
        leave_field(term)
        term.keys("q")
        deadline = time.monotonic() + 10
        while "Repro all" in term.screen():  # the app quits and its pane closes
            assert time.monotonic() < deadline, "q did not quit"
            time.sleep(0.05)
        assert (repo / "params.yaml").read_bytes() == raw and snapshot(repo) == before
        assert not (repo / ".dvc/tmp/exps/standalone").exists() or not any((repo / ".dvc/tmp/exps/standalone").glob("tmp*"))
    finally:
        term.close()


def test_experiment_cancelled_with_x_leaves_the_repo(repo):
    before = snapshot(repo)
    term = start_app(repo)
    try:
        type_override(term, SLOW)
        term.wait_for("step 5", timeout=30)
        assert snapshot(repo) == before  # while it runs
        leave_field(term)
        term.keys("x")
        term.wait_for("cancelled: dvc exp run", timeout=30)
        term.wait_for("as before the run")
        assert snapshot(repo) == before
    finally:
        term.close()


def test_kill_9_of_the_app_mid_experiment_leaves_the_repo(repo):
    before = snapshot(repo)
    term = start_app(repo)
    try:
        type_override(term, SLOW)
        term.wait_for("step 5", timeout=30)
        app = term.app_pid()
        running = children(app)
        assert running, "dvc should be a child of the app"
        os.kill(app, signal.SIGKILL)
        assert snapshot(repo) == before
        for pid in running:  # dvc outlives the app until its output pipe breaks
            wait_dead(pid, timeout=30)
        assert snapshot(repo) == before
    finally:
        term.close()
