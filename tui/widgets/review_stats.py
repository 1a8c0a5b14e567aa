"""The review-stats view (key S): how far the team agrees, figured from the logs as they are now.

The same figures as reports/review.json (``pipeline.engines.agreement``), worked
out in a thread worker when the view opens: a million decisions take a second
or two, and the screen below keeps its place.
"""

from __future__ import annotations

from pathlib import Path

from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static
from textual.worker import get_current_worker

from pipeline.core.text import as_line


def _fig(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def stats_renderable(report: dict) -> Table | Text:
    """The agreement report as tables a person reads: reviewers, pairs, overall, tags."""
    out = Table.grid(padding=(0, 0))
    who = Table(title="Reviewers", title_justify="left", expand=False)
    for col in ("reviewer", "decided", "accepted", "rejected", "edited"):
        who.add_column(col, justify="left" if col == "reviewer" else "right")
    for name, r in report["reviewers"].items():
        who.add_row(as_line(name, 40), f"{r['decided']:,}", f"{r['accepted']:,}", f"{r['rejected']:,}", f"{r['edited']:,}")
    out.add_row(who)
    ci = report.get("alpha_ci95")
    overall = Text()
    overall.append("Krippendorff's alpha ", style="bold")
    overall.append(_fig(report["alpha"]))
    overall.append(f"  (95% interval {_fig(ci[0])} – {_fig(ci[1])})" if ci else "  (needs records two reviewers decided)")
    overall.append(f"\n{report['records_decided']:,} records decided · {report['records_done']:,} done "
                   f"(overlap {report.get('overlap', 1)}) · {report['disagreements']:,} disagreements")
    out.add_row(overall)
    if report["pairs"]:
        pairs = Table(title="Pairs (accept / reject, on records both decided)", title_justify="left")
        for col in ("a", "b", "both decided", "agreement", "Cohen's kappa"):
            pairs.add_column(col, justify="left" if col in ("a", "b") else "right")
        for p in report["pairs"]:
            pairs.add_row(as_line(p["a"], 30), as_line(p["b"], 30), f"{p['both_decided']:,}", _fig(p["agreement"]),
                          _fig(p["kappa"]))
        out.add_row(pairs)
    if report["tags"]:
        tags = Table(title="Tags (on records two or more reviewers decided)", title_justify="left")
        for col in ("tag", "records", "agreement", "alpha"):
            tags.add_column(col, justify="left" if col == "tag" else "right")
        for tag, t in report["tags"].items():
            tags.add_row(as_line(tag, 40), f"{t['records']:,}", _fig(t["agreement"]), _fig(t["alpha"]))
        out.add_row(tags)
    return out


class ReviewStats(ModalScreen[None]):
    """Agreement between the reviewers of a folder of logs."""

    BINDINGS = [Binding("escape,q,S", "close", "Close")]

    def __init__(self, folder: Path, adjudicators: list[str], overlap: int, *, extra: list[Path] = (),
                 only: list[str] | None = None) -> None:
        super().__init__()
        self.folder, self.adjudicators, self.overlap = Path(folder), list(adjudicators), overlap
        self.extra, self.only = list(extra), only
        self.report: dict | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="rv-dialog", classes="rv-stats"):
            yield Label("Team agreement (escape closes)", classes="rv-dialog-title")
            with VerticalScroll():
                yield Static(Text("working it out…", style="dim"), id="rv-stats-body")

    def on_mount(self) -> None:
        self._figure()

    @work(thread=True, exclusive=True, exit_on_error=False)
    def _figure(self) -> None:
        from pipeline.core.team import Team
        from pipeline.engines.agreement import agreement

        worker = get_current_worker()
        try:
            team = Team.load(self.folder, extra=self.extra)
            if self.only is not None:
                team.logs = {k: v for k, v in team.logs.items() if k in self.only}
            report = {"overlap": self.overlap, **agreement(team, self.adjudicators, self.overlap)}
        except Exception as err:  # a bad log line: said here, the review goes on
            if not worker.is_cancelled:
                self.app.call_from_thread(self._show_error, f"{type(err).__name__}: {err}")
            return
        if not worker.is_cancelled:
            self.app.call_from_thread(self._show, report)

    def _show(self, report: dict) -> None:
        self.report = report
        self.query_one("#rv-stats-body", Static).update(stats_renderable(report))

    def _show_error(self, message: str) -> None:
        self.query_one("#rv-stats-body", Static).update(Text(message, style="bold red"))

    def action_close(self) -> None:
        self.dismiss(None)
