"""Pipeline screen: the stages of dvc.yaml, their state from DVC, and runs.

Runs are the same `dvc repro` / `dvc exp run` a shell would start, in their
own process group (so cancel stops the stage command too), read by a worker
thread; the screen only drains a queue of lines, so it never freezes however
much a stage prints. Stage states come from `dvc status --json` and dvc.lock.

Stage names, DVC's words, errors and the overrides a person typed are shown
through ``pipeline.core.text`` (Text cells, notifications with markup off).
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.notifications import SeverityLevel
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Header, Input, Static

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.core.text import as_line, as_text, clean
from pipeline.core.overrides import check_overrides, parse_overrides
from pipeline.engines.dvc import project, remotes, runs, workspace
from pipeline.engines.dvc.cli import dvc_command
from tui.global_keys import GlobalKeysFirst, ModalAware
from tui.widgets.log_view import RunLog

STATE_STYLE = {"up to date": "green", "changed": "yellow", "never run": "dim", "unknown": "red"}


def _metrics_text(metrics: dict, limit: int = 4) -> str:
    items = []
    for key, value in metrics.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        items.append(f"{key}={value}")
        if len(items) == limit:
            break
    more = len(metrics) - len(items)
    return ", ".join(items) + (f" (+{more})" if more > 0 else "")


REASON_CELL = 38  # the table cell's share; the detail pane below shows the whole reason


def stage_reason(s: project.StageState) -> str:
    """The stage's state with DVC's reason, in words: "changed: deps train.py modified"."""
    if s.state == "changed":
        return f"changed: {s.detail}" if s.detail else "changed"
    return f"unknown: {s.detail}" if s.state == "unknown" and s.detail else s.state


NOVELTY_STAGES = ("synthesize", "dedupe")
SPARK = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 20  # the line stays within 80 columns with a seven-digit sample count


def novelty_line(root: Path) -> Text:
    """reports/novelty.csv in one line: a sparkline of the kept share per 100 samples
    (on a fixed 0-1 scale, so a low bar is a low share) and the latest share in words."""
    path = root / paths.NOVELTY
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return as_line("novelty: run dedupe", style="dim")
    except (OSError, UnicodeDecodeError) as err:
        return as_line(f"novelty: cannot read {paths.NOVELTY}: {err}", style="red")
    rows: list[tuple[int, float]] = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            samples, share = line.split(",")
            rows.append((int(samples), float(share)))
        except ValueError:
            return as_line(f"novelty: {paths.NOVELTY} line {number}: not samples,kept_share; run dedupe again",
                           style="red")
    if not rows:
        return as_line("novelty: no samples yet (run synthesize, then dedupe)", style="dim")
    # at most SPARK_WIDTH bars: neighbouring blocks averaged, so a long run keeps its shape
    per = -(-len(rows) // SPARK_WIDTH)
    bars = [sum(r[1] for r in rows[i:i + per]) / len(rows[i:i + per]) for i in range(0, len(rows), per)]
    spark = "".join(SPARK[min(len(SPARK) - 1, max(0, int(b * len(SPARK))))] for b in bars)
    total, share = rows[-1]
    block = total - (rows[-2][0] if len(rows) > 1 else 0)
    out = Text("novelty ", style="bold")
    out.append(spark, style="green" if share >= 0.5 else "yellow" if share >= 0.2 else "red")
    out.append(f"  {round(share * 100)} % new in the last {block} ({total:,} samples)")
    return out


class PipelineScreen(GlobalKeysFirst, ModalAware, Screen):
    BINDINGS = [
        Binding("r", "repro_all", "Repro all"),
        Binding("t", "repro_stage", "Repro to stage"),
        Binding("o", "focus_overrides", "Overrides"),
        Binding("e", "exp_run", "Exp run"),
        Binding("x", "cancel_run", "Cancel run"),
        Binding("ctrl+r", "refresh", "Refresh"),
        Binding("p", "push", "Push"),
        Binding("P", "pull", "Pull", key_display="shift+p"),
        Binding("c", "cloud_status", "Status -c"),
    ]

    # The stage table, never the overrides field (`o` goes there): keys work as the screen opens.
    AUTO_FOCUS = "#stages"

    def __init__(self, root: str | Path | None = None, params=None, **kwargs):
        super().__init__(**kwargs)
        self.root = Path(root or Path.cwd())
        self.params = params
        self.current: runs.Run | None = None
        self.stages: list[project.StageState] = []
        self.last_exit: int | None = None
        self.settle_notes: list[str] = []  # what the last run's workspace check found

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="pipeline-body"):
            yield Static(id="pipeline-message")
            yield DataTable(id="stages", cursor_type="row", zebra_stripes=True)
            yield Static(id="stage-detail")
            with Horizontal(id="run-controls"):
                yield Input(placeholder="overrides for exp run (o), e.g. train.lr=1e-3 train.lora.r=16", id="overrides")
                yield Button("Repro all", id="btn-repro", variant="primary")
                yield Button("Repro to stage", id="btn-repro-stage")
                yield Button("Exp run", id="btn-exp")
                yield Button("Cancel", id="btn-cancel", variant="error", disabled=True)
            with Horizontal(id="remote-controls"):
                yield Static(id="remote-label")
                yield Button("Push", id="btn-push")
                yield Button("Pull", id="btn-pull")
                yield Button("Status -c", id="btn-cloud")
            yield Static(id="run-status")
            yield RunLog(id="run-log")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = clean(f"pipeline — {self.root}")
        table = self.query_one("#stages", DataTable)
        table.add_columns("stage", "state", "last metrics")
        self.query_one("#run-log", RunLog).border_title = "log"
        self._show_remote()

    def on_screen_resume(self) -> None:
        # States can change behind our back (a shell, another screen): re-read on every visit.
        if not self.back_from_modal() and self.current is None:
            self.action_refresh()

    def on_unmount(self) -> None:
        # The run's output pipe ends with the app; stop it cleanly rather than by SIGPIPE.
        if self.current is not None:
            self.current.cancel(grace_s=2)

    # ------------------------------------------------------------ state

    def action_refresh(self) -> None:
        if self.current is not None:
            # dvc status would wait on the run's repo lock; the run refreshes us when it ends.
            self.notify("a run is in progress; states refresh when it ends")
            return
        self._message("reading stage states from DVC…", "dim")
        self._load_states()

    @work(thread=True, exclusive=True, group="pipeline-status", exit_on_error=False)
    def _load_states(self) -> None:
        try:
            states = project.stage_states(self.root)
        except UserError as err:
            self.app.call_from_thread(self._message, str(err), "red")
            return
        self.app.call_from_thread(self._show_states, states)

    def _show_states(self, states: list[project.StageState]) -> None:
        self.stages = states
        table = self.query_one("#stages", DataTable)
        keep = table.cursor_row
        table.clear()
        for s in states:
            table.add_row(
                as_line(s.name, style="bold"), as_line(stage_reason(s), REASON_CELL, style=STATE_STYLE.get(s.state, "")),
                as_line(_metrics_text(s.metrics)), key=s.name,
            )
        if states:
            table.move_cursor(row=min(keep, len(states) - 1))
        self._show_detail()
        counts = {}
        for s in states:
            counts[s.state] = counts.get(s.state, 0) + 1
        self._message(" · ".join(f"{n} {state}" for state, n in counts.items()) or "no stages in dvc.yaml", "")

    @on(DataTable.RowHighlighted, "#stages")
    def _show_detail(self) -> None:
        """The selected stage in full: its reason, command and every last metric (wrapped)."""
        name = self.selected_stage()
        stage = next((s for s in self.stages if s.name == name), None)
        detail = Text()
        if stage is not None:
            detail.append(as_line(stage.name, style="bold"))
            detail.append("  ")
            detail.append(as_line(stage_reason(stage), style=STATE_STYLE.get(stage.state, "")))
            detail.append("\n")
            if stage.name in NOVELTY_STAGES:  # second, so the pane's few lines never cut it off
                detail.append(novelty_line(self.root))
                detail.append("\n")
            detail.append(as_line(f"cmd {stage.cmd}", style="dim"))
            if stage.metrics:
                detail.append("\n")
                detail.append(as_line("metrics " + _metrics_text(stage.metrics, limit=len(stage.metrics))))
        self.query_one("#stage-detail", Static).update(detail)

    def _message(self, text: str, style: str) -> None:
        self.query_one("#pipeline-message", Static).update(as_text(text, multiline=True, style=style))

    def selected_stage(self) -> str | None:
        table = self.query_one("#stages", DataTable)
        if not self.stages or table.cursor_row is None or table.cursor_row >= len(self.stages):
            return None
        return self.stages[table.cursor_row].name

    # ------------------------------------------------------------ runs

    def start(self, args: list[str], *, remote: bool = False, guard: bool = True) -> bool:
        """Start `dvc ARGS` unless a run is going; False when refused."""
        if self.current is not None:
            self.say(f"already running: {self.current.command} (press x to cancel it)", severity="warning")
            return False
        try:
            run = runs.Run(args, self.root)
            dvc_command()
        except UserError as err:
            self._message(str(err), "red")
            return False
        self.current = run
        self._set_running(True)
        log = self.query_one("#run-log", RunLog)
        log.post(f"$ {run.command}")
        self._status(as_line(f"running: {run.command}", style="bold yellow"))
        import time  # here, not at the top: the edit stays out of the imports others change

        self._client_timer = self.set_interval(2.0, lambda started=time.time(): self._show_client(run, started))
        self._execute(run, remote, guard)
        return True

    def _show_client(self, run, started: float) -> None:
        # synthesize and the judge write their pace (answers/min, limit, time left) while they run
        from pipeline.engines.synthesis.openai_client.progress import status_line

        line = status_line(self.root, since=started)
        if line and self.current is run:
            self._status(as_line(f"running: {run.command} — {line}", style="bold yellow"))

    @work(thread=True, group="pipeline-run", exit_on_error=False)
    def _execute(self, run: runs.Run, remote: bool, guard: bool) -> None:
        log = self.query_one("#run-log", RunLog)
        code: int | None = None
        before = None
        try:
            if guard:
                # What the run must leave as it is: compared (and repaired) when it ends.
                before = workspace.workspace_state(self.root)
                if run.args[:1] == ["repro"]:
                    workspace.backup_uncached(self.root)
            if remote and self.params is not None:
                name = remotes.ensure_remote(self.root, self.params.remote)
                if name and "-r" not in run.args:
                    run.args = run.args + ["-r", name]
                    run.command = "dvc " + " ".join(run.args)
            run.start()
            for line in run.lines():
                log.post(line)
            code = run.wait()
        except UserError as err:
            log.post(f"error: {err}")
        except OSError as err:
            log.post(f"error: could not start dvc: {err}")
        finally:
            if before is not None:
                self._settle(run, code, before, log)
            self.app.call_from_thread(self._finished, run, code, remote)

    def _settle(self, run: runs.Run, code: int | None, before: workspace.WorkspaceState, log: RunLog) -> None:
        """Put git and DVC state back as the user left it, and say what was done."""
        try:
            notes = workspace.settle_workspace(self.root, before, interrupted_stage=run.workspace_stage,
                                             restore=run.cancelled or code != 0)
        except (UserError, OSError) as err:
            notes = [f"could not check the workspace after the run: {err}"]
        self.settle_notes = notes
        for note in notes:
            log.post(f"workspace: {note}")
        if not notes:
            log.post("workspace: branch, index and outputs as before the run")

    def _finished(self, run: runs.Run, code: int | None, remote: bool = False) -> None:
        self.current = None
        self._client_timer.stop()
        self.last_exit = code
        self._set_running(False)
        if run.cancelled:
            text = as_line(f"cancelled: {run.command}", style="bold yellow")
        elif code == 0:
            text = as_line(f"finished: {run.command}", style="bold green")
        else:
            text = as_line(f"failed (exit {code}): {run.command} — see the log above", style="bold red")
        self._status(text)
        self.query_one("#run-log", RunLog).post(text.plain)
        self.action_refresh()
        if remote:  # push, pull and status -c set the remote from params.yaml first; no other run touches DVC's config
            self._show_remote()

    def say(self, message: str, *, severity: SeverityLevel = "information") -> None:
        """A notification of text that may quote what a person typed or a file held: never markup."""
        self.notify(clean(message), severity=severity, markup=False)

    def _status(self, text: Text) -> None:
        self.query_one("#run-status", Static).update(text)

    def _set_running(self, running: bool) -> None:
        self.query_one("#btn-cancel", Button).disabled = not running
        for bid in ("#btn-repro", "#btn-repro-stage", "#btn-exp", "#btn-push", "#btn-pull", "#btn-cloud"):
            self.query_one(bid, Button).disabled = running

    def action_repro_all(self) -> None:
        self.start(runs.repro_args())

    def action_repro_stage(self) -> None:
        stage = self.selected_stage()
        if stage is None:
            self.notify("select a stage first (arrow keys in the table)", severity="warning")
            return
        self.start(runs.repro_args(stage))

    def action_exp_run(self) -> None:
        text = self.query_one("#overrides", Input).value
        try:
            overrides = parse_overrides(text)
            if not overrides:
                raise UserError("type overrides first: press o, then e.g. train.lr=1e-3 train.lora.r=16")
            # Checked by tenny's schema before DVC writes anything into params.yaml.
            check_overrides(self.root, overrides)
        except UserError as err:
            self.say(str(err), severity="error")
            self._message(str(err), "red")
            return
        self.start(runs.exp_run_args(overrides))

    def action_focus_overrides(self) -> None:
        self.query_one("#overrides", Input).focus()

    def action_cancel_run(self) -> None:
        run = self.current
        if run is None:
            self.notify("nothing is running")
            return
        self._status(as_line(f"cancelling: {run.command}…", style="yellow"))
        self._cancel(run)

    @work(thread=True, group="pipeline-cancel", exit_on_error=False)
    def _cancel(self, run: runs.Run) -> None:
        run.cancel()

    def action_push(self) -> None:
        self.start(remotes.push_args(), remote=True, guard=False)

    def action_pull(self) -> None:
        self.start(remotes.pull_args(), remote=True, guard=False)

    def action_cloud_status(self) -> None:
        self.start(remotes.cloud_status_args(), remote=True, guard=False)

    @work(thread=True, group="pipeline-remote", exit_on_error=False)
    def _show_remote(self) -> None:
        remote = getattr(self.params, "remote", None)
        if remote is not None and remote.url:  # params.yaml names it: no `dvc config --list` (a second of CPU) to ask
            text = f"remote {remote.name} → {remote.url} (from params.yaml)"
        else:
            try:
                known = remotes.remotes(self.root)
            except UserError as err:
                known, note = {}, str(err)
            else:
                note = ""
            if known:
                text = "remote " + ", ".join(f"{n} → {u}" for n, u in known.items())
            else:
                text = note or "no DVC remote: set remote.url in params.yaml (a folder works) to push and pull"
        self.app.call_from_thread(self.query_one("#remote-label", Static).update, as_line(text, style="dim"))

    # ------------------------------------------------------------ buttons

    # Each button does what its key binding does.
    _BUTTON_ACTIONS = {
        "btn-repro": "repro_all", "btn-repro-stage": "repro_stage", "btn-exp": "exp_run",
        "btn-cancel": "cancel_run", "btn-push": "push", "btn-pull": "pull", "btn-cloud": "cloud_status",
    }

    @on(Button.Pressed)
    def _button(self, event: Button.Pressed) -> None:
        action = self._BUTTON_ACTIONS.get(event.button.id or "")
        if action:
            getattr(self, f"action_{action}")()

    @on(Input.Submitted, "#overrides")
    def _i_exp(self) -> None:
        self.action_exp_run()
