"""Training monitor: follows a run's dvclive folder, wherever the run was started.

It reads files only (dvclive/run.json, metrics.json, plots/*.tsv), so it works
for a run started from this app, from another shell, or on a box you reached
over SSH. A poll costs a few stat() calls plus the bytes written since the last
one, in a worker thread; the training process never waits on the watcher.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, ProgressBar, Static

from pipeline.core import paths
from pipeline.core import run_status as rs
from pipeline.core.text import clean
from pipeline.engines.train_progress import Nvml, Progress, ProgressReader, format_duration
from tui.global_keys import GlobalKeysFirst
from tui.widgets.gpu_panel import GpuPanel
from tui.widgets.loss_chart import LossChart
from tui.widgets.train_samples import SamplesPanel

STATUS_STYLE = {"running": "bold green", "finished": "bold cyan", "failed": "bold red", "stale": "bold yellow",
                "waiting": "dim"}


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return "—" if value is None else format(value, spec)


def render_header(p: Progress, now: float | None = None) -> Text:
    # run.json is whatever the run wrote (status, model, device, its error): every such
    # value is made safe before it is drawn.
    now = time.time() if now is None else now
    t = Text()
    if not p.exists:
        t.append(f"waiting for {clean(p.dir)}/ ", style="bold")
        t.append("— no training output yet. Start a run with `dvc repro train` (pipeline screen: select "
                 "train, press t) or `tenny train`; this screen picks it up as soon as it writes.")
        return t
    t.append(clean(p.status.upper()), style=STATUS_STYLE.get(p.status, "bold"))
    step = "—" if p.step is None else f"{p.step:,}"
    total = f"/{p.total_steps:,}" if p.total_steps else ""
    t.append(f"   step {step}{total}")
    if p.epoch is not None:
        t.append(f"   epoch {p.epoch:.2f}")
    if p.status == "running":
        t.append(f"   ETA {format_duration(p.eta_s)}")
    if p.started_at:
        t.append(f"   elapsed {format_duration((p.updated_at or now) - p.started_at)}")
    if p.updated_at:
        t.append(f"   updated {format_duration(now - p.updated_at)} ago", style="dim")
    t.append("\n")
    t.append(clean(f"model {p.base_model or '—'}   quantization {p.quantization or '—'}   device {p.device or '—'}"))
    if p.status == "failed":
        t.append(f"\nthe run failed{': ' + clean(p.error) if p.error else ''}; its log is in the shell or the pipeline "
                 "screen that started it", style="red")
    if p.stop_reason:
        t.append(f"\nearly stopping: {clean(p.stop_reason)}", style="cyan")
    if p.status == "stale":
        t.append("\nno update for a while: the run may have been killed (check the shell or `dvc repro` log)",
                 style="yellow")
    for problem in p.problems:
        t.append(f"\n{clean(problem)}", style="dim")
    return t


def render_stats(p: Progress) -> Text:
    t = Text()
    rows = [
        ("train loss", _fmt(p.value(rs.TRAIN_LOSS))),
        ("eval loss", _fmt(p.value(rs.EVAL_LOSS))),
        ("learning rate", _fmt(p.value(rs.LEARNING_RATE), ".3g")),
        ("tokens / s", _fmt(p.value(rs.TOKENS_PER_S), ",.0f")),
        ("step time", "—" if p.value(rs.STEP_TIME) is None else f"{p.value(rs.STEP_TIME):.2f} s"),
        ("checkpoint", clean(p.last_checkpoint or "—")),
        ("resumed from", "—" if p.resumed_from_step is None else f"step {p.resumed_from_step}"),
    ]
    # Early stopping: shown only for a run that uses it.
    if p.kept_step is not None:
        rows.append(("kept step", f"{p.kept_step:,} (best val loss)"))
    elif p.best_step is not None:
        rows.append(("best so far", f"step {p.best_step:,}"))
    for label, value in rows:
        t.append(f"{label:<14}", style="dim")
        t.append(f"{value}\n")
    return t


def has_run(p: Progress) -> bool:
    """Whether the folder holds a run (not nothing, not an empty folder)."""
    return p.exists and (p.status != "waiting" or p.step is not None or bool(p.series))


def run_identity(directory: Path, p: Progress) -> tuple:
    """(start time, device, inode): a new run in the folder changes one of them.

    Both, because a deleted folder's inode is often reused at once, and a run's
    first files can land before its run.json (no start time yet)."""
    try:
        st = directory.stat()
        return (p.started_at, st.st_dev, st.st_ino)
    except OSError:
        return (p.started_at, None, None)


def is_other_run(old: tuple | None, new: tuple) -> bool:
    if old is None:
        return False
    if old[0] is not None and new[0] is not None and old[0] != new[0]:
        return True
    return old[1:] != new[1:]


def describe_run(p: Progress) -> str:
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(p.started_at)) if p.started_at else "start unknown"
    step = "—" if p.step is None else f"{p.step:,}"
    return f"{p.status}, started {started}, step {step}"


class TrainMonitorScreen(GlobalKeysFirst, Screen):
    """Live view of ``dvclive/`` (or any folder given)."""

    BINDINGS = [
        Binding("r", "refresh_now", "Refresh"),
        Binding("a", "answers", "Answers"),
        Binding("left", "earlier", "Earlier"),
        Binding("right", "later", "Later"),
        Binding("plus,equals_sign", "faster", "Faster", show=False),
        Binding("minus", "slower", "Slower", show=False),
    ]

    def __init__(self, directory: str | Path | None = None, *, interval: float = 1.0,
                 root: str | Path | None = None, nvml: Nvml | None = None, **kwargs):
        super().__init__(**kwargs)
        base = Path(root) if root else Path.cwd()
        directory = Path(directory) if directory else paths.DVCLIVE_DIR
        self.directory = directory if directory.is_absolute() else base / directory
        self.interval = interval
        self.reader = ProgressReader(self.directory)
        self.nvml = nvml or Nvml()
        self.progress: Progress | None = None
        # The run last shown and what identifies it, so a deleted or replaced folder is noticed
        # (the reader alone just starts over and would silently show "waiting" or another run).
        self._shown: Progress | None = None
        self._shown_id: tuple | None = None
        self._shown_series: dict = {}
        self.gone: str | None = None  # why the run on screen is no longer in the workspace
        self.replaced: str | None = None  # the run a new one replaced, while the new one is shown
        self._busy = False
        self._timer = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="train-body"):
            yield Static(id="train-header")
            yield ProgressBar(id="train-progress", show_eta=False)
            with Horizontal(id="train-main"):
                yield LossChart(id="loss-chart")
                with Vertical(id="train-side"):
                    yield Static(id="train-stats")
                    yield GpuPanel(id="gpu-panel")
            yield SamplesPanel(id="train-samples")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = clean(f"training monitor — {self.directory}")
        self.query_one("#train-stats", Static).border_title = "now"
        self.query_one(SamplesPanel).display = False
        self.poll()
        self._timer = self.set_interval(self.interval, self.poll)

    def poll(self) -> None:
        # Skip a tick rather than queue one: a slow disk must not pile up readers.
        if not self._busy:
            self._busy = True
            self._read()

    @work(thread=True, group="train-poll", exit_on_error=False)
    def _read(self) -> None:
        try:
            progress = self.reader.poll()
            identity = run_identity(self.directory, progress)
            gpus, message = self.nvml.read()
            series = {k: list(v) for k, v in progress.series.items()}
        finally:
            self._busy = False
        self.app.call_from_thread(self._show, progress, series, gpus, message, identity)

    def _track(self, p: Progress, identity: tuple) -> Progress:
        """What to draw: the new reading, or the last run's values when its folder is gone."""
        shown = self._shown
        if not has_run(p):
            if shown is not None:
                how = "was deleted" if not p.exists else "was emptied"
                self.gone = (f"the run shown ({describe_run(shown)}) is no longer in the workspace: "
                             f"{self.directory.name}/ {how}. Last values read are kept; a new run shows "
                             "here when it starts writing.")
                return shown
            return p
        if shown is not None and is_other_run(self._shown_id, identity):
            self.replaced = (f"the run shown before ({describe_run(shown)}) is no longer in the workspace: "
                             f"a new run replaced {self.directory.name}/")
        self.gone = None
        self._shown, self._shown_id = p, identity
        return p

    def _show(self, p: Progress, series, gpus, message, identity: tuple = (None, None, None)) -> None:
        p = self._track(p, identity)
        if self.gone:
            series = self._shown_series
        else:
            self._shown_series = series
        self.progress = p
        header = Text()
        for note in (self.gone, self.replaced):
            if note:
                header.append(clean(note) + "\n", style="bold red" if note is self.gone else "yellow")
        self.query_one("#train-header", Static).update(header + render_header(p))
        self.query_one("#train-stats", Static).update(render_stats(p))
        bar = self.query_one("#train-progress", ProgressBar)
        if p.total_steps:
            bar.update(total=p.total_steps, progress=min(p.step or 0, p.total_steps))
        else:
            bar.update(total=None)
        self.query_one(LossChart).show(series)
        had = bool(self.query_one(SamplesPanel).samples)
        self.query_one(SamplesPanel).show(p.samples, p.kept_step)
        if had != bool(p.samples):
            self.refresh_bindings()  # "a Answers" shows once there are answers
        self.query_one(GpuPanel).show(gpus, message)

    @property
    def answers_shown(self) -> bool:
        return bool(self.query_one(SamplesPanel).display)

    def check_action(self, action: str, parameters) -> bool | None:
        # Keys for the answers show only where they do something (and leave the footer alone otherwise).
        if action not in ("answers", "earlier", "later"):
            return True
        try:
            panel = self.query_one(SamplesPanel)
        except Exception:  # not composed yet
            return False
        return bool(panel.samples) if action == "answers" else bool(panel.display)

    def action_answers(self) -> None:
        """Switch between the loss chart and the answers given while training."""
        shown = not self.answers_shown
        self.query_one(SamplesPanel).display = shown
        self.query_one("#train-main").display = not shown
        self.refresh_bindings()

    def action_earlier(self) -> None:
        self.query_one(SamplesPanel).step_by(-1)

    def action_later(self) -> None:
        self.query_one(SamplesPanel).step_by(1)

    def action_refresh_now(self) -> None:
        self.poll()

    def _retime(self, interval: float) -> None:
        self.interval = max(0.2, min(30.0, interval))
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_interval(self.interval, self.poll)
        self.notify(f"refreshing every {self.interval:g} s")

    def action_faster(self) -> None:
        self._retime(self.interval / 2)

    def action_slower(self) -> None:
        self._retime(self.interval * 2)
