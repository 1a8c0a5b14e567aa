"""Experiments: `dvc exp show` as a sortable table; mark two and diff them.

Only params that differ between rows get a column (the rest is noise); every
metric does. Sort by the column under the cursor with `s` (again: reverse) or
by clicking its header. Space marks a row as A, then B; `d` opens the dataset
diff of the two.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from pipeline.core.errors import UserError
from pipeline.core.text import as_line, as_text, clean
from pipeline.engines import dvc_ops


def _cell(v):
    # DataTable shows floats with 2 decimals (0.002 → "0.00"): format them ourselves.
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, str):
        return as_line(v, 80)  # a plain str cell is parsed as markup; params and names are anyone's text
    return "" if v is None else v


def _sort_key(v):
    # Numbers before text, missing values last, whatever the direction of the types.
    if isinstance(v, Text):
        v = v.plain
    if v is None or v == "":
        return (2, 0, "")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, v, "")
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        return (1, 0, str(v))


class ExperimentsScreen(Screen):
    BINDINGS = [
        Binding("space", "mark", "Mark A/B"),
        Binding("d", "diff", "Diff marked"),
        Binding("s", "sort", "Sort by column"),
        Binding("ctrl+r", "refresh", "Refresh"),
    ]

    def __init__(self, root: str | Path | None = None, **kwargs):
        super().__init__(**kwargs)
        self.root = Path(root or Path.cwd())
        self.rows: dict[str, dvc_ops.ExpRow] = {}
        self.marked: list[str] = []  # row keys, A then B
        self.columns: list[str] = []
        self._sorted: tuple[str, bool] | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="exp-message")
        yield DataTable(id="experiments", cursor_type="cell", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = clean(f"experiments — {self.root}")

    def on_screen_resume(self) -> None:
        # Every visit re-reads: a run on the pipeline screen or in a shell adds experiments.
        self.action_refresh()

    def _message(self, text: str, style: str = "") -> None:
        self.query_one("#exp-message", Static).update(as_text(text, multiline=True, style=style))

    def action_refresh(self) -> None:
        self._message("running dvc exp show…", "dim")
        self._load()

    @work(thread=True, exclusive=True, group="exp-show", exit_on_error=False)
    def _load(self) -> None:
        try:
            rows = dvc_ops.exp_show(self.root)
        except UserError as err:
            self.app.call_from_thread(self._message, str(err), "bold red")
            return
        self.app.call_from_thread(self.show_rows, rows)

    def show_rows(self, rows: list[dvc_ops.ExpRow]) -> None:
        table = self.query_one("#experiments", DataTable)
        table.clear(columns=True)
        self.rows = {}
        self.marked = []
        params = sorted({k for r in rows for k in r.params})
        varying = [k for k in params if len({repr(r.params.get(k)) for r in rows}) > 1]
        metrics = sorted({k for r in rows for k in r.metrics})
        self.columns = ["mark", "experiment", "rev", "created", *varying, *metrics]
        table.add_column("", key="mark", width=2)
        table.add_column("experiment", key="experiment")
        table.add_column("rev", key="rev")
        table.add_column("created", key="created")
        for k in varying:
            table.add_column(as_line(k, style="cyan"), key=f"p:{k}")
        for k in metrics:
            table.add_column(as_line(k, style="magenta"), key=f"m:{k}")
        for i, r in enumerate(rows):
            key = f"{i}:{r.rev}"
            self.rows[key] = r
            name = as_line(("  └ " if r.parent else "") + (r.name or ""), style="" if r.parent else "bold")
            table.add_row(
                "", name, _cell(r.rev[:7] if r.rev != dvc_ops.WORKSPACE else r.rev), _cell((r.timestamp or "")[:16]),
                *[_cell(r.params.get(k)) for k in varying], *[_cell(r.metrics.get(k)) for k in metrics],
                key=key,
            )
        self._message(f"{len(rows)} rows · {len(varying)} params that vary · {len(metrics)} metrics — "
                      "space marks A then B, d diffs them, s sorts by the column under the cursor", "dim")

    # ------------------------------------------------------------ sorting

    def sort_by(self, column_key: str, reverse: bool | None = None) -> None:
        table = self.query_one("#experiments", DataTable)
        if reverse is None:
            reverse = self._sorted == (column_key, False)
        table.sort(column_key, key=_sort_key, reverse=reverse)
        self._sorted = (column_key, reverse)

    def action_sort(self) -> None:
        table = self.query_one("#experiments", DataTable)
        if not table.columns:
            return
        column_key = list(table.columns)[table.cursor_column].value
        if column_key == "mark":
            return
        self.sort_by(column_key)

    @on(DataTable.HeaderSelected)
    def _header(self, event: DataTable.HeaderSelected) -> None:
        if event.column_key.value != "mark":
            self.sort_by(event.column_key.value)

    # ------------------------------------------------------------ marking and diffing

    def _row_key_at_cursor(self) -> str | None:
        table = self.query_one("#experiments", DataTable)
        if not table.row_count:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return row_key.value

    def action_mark(self) -> None:
        key = self._row_key_at_cursor()
        if key is None:
            return
        table = self.query_one("#experiments", DataTable)
        if key in self.marked:
            self.marked.remove(key)
        else:
            self.marked.append(key)
            if len(self.marked) > 2:
                self.marked.pop(0)
        for k in self.rows:
            label = ""
            if k in self.marked:
                label = "AB"[self.marked.index(k)]
            table.update_cell(k, "mark", Text(label, style="bold reverse"))

    def marked_refs(self) -> tuple[str, str] | None:
        if len(self.marked) != 2:
            return None
        a, b = (self.rows[k] for k in self.marked)
        return a.ref, b.ref

    def action_diff(self) -> None:
        refs = self.marked_refs()
        if refs is None:
            self.notify("mark two rows with space first (A, then B)", severity="warning")
            return
        from tui.screens.dataset_diff import DatasetDiffScreen

        self.app.push_screen(DatasetDiffScreen(*refs, root=self.root, auto_run=True))
