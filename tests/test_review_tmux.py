"""End to end in a real terminal: review with keys in tmux, kill -9 the app, reopen, find every decision."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from test_review_support import write_records

from pipeline.core.decisions import load_states, read_decisions

TMUX = shutil.which("tmux")
TENNY = Path(sys.executable).parent / "tenny"

pytestmark = pytest.mark.skipif(TMUX is None or not TENNY.exists(), reason="needs tmux and the tenny script")


class Terminal:
    """One private tmux server (its own socket) with a fixed-size window."""

    def __init__(self, cwd: Path, width: int = 100, height: int = 30):
        self.socket = f"tenny-review-{uuid.uuid4().hex[:12]}"
        self.cwd = cwd
        self.size = (width, height)

    def tmux(self, *args: str, check: bool = True) -> str:
        out = subprocess.run([TMUX, "-L", self.socket, *args], capture_output=True, text=True, timeout=10)
        if check and out.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {out.stderr}")
        return out.stdout

    def start(self, command: str) -> None:
        env = "TENNY_REVIEWER=e2e COLORTERM=truecolor"
        self.tmux("new-session", "-d", "-x", str(self.size[0]), "-y", str(self.size[1]), "-c", str(self.cwd),
                  f"{env} exec {command}")

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", check=False)

    def wait_for(self, *texts: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            shown = self.screen()
            if all(t in shown for t in texts):
                return shown
            if time.monotonic() > deadline:
                raise AssertionError(f"never saw {texts!r}; the screen was:\n{shown}")
            time.sleep(0.05)

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", *keys)

    def app_pid(self) -> int:
        return int(self.tmux("display-message", "-p", "#{pane_pid}").strip())

    def close(self) -> None:
        self.tmux("kill-server", check=False)


def wait_dead(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} still alive")


def test_review_kill_and_resume_in_a_real_terminal(tmp_path):
    recs = write_records(tmp_path / "samples.jsonl", 12)
    log = tmp_path / "reviews" / "decisions.jsonl"
    command = f"{shlex.quote(str(TENNY))} review samples.jsonl --decisions reviews/decisions.jsonl"
    term = Terminal(tmp_path)
    try:
        term.start(command)
        term.wait_for("Sample 0:", "#1 of 12", "0/12 reviewed")
        term.keys("a")
        term.wait_for("Sample 1:", "#2 of 12")
        term.keys("x")
        term.wait_for("Sample 2:", "#3 of 12")
        term.keys("Space")
        term.wait_for("Sample 3:", "#4 of 12")
        term.keys("t")
        term.wait_for("Tags")
        term.keys("-l", "keeper")
        term.keys("Enter")
        term.wait_for("tagged: keeper")
        term.keys("a")
        term.wait_for("Sample 4:", "3/12 reviewed")

        # kill -9: no chance to save anything; every decision must already be on disk
        pid = term.app_pid()
        os.kill(pid, signal.SIGKILL)
        wait_dead(pid)
        states = load_states(log)
        assert states[recs[0]["id"]].status == "accepted"
        assert states[recs[1]["id"]].status == "rejected"
        assert recs[2]["id"] not in states
        assert states[recs[3]["id"]].status == "accepted" and states[recs[3]["id"]].tags == ["keeper"]
        assert [d["by"] for d in read_decisions(log)] == ["e2e"] * 4

        # reopen: it resumes at the first undecided sample (the skipped one) with the counts intact
        term.close()
        term = Terminal(tmp_path)
        term.start(command)
        term.wait_for("Sample 2:", "#3 of 12", "3/12 reviewed")
        term.keys("u")  # undo reaches across the restart
        term.wait_for("Sample 3:", "undone")
        term.keys("q")
        deadline = time.monotonic() + 10
        while "Sample 3:" in term.screen() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert load_states(log)[recs[3]["id"]].status == "pending"
    finally:
        term.close()
