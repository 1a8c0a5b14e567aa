"""The Eval screen counts what eval answered: its header's "N prompts" is eval.json's "prompts answered N".

They once disagreed (17 and 25) because eval asks a prompt twice when a fixed
prompt is also a sampled val prompt, or val holds the same question twice, and
the screen merged rows by prompt text, dropping the repeats' answers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_app import on_screen, wait_for  # noqa: E402

from pipeline.core.params import EvalParams, load_params  # noqa: E402
from tui.app import TennyApp  # noqa: E402
from tui.screens.eval_view import load_generations  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def chat(uid: str, user: str, answer: str) -> dict:
    return {"id": uid, "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


VAL = [chat("v1", "Airports?", "Malls with a fee."), chat("v2", "Mondays?", "A subscription."),
       chat("v3", "Airports?", "Queues, then more queues.")]


def test_eval_asks_a_repeated_prompt_once_per_time_it_is_drawn():
    from pipeline.stages.eval import eval_prompts

    asked = eval_prompts(EvalParams(prompts=["Airports?"], sample_val=3), VAL)
    assert [p for p, _ in asked].count("Airports?") == 3  # the fixed one and both val samples


def test_rows_with_both_answers_are_kept_one_per_prompt_asked(tmp_path):
    path = tmp_path / "g.jsonl"
    rows = [{"prompt": "Airports?", "base": "b1", "adapter": "a1"}, {"prompt": "Mondays?", "base": "b2", "adapter": "a2"},
            {"prompt": "Airports?", "base": "b3", "adapter": "a3", "reference": "Queues."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_generations(path) == [{"prompt": r["prompt"], "base": r["base"], "adapter": r["adapter"]} for r in rows]


def test_one_row_per_model_files_pair_repeats_in_order(tmp_path):
    path = tmp_path / "g.jsonl"
    rows = [{"prompt": "P", "model": "base", "output": "b1"}, {"prompt": "P", "model": "base", "output": "b2"},
            {"prompt": "Q", "model": "base", "output": "bq"},
            {"prompt": "P", "model": "adapter", "output": "a1"}, {"prompt": "Q", "model": "lora", "output": "aq"},
            {"prompt": "P", "model": "adapter", "output": "a2"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [(g["prompt"], g["base"], g["adapter"]) for g in load_generations(path)] == [
        ("P", "b1", "a1"), ("P", "b2", "a2"), ("Q", "bq", "aq")]


async def test_the_header_count_is_prompts_answered(tmp_path):
    from pipeline.stages.eval import eval_prompts

    asked = eval_prompts(EvalParams(prompts=["Airports?"], sample_val=3), VAL)
    reports = tmp_path / "reports"
    reports.mkdir()
    (tmp_path / ".dvc").mkdir()
    # written as the eval stage writes them: one row per prompt asked, and the count beside them
    (reports / "generations.jsonl").write_text("".join(
        json.dumps({"prompt": p, "base": f"base {i}", "adapter": f"adapter {i}"}) + "\n" for i, (p, _) in enumerate(asked)))
    (reports / "eval.json").write_text(json.dumps({"prompts_answered": len(asked), "base": {"loss": 2.0},
                                                   "adapter": {"loss": 1.5}}))
    app = TennyApp(tmp_path, load_params(tmp_path / "none.yaml"), start="eval")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: bool(screen.generations) or bool(screen.problems), 20, "eval files read")
        await pilot.pause(0.1)
        drawn = on_screen(app)
        assert f"{len(asked)} prompts ·" in drawn and f"prompts answered {len(asked)}" in drawn, drawn
        assert [g["adapter"] for g in screen.generations] == [f"adapter {i}" for i in range(len(asked))]
