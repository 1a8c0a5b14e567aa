"""Dataset diff: which records changed between two revisions, not just which files.

The same diff as `tenny diff` (pipeline/commands/diff.py), run in a worker thread; a
million records each side takes seconds, and the screen stays responsive.

Ids, texts, revisions, keys and notes came from files or the form: every cell
is a ``Text`` from ``pipeline.core.text`` (a plain ``str`` cell is parsed as markup).
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Header, Input, Static

from pipeline.commands.diff import DEFAULT_PATH, DiffResult, changed_values
from pipeline.core.errors import UserError
from pipeline.core.text import as_line, as_text, clean
from tui.global_keys import GlobalKeysFirst


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "—" if v is None else str(v)


def _cell(value, style: str = "") -> Text:
    return as_line(value, 200, style=style)


class DatasetDiffScreen(GlobalKeysFirst, Screen):
    BINDINGS = [
        Binding("ctrl+r", "run_diff", "Diff"),
        Binding("ctrl+s", "swap", "Swap A/B"),
    ]

    # The table, not the REV fields: a screen that opens in a text field would swallow the app's keys.
    AUTO_FOCUS = "#diff-examples"

    def __init__(self, rev_a: str = "HEAD~1", rev_b: str = "HEAD", path: str = DEFAULT_PATH, *,
                 root: str | Path | None = None, auto_run: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.root = Path(root or Path.cwd())
        self.initial = (rev_a, rev_b, path)
        self.auto_run = auto_run
        self.result: DiffResult | None = None
        self.error: str | None = None
        self.row_ids: dict[str, str] = {}  # changed-records row key → record id

    def compose(self) -> ComposeResult:
        a, b, path = self.initial
        yield Header()
        with Horizontal(id="diff-form"):
            yield Input(a, placeholder="REV_A (commit, branch, tag, experiment, workspace)", id="rev-a")
            yield Input(b, placeholder="REV_B", id="rev-b")
            yield Input(path, placeholder="records file", id="diff-path")
            yield Button("Diff", id="btn-diff", variant="primary")
        with VerticalScroll(id="diff-body"):
            yield Static(id="diff-message")
            with Horizontal(id="diff-top"):
                yield DataTable(id="diff-counts", cursor_type="row")
                yield DataTable(id="diff-tokens", cursor_type="row")
            yield DataTable(id="diff-examples", cursor_type="row")
            yield DataTable(id="diff-decisions", cursor_type="row")
            yield DataTable(id="diff-params", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = clean(f"dataset diff — {self.root}")
        titles = {"#diff-counts": "records", "#diff-tokens": "token lengths (≈ chars/4)",
                  "#diff-examples": "changed records", "#diff-decisions": "review decisions",
                  "#diff-params": "params and metrics"}
        for sel, title in titles.items():
            self.query_one(sel, DataTable).border_title = title
        self._message("pick two revisions and press Enter (or ctrl+r)", "dim")
        if self.auto_run:
            self.action_run_diff()

    def _message(self, text: str, style: str = "") -> None:
        self.query_one("#diff-message", Static).update(as_text(text, multiline=True, style=style))

    def action_swap(self) -> None:
        a, b = self.query_one("#rev-a", Input), self.query_one("#rev-b", Input)
        a.value, b.value = b.value, a.value

    @on(Input.Submitted)
    @on(Button.Pressed, "#btn-diff")
    def action_run_diff(self) -> None:
        a = self.query_one("#rev-a", Input).value.strip()
        b = self.query_one("#rev-b", Input).value.strip()
        path = self.query_one("#diff-path", Input).value.strip() or DEFAULT_PATH
        if not a or not b:
            self._message("type two revisions: e.g. HEAD~1 and HEAD, or two experiment names", "red")
            return
        self.error = None
        self._message(f"reading {path} at {a} and at {b}…", "yellow")
        self._diff(a, b, path)

    @work(thread=True, exclusive=True, group="diff", exit_on_error=False)
    def _diff(self, a: str, b: str, path: str) -> None:
        from pipeline.commands.diff import diff_records

        try:
            result = diff_records(self.root, a, b, path)
        except UserError as err:
            self.app.call_from_thread(self._failed, str(err))
            return
        except Exception as err:  # a DVC internal error: show it, keep the app
            self.app.call_from_thread(self._failed, f"{type(err).__name__}: {err}")
            return
        self.app.call_from_thread(self._show, result)

    @on(DataTable.RowSelected, "#diff-examples")
    def open_record(self, event: DataTable.RowSelected) -> None:
        """Enter on a changed record: its old → new, word by word (tui/screens/record_diff.py)."""
        rid = self.row_ids.get(event.row_key.value) if event.row_key is not None else None
        if rid is None or self.result is None:
            return
        from tui.screens.record_diff import RecordDiffScreen

        r = self.result
        self.app.push_screen(RecordDiffScreen(self.root, r.a.rev, r.b.rev, r.path, rid))

    def _failed(self, message: str) -> None:
        self.error = message
        self.result = None
        self._message(message, "bold red")

    def _show(self, r: DiffResult) -> None:
        self.result = r
        summary = (f"{r.path}: {r.a.rev} → {r.b.rev}   +{r.added:,} added   −{r.removed:,} removed   "
                   f"~{r.edited:,} edited   {r.meta_changed:,} meta changed   {r.unchanged:,} unchanged   "
                   f"({r.seconds:.1f} s)")
        msg = as_text(summary, style="bold")
        for warning in r.warnings:
            msg.append("\n")
            msg.append_text(as_line(f"warning: {warning}", style="bold yellow"))
        for note in r.notes:
            msg.append("\n")
            msg.append_text(as_line(note, style="dim"))
        self.query_one("#diff-message", Static).update(msg)

        counts = self.query_one("#diff-counts", DataTable)
        counts.clear(columns=True)
        counts.add_columns("", _cell(r.a.rev), _cell(r.b.rev))
        counts.add_row("records", f"{r.a.records:,}", f"{r.b.records:,}")
        for kind in ("text", "pair", "chat"):
            if r.a.kinds.get(kind) or r.b.kinds.get(kind):
                counts.add_row(f"  {kind}", f"{r.a.kinds.get(kind, 0):,}", f"{r.b.kinds.get(kind, 0):,}")
        if r.a.edits_applied or r.b.edits_applied:
            counts.add_row("  review edits", f"{r.a.edits_applied:,}", f"{r.b.edits_applied:,}")
        for label, n in (("added", r.added), ("removed", r.removed), ("edited", r.edited),
                         ("meta changed", r.meta_changed), ("unchanged", r.unchanged)):
            counts.add_row(label, "", f"{n:,}")

        tokens = self.query_one("#diff-tokens", DataTable)
        tokens.clear(columns=True)
        tokens.add_columns("tokens", _cell(r.a.rev), _cell(r.b.rev))
        sa, sb = r.a.token_stats(), r.b.token_stats()
        for key in ("mean", "p50", "p90", "p99", "max"):
            tokens.add_row(key, _fmt(sa.get(key)), _fmt(sb.get(key)))
        for (label, ca), (_, cb) in zip(r.a.token_histogram(), r.b.token_histogram()):
            if ca or cb:
                tokens.add_row(label, f"{ca:,}", f"{cb:,}")

        ex = self.query_one("#diff-examples", DataTable)
        ex.clear(columns=True)
        ex.border_subtitle = "Enter: old → new" if (r.added_examples or r.removed_examples or r.edited_examples
                                                    or r.meta_examples) else ""
        ex.add_columns("", "id", "text")
        # Row keys are positions, not ids: an id is any string a file holds.
        self.row_ids = {}

        def add(rid: str, *cells) -> None:
            key = str(len(self.row_ids))
            self.row_ids[key] = rid
            ex.add_row(*cells, key=key)

        for e in r.added_examples:
            add(e.id, Text("+", style="green"), _cell(e.id), _cell(e.text))
        for e in r.removed_examples:
            add(e.id, Text("−", style="red"), _cell(e.id), _cell(e.text))
        for e in r.edited_examples:
            change = _cell(e.old_text or "?")
            change.append("  →  ")
            change.append_text(_cell(e.text))
            add(e.id, Text("~", style="yellow"), _cell(e.id), change)
        for rid in r.meta_examples:
            add(rid, Text("m", style="dim"), _cell(rid), Text("meta changed", style="dim"))

        dec = self.query_one("#diff-decisions", DataTable)
        dec.clear(columns=True)
        dec.add_columns("decisions", "ids")
        if r.decisions:
            d = r.decisions
            dec.add_row(_cell(f"decided at {r.a.rev}"), f"{d.decided_a:,}")
            dec.add_row(_cell(f"decided at {r.b.rev}"), f"{d.decided_b:,}")
            dec.add_row("changed", f"{d.changed:,}")
            for t, n in d.transitions.items():
                dec.add_row(_cell(f"  {t}"), f"{n:,}")
            if d.edit_text_changed:
                dec.add_row("  edited text changed", f"{d.edit_text_changed:,}")
            if d.tags_changed:
                dec.add_row("  tags changed", f"{d.tags_changed:,}")
        else:
            dec.add_row("no review log at either revision", "")

        pm = self.query_one("#diff-params", DataTable)
        pm.clear(columns=True)
        pm.add_columns("", "file", "key", _cell(r.a.rev), _cell(r.b.rev), "change")
        for title, diff in (("param", r.params), ("metric", r.metrics)):
            for fname, key, old, new, delta in changed_values(diff):
                pm.add_row(title, _cell(fname), _cell(key), _cell(_fmt(old)), _cell(_fmt(new)),
                           "" if delta is None else _fmt(delta))
        if not pm.row_count:
            pm.add_row("", "", "no params or metrics changed", "", "", "")
