"""Eval view: the metrics base vs adapter, the answers side by side, the judge's verdicts.

Three tabs, each sized for 80×24 and up:

- metrics (m): one row per metric, base | adapter | change, numbers in full;
  the run's facts and the judge's one-line summary under it;
- answers (a): base and adapter answers to the same prompts, side by side;
- judge (j): win rate with its interval, persona scores, and for the selected
  prompt both orders' verdicts with the judge's reasons.

Reads reports/eval.json, reports/generations.jsonl and the judge files
(reports/judge.json, reports/judgments.jsonl). Opened on the folder a
``tenny judge A B --out DIR`` wrote (``judge_dir``), it shows that comparison:
the answers of A and B and the verdicts, no metrics. Generations and verdicts
are model output: shown as text, never markup. Accepted generation rows (the
eval stage writes the first):

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
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.core.text import as_line, as_text, clean
from pipeline.core.params import flatten
from tui.global_keys import GlobalKeysFirst
from tui.widgets.eval_judge import (
    JUDGE_FILE,
    JUDGE_OFF,
    JudgeReport,
    fmt_change,
    fmt_number,
    load_judge,
    prompt_verdict_cell,
    summary_line,
    summary_text,
    verdicts_text,
)

_BASE_KEYS = ("base", "base_output", "base_generation", "base_text")
_ADAPTER_KEYS = ("adapter", "adapter_output", "adapter_generation", "adapter_text", "tuned")
_OUTPUT_KEYS = ("output", "text", "completion", "generation")
_SIDES = ("base", "adapter")
# eval.json's run facts, in the order a reader wants them, with the words to say them.
_FACTS = (("val_samples", "val samples"), ("val_tokens_scored", "tokens scored"),
          ("prompts_answered", "prompts answered"), ("perplexity_ratio", "perplexity ratio"),
          ("train_median_words", "train median words"), ("quantization", "quantization"), ("device", "device"))


def _first(row: dict, keys) -> str | None:
    for k in keys:
        v = row.get(k)
        if isinstance(v, str):
            return v
    return None


def load_generations(path: Path) -> list[dict]:
    """[{"prompt", "base", "adapter"}], one per prompt eval answered, so the count is eval.json's
    ``prompts_answered``: a prompt asked twice (a fixed prompt that is also a val sample) is two
    rows. In one-row-per-model files an answer joins the first row of its prompt still lacking its side."""
    from pipeline.core.records import iter_jsonl

    rows: list[dict] = []
    by_prompt: dict[str, list[dict]] = {}
    for _, row in iter_jsonl(path):
        prompt = row.get("prompt")
        if not isinstance(prompt, str):
            messages = row.get("messages")
            prompt = json.dumps(messages, ensure_ascii=False) if messages else ""
        base, adapter = _first(row, _BASE_KEYS), _first(row, _ADAPTER_KEYS)
        if base is None and adapter is None:
            model = str(row.get("model") or row.get("which") or "").lower()
            out = _first(row, _OUTPUT_KEYS)
            if "adapter" in model or "tuned" in model or "lora" in model:
                adapter = out
            elif model:
                base = out
        same = by_prompt.setdefault(prompt, [])
        entry = None
        if (base is None) != (adapter is None):
            side = "base" if base is not None else "adapter"
            entry = next((e for e in same if e[side] is None), None)
        if entry is None:
            entry = {"prompt": prompt, "base": None, "adapter": None}
            rows.append(entry)
            same.append(entry)
        if base is not None:
            entry["base"] = base
        if adapter is not None:
            entry["adapter"] = adapter
    return rows


def load_report(path: Path) -> dict:
    """reports/eval.json as written (base and adapter nested)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist yet: run the eval stage (`dvc repro eval`, or r on the pipeline screen)") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err}); re-run `dvc repro eval`") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(data).__name__}; re-run `dvc repro eval`")
    return data


def metric_rows(report: dict) -> list[tuple[str, object, object]]:
    """(metric, base, adapter) for every metric either model has, base's order first."""
    sides = [report.get(s) if isinstance(report.get(s), dict) else {} for s in _SIDES]
    names = list(dict.fromkeys([*flatten(sides[0]), *flatten(sides[1])]))
    flat = [flatten(s) for s in sides]
    return [(name, flat[0].get(name), flat[1].get(name)) for name in names]


def facts_line(report: dict) -> str:
    """The run's own figures, and any other top-level value the table does not show."""
    parts = [f"{words} {fmt_number(report[key])}" for key, words in _FACTS if key in report]
    known = {k for k, _ in _FACTS} | set(_SIDES)
    parts += [f"{k} {fmt_number(v)}" for k, v in flatten({k: v for k, v in report.items() if k not in known}).items()]
    return " · ".join(parts)


def load_export(path: Path) -> dict | None:
    """reports/export.json (the GGUF files checked in llama.cpp), or None when there is none or it is unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def export_text(export: dict) -> Text:
    """One line per GGUF file: size, answers as the merged model's, stops, speed in llama.cpp."""
    out = Text()
    files = export.get("files") if isinstance(export.get("files"), dict) else {}
    merged = export.get("merged") if isinstance(export.get("merged"), dict) else {}
    if export.get("skipped"):
        out.append_text(as_text(f"GGUF: none written: {export['skipped']}", style="yellow"))
    elif not files:
        out.append("GGUF: none (export.gguf: [])", style="dim")
    else:
        head = f"GGUF in llama.cpp, {export.get('prompts', '?')} eval prompts × {export.get('check_tokens', '?')} tokens"
        if merged.get("tokens_per_s") is not None:
            head += f" · merged model in transformers {fmt_number(merged['tokens_per_s'])} tok/s"
        out.append(head)
    for name, f in files.items():
        if not isinstance(f, dict):
            continue
        size = f.get("bytes")
        identical = f.get("identical")
        parts = [f"{size / 2**20:.1f} MiB" if isinstance(size, (int, float)) else "?",
                 f"{identical:.0%} as merged" if isinstance(identical, (int, float)) else "not checked",
                 f"stops {f.get('stopped', '?')}/{f.get('prompts', '?')}",
                 f"{fmt_number(f.get('tokens_per_s'))} tok/s"]
        first = f.get("first_divergence")
        if isinstance(first, dict):
            parts.append(f"differs at token {first.get('token')} of {first.get('prompt')!r}")
        style = "red" if any(name in str(x) for x in export.get("failed") or []) else ""
        out.append("\n")
        out.append_text(as_text(f"  {name}: " + " · ".join(parts), style=style))
    adapter = export.get("adapter")
    if isinstance(adapter, dict) and adapter.get("file"):
        out.append("\n")
        out.append_text(as_text(f"  {adapter['file']}: LoRA only, {adapter.get('bytes', 0) / 2**20:.1f} MiB"))
    return out


def _answer(prompt: str, output: str | None, missing: str) -> Text:
    """The prompt in bold, then the model's answer; both model or user text, so never markup."""
    out = Text()
    out.append_text(as_text(prompt, multiline=True, style="bold"))
    out.append("\n\n")
    out.append_text(as_text(output, multiline=True) if output is not None else Text(missing, style="dim"))
    return out


def _number_cell(value: object) -> Text:
    # Right-aligned and never cut: the column takes the width of its widest number.
    cell = as_line(value if isinstance(value, str) else fmt_number(value), 24)
    cell.justify = "right"
    return cell


class EvalScreen(GlobalKeysFirst, Screen):
    BINDINGS = [
        # The tabs are on screen and the message line names their keys: the footer keeps its room at 80 columns.
        Binding("m", "tab('metrics')", "Metrics tab", show=False),
        Binding("a", "tab('answers')", "Answers tab", show=False),
        Binding("j", "tab('judge')", "Judge tab", show=False),
        Binding("ctrl+r", "refresh", "Reload"),
        Binding("escape", "back", "Back", show=False),
    ]

    def __init__(self, root: str | Path | None = None, *, judge_dir: str | Path | None = None,
                 names: tuple[str, str] | None = None, **kwargs):
        """``judge_dir``: a folder of judge.json + judgments.jsonl (``tenny judge --out``) to show instead of
        reports/; ``names``: what to call its baseline and challenger until judge.json says."""
        super().__init__(**kwargs)
        self.root = Path(root or Path.cwd())
        self.judge_dir = Path(judge_dir) if judge_dir is not None else None
        self.names = names or ("base", "adapter")
        self.generations: list[dict] = []
        self.metrics: dict = {}  # eval.json flattened: "base.perplexity" → 30.5
        self.judge: JudgeReport | None = None
        self.problems: list[str] = []
        self._judge_prompts: list[str] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="eval-message")
        with TabbedContent(id="eval-tabs", initial="eval-tab-judge" if self.judge_dir else "eval-tab-metrics"):
            with TabPane("metrics", id="eval-tab-metrics"), VerticalScroll(id="eval-metrics-pane"):
                yield DataTable(id="eval-metrics", cursor_type="row", zebra_stripes=True)
                yield Static(id="eval-facts")
                yield Static(id="eval-judge-line")
                yield Static(id="eval-export")
            with TabPane("answers", id="eval-tab-answers"):
                yield DataTable(id="eval-prompts", cursor_type="row")
                with Horizontal(id="eval-sides"):
                    with VerticalScroll(id="eval-base-pane"):
                        yield Static(id="eval-base")
                    with VerticalScroll(id="eval-adapter-pane"):
                        yield Static(id="eval-adapter")
            with TabPane("judge", id="eval-tab-judge"):
                yield Static(id="eval-judge-summary")
                yield DataTable(id="eval-judge-prompts", cursor_type="row")
                with VerticalScroll(id="eval-verdicts-pane"):
                    yield Static(id="eval-verdicts")
        yield Footer()

    @property
    def folder(self) -> Path:
        """Where the judge files are read from."""
        return self.judge_dir or self.root / paths.REPORTS

    def on_mount(self) -> None:
        what = f"judge {self.names[0]} vs {self.names[1]}" if self.judge_dir else "eval"
        self.sub_title = clean(f"{what} — {self.folder}")
        if self.judge_dir:
            self.query_one("#eval-tabs", TabbedContent).hide_tab("eval-tab-metrics")
        self._titles(*self.names)
        self.query_one("#eval-metrics", DataTable).border_title = "metrics"
        self.query_one("#eval-prompts", DataTable).border_title = "prompts"
        self.query_one("#eval-judge-prompts", DataTable).border_title = "verdicts per prompt"
        self.query_one("#eval-verdicts-pane").border_title = "verdicts and reasons"

    def _titles(self, baseline: str, challenger: str) -> None:
        base_title = "base model" if baseline == "base" and not self.judge_dir else baseline
        adapter_title = "base + adapter" if challenger == "adapter" and not self.judge_dir else challenger
        self.query_one("#eval-base-pane").border_title = clean(base_title)
        self.query_one("#eval-adapter-pane").border_title = clean(adapter_title)

    def on_screen_resume(self) -> None:
        # Every visit re-reads: an eval or a judge may have run since.
        self.action_refresh()

    def action_refresh(self) -> None:
        self._load()

    def action_tab(self, name: str) -> None:
        tabs = self.query_one("#eval-tabs", TabbedContent)
        if name == "metrics" and self.judge_dir:
            return  # a comparison of two revisions has no metrics of its own
        tabs.active = f"eval-tab-{name}"

    def action_back(self) -> None:
        # Pushed on top of the Experiments screen: Esc goes back there; as a mode, Esc only leaves a field.
        if len(self.app.screen_stack) > 1 and self.app.screen is self:
            self.app.pop_screen()
        else:
            self.set_focus(None)

    @work(thread=True, exclusive=True, group="eval-load", exit_on_error=False)
    def _load(self) -> None:
        problems: list[str] = []
        report: dict = {}
        export: dict | None = None
        gens: list[dict] = []
        judge, judge_problem = None, None
        try:
            judge = load_judge(self.folder)
        except UserError as err:
            judge_problem = str(err)
        if self.judge_dir is None:
            try:
                report = load_report(self.root / paths.EVAL_REPORT)
            except UserError as err:
                problems.append(str(err))
            export = load_export(self.root / paths.EXPORT_REPORT)
            gen_path = self.root / paths.GENERATIONS
            if gen_path.exists():
                try:
                    gens = load_generations(gen_path)
                except UserError as err:
                    problems.append(str(err))
            else:
                problems.append(f"{gen_path} does not exist yet: run the eval stage (`dvc repro eval`)")
        elif judge is None and judge_problem is None:
            judge_problem = f"{self.folder / JUDGE_FILE} does not exist: run `tenny judge A B --out {self.folder}`"
        elif judge is not None:
            gens = judge.answers()
        if judge_problem:
            problems.append(judge_problem)
        self.app.call_from_thread(self._show, report, gens, judge, judge_problem, problems)
        self.app.call_from_thread(self._show_export, export)

    def _show(self, report: dict, gens: list[dict], judge: JudgeReport | None, judge_problem: str | None,
              problems: list[str]) -> None:
        self.metrics, self.generations, self.judge, self.problems = flatten(report), gens, judge, problems
        if judge is not None and judge.enabled:
            self._titles(judge.baseline, judge.challenger)
        if problems:
            message = as_text("\n".join(problems), multiline=True, style="red")
        else:
            if self.judge_dir:
                counts = f"{len(gens)} prompts — a answers · j judge · esc back"
            else:
                counts = f"{len(gens)} prompts · {len(metric_rows(report))} metrics — m metrics · a answers · j judge"
            message = Text(counts, style="dim")
        self.query_one("#eval-message", Static).update(message)
        self._show_metrics(report, judge)
        pt = self.query_one("#eval-prompts", DataTable)
        pt.clear(columns=True)
        pt.add_columns("#", "prompt")
        for i, g in enumerate(gens):
            pt.add_row(str(i + 1), as_line(g["prompt"], 120), key=str(i))
        self.show_generation(0)
        self._show_judge(judge, judge_problem)

    def _show_metrics(self, report: dict, judge: JudgeReport | None) -> None:
        mt = self.query_one("#eval-metrics", DataTable)
        mt.clear(columns=True)
        mt.add_column("metric", key="metric")
        mt.add_column(Text("base", justify="right"), key="base")
        mt.add_column(Text("adapter", justify="right"), key="adapter")
        mt.add_column(Text("change", justify="right"), key="change")
        for name, base, adapter in metric_rows(report):
            mt.add_row(as_line(name, 28), _number_cell(base), _number_cell(adapter),
                       _number_cell(fmt_change(base, adapter)), key=name)
        self.query_one("#eval-facts", Static).update(as_text(facts_line(report), style="dim"))
        if judge is not None and judge.enabled:
            line = as_text("judge: " + summary_line(judge))
        else:
            line = Text(JUDGE_OFF, style="dim")
        self.query_one("#eval-judge-line", Static).update(line)

    def _show_export(self, export: dict | None) -> None:
        widget = self.query_one("#eval-export", Static)
        widget.display = export is not None
        if export is not None:
            widget.update(export_text(export))

    def _show_judge(self, judge: JudgeReport | None, problem: str | None) -> None:
        self.query_one("#eval-judge-summary", Static).update(summary_text(judge, problem))
        table = self.query_one("#eval-judge-prompts", DataTable)
        table.clear(columns=True)
        self._judge_prompts = judge.prompts if judge is not None and judge.enabled else []
        table.display = bool(self._judge_prompts)
        self.query_one("#eval-verdicts-pane").display = bool(self._judge_prompts)
        if not self._judge_prompts:
            return
        table.add_columns("#", "winners", "prompt")
        for i, prompt in enumerate(self._judge_prompts):
            table.add_row(str(i + 1), as_line(prompt_verdict_cell(judge, prompt), 30), as_line(prompt, 120), key=str(i))
        self.show_verdicts(0)

    def show_generation(self, index: int) -> None:
        if not self.generations:
            base = adapter = Text("no generations", style="dim")
        else:
            g = self.generations[max(0, min(index, len(self.generations) - 1))]
            base = _answer(g["prompt"], g["base"], "(no answer)")
            adapter = _answer(g["prompt"], g["adapter"], "(no answer)")
        self.query_one("#eval-base", Static).update(base)
        self.query_one("#eval-adapter", Static).update(adapter)

    def show_verdicts(self, index: int) -> None:
        if self.judge is None or not self._judge_prompts:
            return
        prompt = self._judge_prompts[max(0, min(index, len(self._judge_prompts) - 1))]
        self.query_one("#eval-verdicts", Static).update(verdicts_text(self.judge, prompt))

    @on(TabbedContent.TabActivated, "#eval-tabs")
    def _tab_shown(self, event: TabbedContent.TabActivated) -> None:
        # Up and down move through the shown tab's table at once, however the tab was opened.
        table = next(iter(event.pane.query(DataTable)), None)
        if table is not None and table.display:
            table.focus()

    def _follow(self, table_id: str, prompts: list[str], prompt: str) -> None:
        # The answers and the verdicts stay on the same prompt, whichever tab moved.
        if prompt in prompts:
            table = self.query_one(table_id, DataTable)
            row = prompts.index(prompt)
            if table.row_count > row and table.cursor_row != row:
                table.move_cursor(row=row)

    @on(DataTable.RowHighlighted, "#eval-prompts")
    def _row(self, event: DataTable.RowHighlighted) -> None:
        self.show_generation(event.cursor_row)
        if 0 <= event.cursor_row < len(self.generations):
            self._follow("#eval-judge-prompts", self._judge_prompts, self.generations[event.cursor_row]["prompt"])

    @on(DataTable.RowHighlighted, "#eval-judge-prompts")
    def _verdict_row(self, event: DataTable.RowHighlighted) -> None:
        self.show_verdicts(event.cursor_row)
        if 0 <= event.cursor_row < len(self._judge_prompts):
            self._follow("#eval-prompts", [g["prompt"] for g in self.generations], self._judge_prompts[event.cursor_row])
