"""The Eval screen at 80×24: metrics in full, the judge's figures and reasons, bad files as messages."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from textual.app import App

sys.path.insert(0, str(Path(__file__).parent))
from test_app import on_screen, raw_controls, wait_for

from pipeline.core.params import load_params
from tui.app import TennyApp
from tui.screens.eval_view import EvalScreen

pytestmark = pytest.mark.timeout(60)
SIZE = (80, 24)
HOSTILE = "[bold red]loud[/] \x1b[2J\u202eflipped"

EVAL = {
    "val_samples": 40, "val_tokens_scored": 12345,
    "base": {"loss": 4.7527, "perplexity": 115.9, "distinct_1": 0.41, "median_words": 41.0, "eos_rate": 0.6},
    "adapter": {"loss": 4.3152, "perplexity": 74.83, "distinct_1": 0.52, "median_words": 33.5, "eos_rate": 0.95},
    "perplexity_ratio": 0.6456, "prompts_answered": 2, "train_median_words": 35.0, "quantization": "none",
    "device": "cpu",
}
JUDGE = {
    "model": "gpt-4o-mini", "baseline": "base", "challenger": "adapter", "n_prompts": 25, "n_pairs": 50,
    "invalid": 0, "wins": 30, "losses": 12, "ties": 8, "win_rate": 0.68, "win_rate_low": 0.54,
    "win_rate_high": 0.79, "position_bias": 0.55,
    "persona": {"baseline": {"mean": 3.1, "low": 2.6, "high": 3.6, "n": 25},
                "challenger": {"mean": 7.4, "low": 6.9, "high": 7.9, "n": 25}},
    "cost_usd": 0.0123, "requests": {"sent": 100, "cached": 0},
}
PROMPTS = ["Airports?", "Mondays?"]


def pair(prompt: str, first: str, base: str, adapter: str, verdict: str | None, winner: str | None, reason: str,
         names=("base", "adapter")) -> dict:
    a, b = (base, adapter) if first == names[0] else (adapter, base)
    return {"kind": "pair", "prompt": prompt, "shown_first": first, "answer_a": a, "answer_b": b,
            "verdict": verdict, "winner": winner, "reason": reason}


def judgments(names=("base", "adapter")) -> list[dict]:
    bn, an = names
    return [
        pair(PROMPTS[0], bn, "Airports are fine.", "Malls with a boarding fee.", "B", an,
             f"B is the persona: {HOSTILE}", names),
        pair(PROMPTS[0], an, "Airports are fine.", "Malls with a boarding fee.", "tie", "tie",
             "Both answer; tie when shown this way.", names),
        {"kind": "persona", "prompt": PROMPTS[0], "model": an, "answer": "Malls with a boarding fee.", "score": 8,
         "reason": "dry and cynical"},
        pair(PROMPTS[1], bn, "Mondays are a day.", "Mondays are a subscription.", None, None,
             "unparseable reply", names),
        pair(PROMPTS[1], an, "Mondays are a day.", "Mondays are a subscription.", "A", an,
             "A commits to the bit", names),
    ]


def write_reports(root: Path, *, eval_json=EVAL, judge=JUDGE, lines=None) -> Path:
    reports = root / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    (root / ".dvc").mkdir(exist_ok=True)
    if eval_json is not None:
        (reports / "eval.json").write_text(json.dumps(eval_json) if isinstance(eval_json, dict) else eval_json)
    gens = [{"prompt": PROMPTS[0], "base": "Airports are fine.", "adapter": "Malls with a boarding fee."},
            {"prompt": PROMPTS[1], "base": "Mondays are a day.", "adapter": "Mondays are a subscription."}]
    (reports / "generations.jsonl").write_text("".join(json.dumps(g) + "\n" for g in gens))
    if judge is not None:
        (reports / "judge.json").write_text(json.dumps(judge) if isinstance(judge, dict) else judge)
    rows = judgments() if lines is None else lines
    (reports / "judgments.jsonl").write_text(
        rows if isinstance(rows, str) else "".join(json.dumps(r) + "\n" for r in rows))
    return root


def flat(drawn: str) -> str:
    """Screen text with wrapped lines joined: a sentence wrapped at 80 columns reads as one."""
    return " ".join(drawn.split())


def eval_app(root: Path) -> TennyApp:
    return TennyApp(root, load_params(root / "none.yaml"), start="eval")


async def loaded(pilot, screen) -> None:
    await wait_for(pilot, lambda: bool(screen.generations) or bool(screen.problems), 20, "eval files read")
    await pilot.pause(0.1)


async def test_metrics_show_every_number_whole_base_adapter_and_change_at_80x24(tmp_path):
    app = eval_app(write_reports(tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot, app.screen)
        drawn = on_screen(app)
        rows = {line.split("│")[1].split()[0]: line.split("│")[1].split()[1:] for line in drawn.splitlines()
                if line.count("│") >= 2 and line.split("│")[1].split()}
        # one row per metric: base | adapter | change, never a prefix of the number (74.83 once showed as 7)
        assert rows["perplexity"] == ["115.9", "74.83", "-41.07", "(-35", "%)"]
        assert rows["loss"][:2] == ["4.753", "4.315"]
        assert rows["median_words"][:2] == ["41", "33.5"]
        assert "tokens scored 12,345" in drawn and "device cpu" in drawn
        assert "68 % (54–79 %) over 50 verdicts, position bias 55 %, 0 invalid" in flat(drawn)


async def test_judge_tab_shows_interval_persona_and_each_orders_reasons_as_text(tmp_path):
    app = eval_app(write_reports(tmp_path))
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await loaded(pilot, screen)
        await pilot.press("j")
        await pilot.pause(0.1)
        drawn = on_screen(app)
        assert "adapter over base: 68 % (54–79 %) over 50 verdicts, position bias 55 %, 0 invalid" in flat(drawn)
        assert "base 3.1 (2.6–3.6), n 25" in drawn and "adapter 7.4 (6.9–7.9), n 25" in drawn
        # first prompt selected: both orders, who was shown first, the verdict and the reason
        assert "order 1: base shown first → verdict B: adapter wins" in drawn
        verdicts = str(screen.query_one("#eval-verdicts").render())
        assert "B is the persona: [bold red]loud[/] \\x1b[2J\\u202eflipped" in verdicts  # markup shown, not applied
        assert "order 2: adapter shown first → verdict tie: tie" in verdicts
        assert "Both answer; tie when shown this way." in verdicts
        assert "adapter: 8/10" in verdicts and "dry and cynical" in verdicts
        assert raw_controls(drawn) == [] and raw_controls(verdicts) == []
        # the next prompt: an unparseable verdict says so, it is not counted as a win for anyone
        await pilot.press("down")
        await wait_for(pilot, lambda: "Mondays?" in str(screen.query_one("#eval-verdicts").render()), 5, "prompt 2")
        verdicts = str(screen.query_one("#eval-verdicts").render())
        assert "verdict None: invalid (unparseable)" in verdicts and "A commits to the bit" in verdicts
        assert "?, adapter" in on_screen(app)  # the prompt table's who-won per order
        # the answers tab follows to the same prompt, and back
        await pilot.press("a")
        await pilot.pause(0.1)
        assert "Mondays are a subscription." in on_screen(app)
        await pilot.press("up")
        await pilot.press("j")
        await wait_for(pilot, lambda: "Airports?" in str(screen.query_one("#eval-verdicts").render()), 5, "follows")


async def test_judge_off_says_how_to_turn_it_on(tmp_path):
    app = eval_app(write_reports(tmp_path, judge={"model": None, "n_pairs": 0}, lines=[]))
    async with app.run_test(size=SIZE) as pilot:
        await loaded(pilot, app.screen)
        for tab in ("m", "j"):  # on the overview and on the judge's own tab
            await pilot.press(tab)
            await pilot.pause(0.1)
            drawn = flat(on_screen(app))
            assert "judge off: set eval.judge.model in params.yaml (docs/judge.md)" in drawn
            assert "over base" not in drawn


@pytest.mark.parametrize("broken, says", [
    ({"judge": "{not json"}, "reports/judge.json: not valid JSON"),
    ({"lines": '{"kind": "pair"}\n{oops\n'}, "reports/judgments.jsonl:2: malformed JSON"),
    ({"eval_json": "[1, 2"}, "reports/eval.json: not valid JSON"),
    ({"eval_json": None}, "reports/eval.json does not exist yet"),
])
async def test_broken_or_missing_files_are_a_message_not_a_crash(tmp_path, broken, says):
    app = eval_app(write_reports(tmp_path, **broken))
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await loaded(pilot, screen)
        message = flat(str(screen.query_one("#eval-message").render()))
        assert says in message
        assert len(screen.generations) == 2  # what could be read is still shown
        await pilot.press("j")
        await pilot.press("a")
        await pilot.pause(0.1)
        assert "Malls with a boarding fee." in on_screen(app)


class JudgeHost(App):
    CSS_PATH = str(Path(__file__).resolve().parent.parent / "tui" / "app.tcss")

    def __init__(self, root: Path, folder: Path):
        super().__init__()
        self.root, self.folder = root, folder

    def on_mount(self) -> None:
        self.push_screen(EvalScreen(self.root, judge_dir=self.folder, names=("v1", "exp-warm")))


async def test_a_judge_folder_of_two_revisions_shows_their_answers_and_verdicts(tmp_path):
    names = ("v1", "exp-warm")
    folder = tmp_path / ".tenny" / "judge" / "v1_vs_exp-warm"
    folder.mkdir(parents=True)
    (folder / "judge.json").write_text(json.dumps({**JUDGE, "baseline": "v1", "challenger": "exp-warm",
                                                   "win_rate": 0.25, "win_rate_low": 0.05, "win_rate_high": 0.7,
                                                   "unanswered": 2}))
    (folder / "judgments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in judgments(names)))
    app = JudgeHost(tmp_path, folder)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: len(screen.generations) == 2, 20, "judge folder read")
        await pilot.pause(0.1)
        drawn = flat(on_screen(app))
        assert "exp-warm over v1: 25 % (5–70 %) over 50 verdicts" in drawn  # opens on the judge view
        assert "0 invalid, 2 unanswered (budget)" in drawn  # a budget stop is not hidden
        assert "order 1: v1 shown first → verdict B: exp-warm wins" in drawn
        await pilot.press("m")  # a comparison of two revisions has no metrics tab
        await pilot.press("a")
        await pilot.pause(0.1)
        drawn = on_screen(app)
        # each revision's answer under its own name, rebuilt from the verdicts whichever order they were shown
        assert "─ v1 ─" in drawn and "─ exp-warm ─" in drawn
        left, right = zip(*[(line[:40], line[40:]) for line in drawn.splitlines()])
        assert "Airports are fine." in "".join(left) and "Malls with a boarding fee." in "".join(right)
        await pilot.press("escape")  # pushed on top of another screen: Esc goes back
        await wait_for(pilot, lambda: not isinstance(app.screen, EvalScreen), 5, "back")
