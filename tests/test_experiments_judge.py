"""Experiments screen: mark two experiments, `j` runs the real `tenny judge` on them against the loopback
judge server, in the background, cancellable, and opens the Eval screen on what it wrote."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from conftest import REPO, env_with_bin
from openai_server import FakeOpenAI
from test_app import on_screen, raw_controls, wait_for
from test_diff_repo import empty_repo

from pipeline.core.params import load_params
from tui.app import TennyApp
from tui.screens.eval_view import EvalScreen

pytestmark = pytest.mark.timeout(240)
SIZE = (80, 24)
KEY = "sk-exp-judge-test"
PROMPTS = ["Airports?", "Gyms?"]
# The stage writes one answer per prompt in the voice the experiment's param asks for.
GEN = f"""import json, yaml
who = yaml.safe_load(open("gen.yaml"))["who"]
with open("reports/generations.jsonl", "w") as f:
    for p in {PROMPTS!r}:
        f.write(json.dumps({{"prompt": p, "base": "plain " + p, "adapter": who + " answer to " + p}}) + "\\n")
"""


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, env=env_with_bin(), check=True, capture_output=True)


def dvc(root: Path, *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env_with_bin(), capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def prefers_warm(body: dict) -> str:
    """A judge that reads the two labelled answers and picks the WARM one; scores WARM answers 9."""
    turn = next(m["content"] for m in body["messages"] if m["role"] == "user")
    pair = re.search(r"\[Answer A\]\n(.*?)\n\[End of answer A\]", turn, re.DOTALL)
    if pair:
        label = "A" if pair.group(1).startswith("WARM") else "B"
        return json.dumps({"winner": label, "reason": f"[bold]{label}[/] sounds like Tenny \x1b[2J"})
    answer = re.search(r"\[Answer\]\n(.*?)\n\[End of answer\]", turn, re.DOTALL).group(1)
    return json.dumps({"score": 9 if answer.startswith("WARM") else 2, "reason": "scored"})


@pytest.fixture
def server():
    s = FakeOpenAI(responder=prefers_warm).start_in_thread()
    yield s
    # The cancelled judge's requests still sleep out their 30 s latency in the server, and its shutdown
    # waits for them: end them first (this teardown used to sit out stop_thread's 10 s join timeout).
    s._loop.call_soon_threadsafe(lambda: [task.cancel() for task in asyncio.all_tasks(s._loop)])
    s.stop_thread()
    assert not s._thread.is_alive(), "the fake judge server did not stop"


@pytest.fixture
def repo(tmp_path, monkeypatch, built_once) -> Path:
    """Two DVC experiments, `cold` and `warm`, each with its own reports/generations.jsonl in git."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    for name, value in (("GIT_AUTHOR_NAME", "t"), ("GIT_AUTHOR_EMAIL", "t@t.invalid"),
                        ("GIT_COMMITTER_NAME", "t"), ("GIT_COMMITTER_EMAIL", "t@t.invalid")):
        monkeypatch.setenv(name, value)
    root = built_once(empty_repo, tmp_path / "r")  # git init + dvc init, copied
    (root / "data/prompts").mkdir(parents=True)
    (root / "reports").mkdir()
    shutil.copy(REPO / "data/prompts/judge.yaml", root / "data/prompts/judge.yaml")
    (root / "gen.py").write_text(GEN)
    (root / "gen.yaml").write_text("who: plain\n")
    (root / "params.yaml").write_text("{}\n")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"gen": {
        "cmd": f"{sys.executable} gen.py", "deps": ["gen.py"], "params": [{"gen.yaml": ["who"]}],
        "outs": [{"reports/generations.jsonl": {"cache": False}}]}}}))
    dvc(root, "repro", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "v1")
    for name, who in (("cold", "COLD"), ("warm", "WARM")):
        dvc(root, "exp", "run", "-q", "-S", f"gen.yaml:who={who}", "-n", name)
    return root


def configure_judge(root: Path, server: FakeOpenAI, latency: float = 0.0) -> None:
    server.latency = latency
    (root / "params.yaml").write_text(yaml.safe_dump({"eval": {"judge": {
        "model": "judge-model", "base_url": server.url, "concurrency": 2, "timeout_s": 60.0,
        "retry_base_s": 0.01, "retry_max_s": 0.05, "cache": False}}}))


async def mark(pilot, screen, names: list[str]) -> None:
    table = screen.query_one("#experiments")
    await wait_for(pilot, lambda: {"cold", "warm"} <= {r.name for r in screen.rows.values()}, 60, "exp show")
    for name in names:
        key = next(k for k, r in screen.rows.items() if r.name == name)
        table.move_cursor(row=table.get_row_index(key), column=1)
        await pilot.press("space")
    assert [screen.rows[k].name for k in screen.marked] == names


def judge_state(screen) -> str:
    return " ".join(str(screen.query_one("#exp-judge").render()).split())


async def test_j_judges_two_marked_experiments_and_opens_the_verdicts(repo, server):
    app = TennyApp(repo, load_params(repo / "params.yaml"), start="experiments")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await mark(pilot, screen, ["cold", "warm"])

        # Judge not configured: tenny judge exits 2 and its message is shown in the app.
        await pilot.press("j")
        await wait_for(pilot, lambda: screen.judging is None and "failed" in judge_state(screen), 60, "judge off")
        assert "exit 2" in judge_state(screen) and "eval.judge.model is not set" in judge_state(screen)
        assert server.stats.chat_requests == 0

        # A slow judge: the run shows its state, the table stays usable, Esc cancels it.
        configure_judge(repo, server, latency=30.0)
        await pilot.press("j")
        await wait_for(pilot, lambda: server.stats.chat_requests > 0, 60, "the judge asked")
        proc = screen.judging
        assert proc is not None and "judging cold (A) vs warm (B)" in judge_state(screen)
        await pilot.press("down")  # the UI is not blocked while the judge runs
        await pilot.press("escape")
        await wait_for(pilot, lambda: screen.judging is None, 30, "cancel")
        assert proc.poll() is not None and "cancelled" in judge_state(screen)
        assert not isinstance(app.screen, EvalScreen)

        # Judged to the end: the Eval screen opens on the verdicts, warm winning every pair.
        configure_judge(repo, server)
        await pilot.press("j")
        await wait_for(pilot, lambda: isinstance(app.screen, EvalScreen), 120, "judge done")
        eval_screen = app.screen
        await wait_for(pilot, lambda: eval_screen.judge is not None, 20, "judge files read")
        await pilot.pause(0.1)
        drawn = on_screen(app)
        flat = " ".join(drawn.split())
        assert "warm over cold: 100 %" in flat and "over 2 prompts" in flat and "0 invalid" in flat
        assert "cold shown first → verdict B: warm wins" in flat
        verdicts = str(eval_screen.query_one("#eval-verdicts").render())
        assert "[bold]B[/] sounds like Tenny \\x1b[2J" in verdicts and raw_controls(drawn) == []
        out = repo / ".tenny/judge/cold_vs_warm"
        assert json.loads((out / "judge.json").read_text())["win_rate"] == 1.0
        await pilot.press("a")
        await pilot.pause(0.1)
        assert "COLD answer to Airports?" in on_screen(app) and "WARM answer to Airports?" in on_screen(app)
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen, 5, "back to experiments")
        assert "judged cold vs warm" in judge_state(screen)
