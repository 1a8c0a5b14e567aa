"""`tenny` with no command: one app for the whole loop.

Screens (modes, each keeps its own state while you switch):

    1 pipeline     stages and their DVC state; repro, exp run, push/pull
    2 training     the live training monitor (dvclive/)
    3 diff         record-level dataset diff between two revisions
    4 experiments  dvc exp show, sortable; mark two and diff or judge them
    5 eval         metrics base vs adapter, answers side by side, the judge's verdicts
    7 chat         talk to the base and the adapter side by side
    v review       the review queue (pushed on top; another module)

Every screen is also in the command palette (ctrl+p). The app holds no truth:
it reads the files DVC and the stages write, and starts runs through dvc.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.command import Hit, Hits, Provider

from pipeline.core import paths
from pipeline.core.decisions import default_reviewer, reviewer_log
from pipeline.core.errors import UserError
from pipeline.core.text import clean

SCREENS_HELP = (
    ("pipeline", "1", "Pipeline: stages, runs, push/pull"),
    ("training", "2", "Training monitor"),
    ("diff", "3", "Dataset diff between revisions"),
    ("experiments", "4", "Experiments table: mark two, diff or judge them"),
    ("eval", "5", "Eval: metrics base vs adapter, answers, the judge's verdicts"),
    ("chat", "7", "Chat with the base and the adapter side by side"),
)


class TennyCommands(Provider):
    """Command palette entries: every screen, and the runs of the pipeline screen."""

    def _commands(self):
        app = self.app
        for mode, key, help_text in SCREENS_HELP:
            yield f"Open {mode}", partial(app.switch_mode, mode), f"{help_text} (key {key})"
        yield "Open review", app.action_review, "Review samples: accept, reject, edit (key 6 or v)"
        yield "Keys", app.action_help, "Every key of this screen and the global ones (key ?)"
        yield "Run dvc repro (all stages)", partial(app.pipeline_action, "repro_all"), "on the pipeline screen"
        yield "Run dvc exp run with the overrides typed", partial(app.pipeline_action, "exp_run"), "on the pipeline screen"
        yield "Cancel the current run", partial(app.pipeline_action, "cancel_run"), "terminates its process group"
        yield "dvc push", partial(app.pipeline_action, "push"), "to the remote from params.yaml"
        yield "dvc pull", partial(app.pipeline_action, "pull"), "from the remote from params.yaml"
        yield "dvc status -c", partial(app.pipeline_action, "cloud_status"), "compare the cache with the remote"

    async def discover(self) -> Hits:
        for name, callback, help_text in self._commands():
            yield Hit(1.0, name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, callback, help_text in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)


class TennyApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "tenny"
    COMMANDS = App.COMMANDS | {TennyCommands}
    # Digits switch screens unless a text field has focus (then they type; escape leaves
    # the field). F1-F5 work from anywhere.
    BINDINGS = [
        Binding("1,f1", "switch_mode('pipeline')", "Pipeline"),
        Binding("2,f2", "switch_mode('training')", "Training"),
        Binding("3,f3", "switch_mode('diff')", "Diff"),
        Binding("4,f4", "switch_mode('experiments')", "Experiments"),
        Binding("5,f5", "switch_mode('eval')", "Eval"),
        Binding("6,v", "review", "Review", key_display="6"),
        Binding("7,f7", "switch_mode('chat')", "Chat"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("escape", "leave_field", "Leave field", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, root: str | Path | None = None, params=None, *, start: str = "pipeline",
                 dvclive_dir: str | Path | None = None):
        super().__init__()
        self.root = Path(root or Path.cwd()).resolve()
        self.params = params
        self.start_mode = start
        self._quit_armed = False  # q said once that quitting cancels the run
        from tui.screens.dataset_diff import DatasetDiffScreen
        from tui.screens.eval_view import EvalScreen
        from tui.screens.experiments import ExperimentsScreen
        from tui.screens.pipeline import PipelineScreen
        from tui.screens.train_monitor import TrainMonitorScreen

        root = self.root
        self.pipeline_screen: PipelineScreen | None = None

        def pipeline() -> PipelineScreen:
            self.pipeline_screen = PipelineScreen(root, params)
            return self.pipeline_screen

        self.add_mode("pipeline", pipeline)
        self.add_mode("training", lambda: TrainMonitorScreen(dvclive_dir, root=root))
        self.add_mode("diff", lambda: DatasetDiffScreen(root=root))
        self.add_mode("experiments", lambda: ExperimentsScreen(root))
        self.add_mode("eval", lambda: EvalScreen(root))
        self.add_mode("chat", lambda: _chat_screen(root, params))

    def on_mount(self) -> None:
        self.switch_mode(self.start_mode)
        self.workspace_findings: list | None = None  # set once the startup check has run
        self._check_workspace()

    @work(thread=True, exclusive=True, group="workspace-check", exit_on_error=False)
    def _check_workspace(self) -> None:
        """Damage an earlier crash left (a kill -9 mid-experiment): the safe part repaired,
        the rest named with its command (pipeline/engines/dvc/recovery.py repair_safe)."""
        from pipeline.engines.dvc.recovery import repair_safe

        try:
            findings = repair_safe(self.root)
        except Exception as err:  # git missing or an unreadable repo: the app still opens
            self.call_from_thread(self.notify, clean(f"could not check the workspace for crash damage: {err}"),
                                  severity="warning", markup=False)
            return
        self.call_from_thread(self._report_workspace, findings)

    def _report_workspace(self, findings: list) -> None:
        self.workspace_findings = findings
        if findings:
            text = "\n".join(f"• {f.line()}" for f in findings)
            self.notify(clean(text, multiline=True), title="an earlier run crashed here", severity="warning",
                        timeout=60, markup=False)

    def action_leave_field(self) -> None:
        self.screen.set_focus(None)

    def action_help(self) -> None:
        from tui.screens.keys_help import KeysHelp

        if isinstance(self.screen, KeysHelp):
            return
        screen_keys = [b for b in getattr(self.screen, "BINDINGS", []) if isinstance(b, Binding)]
        global_keys = [b for b in self.BINDINGS if b.action != "leave_field"]
        global_keys.append(Binding(self.COMMAND_PALETTE_BINDING, "command_palette", "Command palette: every screen and run"))
        name = self.current_mode if len(self.screen_stack) == 1 else type(self.screen).__name__
        self.push_screen(KeysHelp(str(name), screen_keys, global_keys))

    def running_run(self):
        """The dvc run the pipeline screen has going, if any."""
        screen = self.pipeline_screen
        return None if screen is None else screen.current

    async def action_quit(self) -> None:
        run = self.running_run()
        if run is not None and not self._quit_armed:
            # Quitting would end the run (its output pipe closes): say so once.
            self._quit_armed = True
            self.notify(clean(f"{run.command} is running: press q again to cancel it and quit"), severity="warning",
                        markup=False)
            return
        if run is not None:
            import asyncio

            await asyncio.to_thread(run.cancel)
        self.exit()

    def action_review(self) -> None:
        # Imported here: the review screen is another module and may not exist in this checkout.
        try:
            from tui.screens.review import ReviewScreen
        except ImportError as err:
            self.notify(clean(f"the review screen is not available: {err}"), severity="error", markup=False)
            return
        if isinstance(self.screen, ReviewScreen):
            return  # already in front: a second copy would hold a second view of the same log
        try:
            # the person at the keyboard appends to their own log, as `tenny review` does
            by = default_reviewer()
            screen = ReviewScreen(self.root / paths.DEDUPED, reviewer_log(self.root / paths.REVIEWS_DIR, by),
                                  dropped=self.root / paths.DEDUPE_DROPPED, base_dir=self.root / paths.BASE_DIR, by=by)
        except UserError as err:
            self.notify(clean(str(err)), severity="error", markup=False)
            return
        self.push_screen(screen)

    def pipeline_action(self, name: str) -> None:
        """Run a pipeline-screen action from anywhere (the command palette)."""

        async def go() -> None:
            await self.switch_mode("pipeline")
            getattr(self.screen, f"action_{name}")()

        self.call_later(go)


def _chat_screen(root: Path, params):
    # Imported when the mode first opens: the chat screen's models load only then, in a worker.
    from tui.screens.chat import ChatScreen

    return ChatScreen(root, params)


class TrainWatchApp(App):
    """`tenny train-watch`: the training monitor alone."""

    CSS_PATH = "app.tcss"
    TITLE = "tenny train-watch"
    BINDINGS = [Binding("q", "quit", "Quit")]

    def __init__(self, directory: str | Path, *, interval: float = 1.0, nvml=None):
        super().__init__()
        self.directory = Path(directory)
        self.interval = interval
        self.nvml = nvml

    def on_mount(self) -> None:
        from tui.screens.train_monitor import TrainMonitorScreen

        self.push_screen(TrainMonitorScreen(self.directory, interval=self.interval, nvml=self.nvml))


def run_app(params, args) -> int:
    """Entry point for `tenny` with no command."""
    root = Path(os.getcwd())
    if not (root / ".dvc").is_dir():
        raise UserError(f"{root} is not a DVC repository: cd into your tenny project (where dvc.yaml is), "
                        "or run `git init && dvc init` to start one")
    TennyApp(root, params).run()
    return 0
