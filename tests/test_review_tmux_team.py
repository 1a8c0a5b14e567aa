"""Two reviewers on one checkout in a real terminal (issue 27): side by side in tmux, kill -9 one, nothing lost."""

from __future__ import annotations

import os
import shlex
import signal
import time

import pytest
from test_review_support import write_records
from test_review_tmux import TENNY, TMUX, Terminal, wait_dead

from pipeline.core.decisions import load_states, read_decisions

pytestmark = pytest.mark.skipif(TMUX is None or not TENNY.exists(), reason="needs tmux and the tenny script")


def test_two_reviewers_side_by_side_and_a_kill(tmp_path):
    # a project as a new user has it after `tenny dedupe`: the samples, an empty reviews folder
    (tmp_path / "data/deduped").mkdir(parents=True)
    recs = write_records(tmp_path / "data/deduped/samples.jsonl", 12)
    (tmp_path / "data/reviews").mkdir()
    alice_log, bob_log = tmp_path / "data/reviews/alice.jsonl", tmp_path / "data/reviews/bob.jsonl"
    alice, bob = Terminal(tmp_path, 110, 30), Terminal(tmp_path, 110, 30)
    review = f"{shlex.quote(str(TENNY))} review --as"
    try:
        alice.start(f"{review} alice")
        bob.start(f"{review} bob")
        alice.wait_for("Sample 0:", "#1 of 12", timeout=60)
        bob.wait_for("Sample 0:", "#1 of 12", timeout=60)
        alice.keys("a")
        alice.wait_for("Sample 1:")
        alice.keys("a")
        alice.wait_for("Sample 2:")
        bob.wait_for("alice 2")  # bob's screen follows alice's log live
        bob.keys("x")  # bob still had sample 0 up: his own decision on it counts too
        bob.wait_for("Sample 2:")  # sample 1 is done (alice, overlap 1): his queue skips it

        pid = bob.app_pid()
        os.kill(pid, signal.SIGKILL)
        wait_dead(pid)
        alice.keys("a")
        alice.wait_for("Sample 3:")
        assert [(d["id"], d["action"]) for d in read_decisions(bob_log)] == [(recs[0]["id"], "reject")]
        assert [d["action"] for d in read_decisions(alice_log)] == ["accept"] * 3
        assert {d["by"] for d in read_decisions(alice_log)} == {"alice"}

        # bob comes back: his queue opens past everything the team has done
        bob.close()
        bob = Terminal(tmp_path, 110, 30)
        bob.start(f"{review} bob")
        bob.wait_for("Sample 3:", "team done 3", timeout=60)
        bob.keys("q")
        alice.keys("q")
        deadline = time.monotonic() + 10
        while "Sample 3:" in alice.screen() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert load_states(alice_log)[recs[2]["id"]].status == "accepted"
        assert load_states(bob_log)[recs[0]["id"]].status == "rejected"
    finally:
        alice.close()
        bob.close()
