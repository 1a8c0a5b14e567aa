"""The ``?`` screen of the review queue: every key, from the same bindings the footer shows."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

NOTES = """\
Every decision is written to the log and fsynced before the next sample shows:
quitting, a dropped SSH session or kill -9 loses nothing already decided.
Reopening starts at the first undecided sample.

Filters: all · pending · accepted · rejected · edited · tag:NAME · KEY=VALUE
(KEY is a meta field or a slot, e.g. topic=airports).
Search: plain text matches any case; /regex/ is a regular expression.
Bulk (A / X) decides everything the current filter shows, after asking.
ctrl+p opens the command palette with every action."""


class ReviewHelp(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "close", "Close")]

    def __init__(self, bindings: list[Binding]) -> None:
        super().__init__()
        self.bindings_list = bindings

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, pad_edge=False, expand=True)
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for b in self.bindings_list:
            table.add_row(b.key_display or ", ".join(b.key.split(",")), b.tooltip or b.description)
        table.add_row("ctrl+p", "Command palette")
        with VerticalScroll(id="rv-dialog", classes="rv-help"):
            yield Static(Text("Review keys — escape closes", style="bold"), classes="rv-dialog-title")
            yield Static(table)
            yield Static(Text(NOTES, style="dim"), classes="rv-dialog-note")

    def action_close(self) -> None:
        self.dismiss(None)
