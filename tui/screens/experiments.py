"""Experiments: `dvc exp show` as a sortable table; mark two and diff them.

Only params that differ between rows get a column (the rest is noise); every
metric does. Sort by the column under the cursor with `s` (again: reverse) or
by clicking its header. Space marks a row as A, then B; `d` opens the dataset
diff of the two; `j` has the judge compare their answers: it runs
`tenny judge A B --out .tenny/judge/A_vs_B` in the background (j or Esc
cancels it) and opens the Eval screen on what it wrote.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.core.text import as_line, as_text, clean, log_line
from pipeline.engines.dvc import experiments as dvc_exps
from pipeline.engines.dvc.cli import subprocess_env
from pipeline.engines.dvc.revisions import WORKSPACE
from tui.global_keys import GlobalKeysFirst, ModalAware
from tui.widgets.eval_judge import JUDGE_FILE

KILL_AFTER_S = 5.0  # a cancelled judge gets this long to stop on Ctrl-C before it is killed


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


def tenny_command() -> list[str]:
    """How to call tenny: the one beside this Python, so the app and its judge run the same code."""
    beside = Path(sys.executable).parent / "tenny"
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "pipeline.cli"]


def judge_out_dir(root: Path, rev_a: str, rev_b: str) -> Path:
    """Where `j` has `tenny judge` write: the folder `tenny judge A B` uses by default, so a shell sees it too."""
    from pipeline.commands.judge import safe_name

    return root / paths.STATE_DIR / "judge" / f"{safe_name(rev_a)}_vs_{safe_name(rev_b)}"


def _error_lines(lines: list[str]) -> str:
    """What a failed `tenny judge` said: its error lines, else the end of its output."""
    errors = [x for x in lines if ": error:" in x or x.startswith("ERROR")]
    return "\n".join(errors or lines[-3:]) or "no output"


class ExperimentsScreen(GlobalKeysFirst, ModalAware, Screen):
    BINDINGS = [
        Binding("space", "mark", "Mark A/B"),
        Binding("d", "diff", "Diff marked"),
        Binding("j", "judge", "Judge marked"),
        Binding("escape", "cancel_judge", "Cancel judge", show=False),
        Binding("s", "sort", "Sort by column"),
        Binding("ctrl+r", "refresh", "Refresh"),
    ]

    def __init__(self, root: str | Path | None = None, **kwargs):
        super().__init__(**kwargs)
        self.root = Path(root or Path.cwd())
        self.rows: dict[str, dvc_exps.ExpRow] = {}
        self.marked: list[str] = []  # row keys, A then B
        self.columns: list[str] = []
        self._sorted: tuple[str, bool] | None = None
        self.judging: subprocess.Popen | None = None  # the `tenny judge` running, if any
        self.judge_cancelled = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="exp-message")
        yield Static(id="exp-judge")
        yield DataTable(id="experiments", cursor_type="cell", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = clean(f"experiments — {self.root}")
        self.query_one("#exp-judge").display = False

    def on_unmount(self) -> None:
        # The judge runs in its own session: it must not outlive the app.
        self._signal_judge(signal.SIGTERM)

    def on_screen_resume(self) -> None:
        # Every visit re-reads: a run on the pipeline screen or in a shell adds experiments.
        if not self.back_from_modal():
            self.action_refresh()

    def _message(self, text: str, style: str = "") -> None:
        self.query_one("#exp-message", Static).update(as_text(text, multiline=True, style=style))

    def action_refresh(self) -> None:
        self._message("running dvc exp show…", "dim")
        self._load()

    @work(thread=True, exclusive=True, group="exp-show", exit_on_error=False)
    def _load(self) -> None:
        try:
            rows = dvc_exps.exp_show(self.root)
        except UserError as err:
            self.app.call_from_thread(self._message, str(err), "bold red")
            return
        self.app.call_from_thread(self.show_rows, rows)

    def show_rows(self, rows: list[dvc_exps.ExpRow]) -> None:
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
                "", name, _cell(r.rev[:7] if r.rev != WORKSPACE else r.rev), _cell((r.timestamp or "")[:16]),
                *[_cell(r.params.get(k)) for k in varying], *[_cell(r.metrics.get(k)) for k in metrics],
                key=key,
            )
        self._message(f"{len(rows)} rows · {len(varying)} params that vary · {len(metrics)} metrics — "
                      "space marks A then B, d diffs them, j judges them, s sorts by the column under the cursor", "dim")

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

    # ------------------------------------------------------------ judging the marked two

    def _judge_state(self, text: str, style: str = "") -> None:
        state = self.query_one("#exp-judge", Static)
        state.display = bool(text)
        state.update(as_text(text, multiline=True, style=style))

    def action_judge(self) -> None:
        if self.judging is not None:
            self.action_cancel_judge()
            return
        refs = self.marked_refs()
        if refs is None:
            self.notify("mark two rows with space first (A = baseline, then B = challenger)", severity="warning",
                        markup=False)
            return
        out = judge_out_dir(self.root, *refs)
        args = [*tenny_command(), "judge", refs[0], refs[1], "--out", str(out)]
        try:
            proc = subprocess.Popen(args, cwd=self.root, env=subprocess_env(), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as err:
            self._judge_state(f"could not start tenny judge: {err}", "bold red")
            return
        self.judging, self.judge_cancelled = proc, False
        self._judge_state(f"judging {refs[0]} (A) vs {refs[1]} (B)… j or esc cancels", "bold yellow")
        self._watch_judge(proc, refs, out)

    @work(thread=True, group="exp-judge", exit_on_error=False)
    def _watch_judge(self, proc: subprocess.Popen, refs: tuple[str, str], out: Path) -> None:
        # Progress bars redraw with \r and no \n: read what comes and split on both, so the state stays live.
        lines: list[str] = []
        pending = b""
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):
            *done, pending = re.split(rb"[\r\n]", pending + chunk)
            fresh = [log_line(x.decode("utf-8", errors="replace")).strip() for x in done]
            fresh = [x for x in fresh if x]
            if fresh:
                lines.extend(fresh)
                del lines[:-200]
                self.app.call_from_thread(self._judge_progress, refs, fresh[-1])
        if pending.strip():
            lines.append(log_line(pending.decode("utf-8", errors="replace")).strip())
        proc.stdout.close()
        rc = proc.wait()
        self.app.call_from_thread(self._judge_done, proc, rc, refs, out, lines)

    def _judge_progress(self, refs: tuple[str, str], line: str) -> None:
        if self.judging is not None and not self.judge_cancelled:
            self._judge_state(f"judging {refs[0]} (A) vs {refs[1]} (B)… j or esc cancels\n{line}", "yellow")

    def _judge_done(self, proc: subprocess.Popen, rc: int, refs: tuple[str, str], out: Path, lines: list[str]) -> None:
        if self.judging is proc:
            self.judging = None
        if self.judge_cancelled:
            self._judge_state(f"judge of {refs[0]} vs {refs[1]} cancelled", "dim")
            return
        report = out / JUDGE_FILE
        if rc != 0 or not report.exists():
            why = _error_lines(lines) if rc != 0 else f"it exited 0 but wrote no {report}"
            self._judge_state(f"tenny judge {refs[0]} {refs[1]} failed (exit {rc}):\n{why}", "bold red")
            self.notify(clean(f"tenny judge failed: {why}", multiline=True), severity="error", markup=False)
            return
        self._judge_state(f"judged {refs[0]} vs {refs[1]} → {out}", "green")
        from tui.screens.eval_view import EvalScreen

        self.app.push_screen(EvalScreen(self.root, judge_dir=out, names=refs))

    def _signal_judge(self, sig: int) -> None:
        proc = self.judging
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def action_cancel_judge(self) -> None:
        if self.judging is None:
            self.set_focus(None)  # what Esc does everywhere else: leave the field
            return
        # Ctrl-C first so the judge keeps what it finished (its cache); a kill if it does not stop.
        self.judge_cancelled = True
        self._judge_state("cancelling the judge…", "yellow")
        self._signal_judge(signal.SIGINT)
        proc = self.judging
        self.set_timer(KILL_AFTER_S, lambda: self._kill_if_alive(proc))

    @staticmethod
    def _kill_if_alive(proc: subprocess.Popen) -> None:
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
