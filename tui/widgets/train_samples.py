"""The answers a run gave while it trained (dvclive/samples.jsonl), one round of prompts at a time.

Shows the newest round and follows the run as new rounds land; ←/→ step to
earlier and later rounds, so a person sees the voice change. Answers are
model text: shown as plain text, every unsafe character escaped.
"""

from __future__ import annotations

from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from pipeline.core.text import clean


def render_round(rows: list[dict], step: int, index: int, rounds: int, kept_step: int | None = None,
                 before: dict[str, dict] | None = None, before_step: int | None = None) -> Text:
    """One round: which step, where it sits among the rounds, then each prompt, its answer and, dimmed,
    its answer one round before (``before``: prompt → row), so the change shows at a glance."""
    t = Text()
    t.append(f"step {step:,}", style="bold")
    t.append(f"   round {index + 1} of {rounds}", style="dim")
    if kept_step is not None and step == kept_step:
        t.append("   the step the run kept", style="bold cyan")
    t.append("\n")
    for row in rows:
        t.append(clean(row.get("prompt", "")) + "\n", style="bold dim")
        answer = clean(" ".join(str(row.get("answer", "")).split()))
        t.append("  " + (answer or "(empty)"))
        flags = []
        if not row.get("eos", True):
            flags.append("no EOS: cut at the limit")
        if row.get("repeated_4grams"):
            flags.append(f"{row['repeated_4grams']} repeated 4-grams")
        if flags:
            t.append(f"  [{'; '.join(flags)}]", style="yellow")
        t.append("\n")
        earlier = (before or {}).get(row.get("prompt"))
        if earlier is not None:
            said = clean(" ".join(str(earlier.get("answer", "")).split())) or "(empty)"
            t.append(f"  step {before_step:,}: {said}\n", style="dim")
    return t


class SamplesPanel(VerticalScroll):
    """A round of answers, newest by default; ``step_by(-1)`` / ``step_by(1)`` move through the rounds."""

    DEFAULT_CSS = """
    SamplesPanel { height: 1fr; border: round $panel; padding: 0 1; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.samples: list[dict] = []
        self.steps: list[int] = []
        self.index: int | None = None  # None: follow the newest round
        self.kept_step: int | None = None
        self._shown: tuple = ()

    def compose(self):
        yield Static(id="samples-text")

    def on_mount(self) -> None:
        self.border_title = "answers while training"
        self.border_subtitle = "← earlier · → later"
        self._draw()

    @property
    def current(self) -> int | None:
        """Index of the round on screen (the newest when following)."""
        if not self.steps:
            return None
        return len(self.steps) - 1 if self.index is None else min(self.index, len(self.steps) - 1)

    def show(self, samples: list[dict], kept_step: int | None = None) -> None:
        self.samples = samples
        self.steps = sorted({row["step"] for row in samples})
        self.kept_step = kept_step
        self._draw()

    def step_by(self, delta: int) -> None:
        at = self.current
        if at is None:
            return
        at = max(0, min(len(self.steps) - 1, at + delta))
        # Back at the newest round: follow the run again.
        self.index = None if at == len(self.steps) - 1 else at
        self._draw()

    def _draw(self) -> None:
        at = self.current
        key = (len(self.samples), at, self.kept_step)
        if key == self._shown and self.is_mounted:
            return
        self._shown = key
        text = self.query_one("#samples-text", Static)
        if at is None:
            text.update(Text("no answers yet: the run answers a few held-out prompts every train.sample_every "
                             "steps", style="dim"))
            return
        step = self.steps[at]
        before_step = self.steps[at - 1] if at else None
        before = {r.get("prompt"): r for r in self.samples if r["step"] == before_step}
        text.update(render_round([r for r in self.samples if r["step"] == step], step, at, len(self.steps),
                                 self.kept_step, before, before_step))
