"""Eval view: base and adapter answers to the same prompts, side by side, with the metrics.

Reads reports/eval.json (metrics) and reports/generations.jsonl through the
shared JSONL reader. Generations are model output: shown as text, never markup.
Accepted row shapes (the eval stage writes the first):

- ``{"prompt", "base", "adapter"}`` (also ``base_output`` / ``adapter_output``);
- one row per model: ``{"prompt", "model": "base"|"adapter", "output"|"text"|"completion"}``.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.core.text import as_line, as_text, clean
from pipeline.engines.dvc_ops import flatten

_BASE_KEYS = ("base", "base_output", "base_generation", "base_text")
_ADAPTER_KEYS = ("adapter", "adapter_output", "adapter_generation", "adapter_text", "tuned")
_OUTPUT_KEYS = ("output", "text", "completion", "generation")


def _first(row: dict, keys) -> str | None:
    for k in keys:
        v = row.get(k)
        if isinstance(v, str):
            return v
    return None


def load_generations(path: Path) -> list[dict]:
    """[{"prompt", "base", "adapter"}], merging one-row-per-model files by prompt."""
    from pipeline.core.records import iter_jsonl

    merged: dict[str, dict] = {}
    for _, row in iter_jsonl(path):
        prompt = row.get("prompt")
        if not isinstance(prompt, str):
            messages = row.get("messages")
            prompt = json.dumps(messages, ensure_ascii=False) if messages else ""
        entry = merged.setdefault(prompt, {"prompt": prompt, "base": None, "adapter": None})
        base, adapter = _first(row, _BASE_KEYS), _first(row, _ADAPTER_KEYS)
        if base is None and adapter is None:
            model = str(row.get("model") or row.get("which") or "").lower()
            out = _first(row, _OUTPUT_KEYS)
            if "adapter" in model or "tuned" in model or "lora" in model:
                adapter = out
            elif model:
                base = out
        if base is not None:
            entry["base"] = base
        if adapter is not None:
            entry["adapter"] = adapter
    return list(merged.values())


def load_metrics(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist yet: run the eval stage (`dvc repro eval`, or r on the pipeline screen)") from None
    except ValueError as err:
        raise UserError(f"{path}: not valid JSON ({err}); re-run `dvc repro eval`") from None
    return flatten(data) if isinstance(data, dict) else {}


def _answer(prompt: str, output: str | None, missing: str) -> Text:
    """The prompt in bold, then the model's answer; both model or user text, so never markup."""
    out = Text()
    out.append_text(as_text(prompt, multiline=True, style="bold"))
    out.append("\n\n")
    out.append_text(as_text(output, multiline=True) if output is not None else Text(missing, style="dim"))
    return out


class EvalScreen(Screen):
    BINDINGS = [Binding("ctrl+r", "refresh", "Reload")]

    def __init__(self, root: str | Path | None = None, **kwargs):
        super().__init__(**kwargs)
        self.root = Path(root or Path.cwd())
        self.generations: list[dict] = []
        self.metrics: dict = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="eval-message")
        with Horizontal(id="eval-top"):
            yield DataTable(id="eval-metrics", cursor_type="row")
            yield DataTable(id="eval-prompts", cursor_type="row")
        with Horizontal(id="eval-sides"):
            with VerticalScroll(id="eval-base-pane"):
                yield Static(id="eval-base")
            with VerticalScroll(id="eval-adapter-pane"):
                yield Static(id="eval-adapter")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = clean(f"eval — {self.root / paths.REPORTS}")
        self.query_one("#eval-metrics", DataTable).border_title = "metrics"
        self.query_one("#eval-prompts", DataTable).border_title = "prompts"
        self.query_one("#eval-base-pane").border_title = "base model"
        self.query_one("#eval-adapter-pane").border_title = "base + adapter"

    def on_screen_resume(self) -> None:
        # Every visit re-reads reports/: an eval may have run since.
        self.action_refresh()

    def action_refresh(self) -> None:
        self._load()

    @work(thread=True, exclusive=True, group="eval-load", exit_on_error=False)
    def _load(self) -> None:
        problems = []
        metrics, gens = {}, []
        try:
            metrics = load_metrics(self.root / paths.EVAL_REPORT)
        except UserError as err:
            problems.append(str(err))
        gen_path = self.root / paths.GENERATIONS
        if gen_path.exists():
            try:
                gens = load_generations(gen_path)
            except UserError as err:
                problems.append(str(err))
        else:
            problems.append(f"{gen_path} does not exist yet: run the eval stage (`dvc repro eval`)")
        self.app.call_from_thread(self._show, metrics, gens, problems)

    def _show(self, metrics: dict, gens: list[dict], problems: list[str]) -> None:
        self.metrics, self.generations = metrics, gens
        self.query_one("#eval-message", Static).update(
            as_text("\n".join(problems), multiline=True, style="red") if problems else
            Text(f"{len(gens)} prompts · {len(metrics)} metrics", style="dim"))
        mt = self.query_one("#eval-metrics", DataTable)
        mt.clear(columns=True)
        mt.add_columns("metric", "value")
        for k, v in metrics.items():
            mt.add_row(as_line(k, 80), as_line(f"{v:.6g}" if isinstance(v, float) else v, 80))
        pt = self.query_one("#eval-prompts", DataTable)
        pt.clear(columns=True)
        pt.add_columns("#", "prompt")
        for i, g in enumerate(gens):
            pt.add_row(str(i + 1), as_line(g["prompt"], 120), key=str(i))
        self.show_generation(0)

    def show_generation(self, index: int) -> None:
        if not self.generations:
            base = adapter = Text("no generations", style="dim")
        else:
            g = self.generations[max(0, min(index, len(self.generations) - 1))]
            base = _answer(g["prompt"], g["base"], "(no base output)")
            adapter = _answer(g["prompt"], g["adapter"], "(no adapter output)")
        self.query_one("#eval-base", Static).update(base)
        self.query_one("#eval-adapter", Static).update(adapter)

    @on(DataTable.RowHighlighted, "#eval-prompts")
    def _row(self, event: DataTable.RowHighlighted) -> None:
        self.show_generation(event.cursor_row)
