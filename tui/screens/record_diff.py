"""One record old → new: what the dataset diff's Enter opens.

The assistant turn (or completion) comes first, word by word: deleted words
red and struck through, inserted ones green; turns that did not change take
one line ("system: unchanged"). Then the meta keys that changed, by name,
with their old and new values.

Record text is untrusted: every piece is a ``Text`` from ``pipeline.core.text``
with a style added around it, never a markup string.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from pipeline.core.errors import UserError
from pipeline.core.text import as_line, as_text, clean
from pipeline.engines.word_diff import RecordChange, value_text
from tui.global_keys import GlobalKeysFirst

DELETED = "red strike"
INSERTED = "bold green"
TEXT_LIMIT = 20_000  # characters drawn per run of a field; the rest is counted, not drawn


def change_text(change: RecordChange, rev_a: str = "A", rev_b: str = "B") -> Text:
    """The whole view as one Text (also what tests read)."""
    out = Text()
    out.append_text(as_line(change.id, 80, style="bold"))
    out.append(f"  {change.status}  ", style="bold yellow" if change.status != "unchanged" else "dim")
    out.append_text(as_line(rev_a, 40, style="dim"))
    out.append(" → ", style="dim")
    out.append_text(as_line(rev_b, 40, style="dim"))
    out.append("\n")
    for part in change.parts:
        out.append("\n")
        if not part.changed:
            out.append_text(as_line(f"{part.label}: unchanged", style="dim"))
            continue
        out.append_text(as_line(part.label, style="bold underline"))
        if part.old is None:
            out.append("  (not at A)", style="dim")
        elif part.new is None:
            out.append("  (not at B)", style="dim")
        out.append("\n")
        for op, text in part.ops():
            style = "" if op == "equal" else DELETED if op == "delete" else INSERTED
            if style and not text.strip():
                style += " reverse"  # changed spacing would draw as nothing: a block shows where it is
            out.append_text(as_text(text, multiline=True, limit=TEXT_LIMIT, style=style))
        out.append("\n")
    if change.meta:
        out.append("\nmeta changed: ", style="bold")
        out.append_text(as_line(", ".join(m.key for m in change.meta)))
        for m in change.meta:
            out.append("\n  ")
            out.append_text(as_line(m.key, 40, style="bold"))
            out.append(": ")
            out.append_text(as_line(value_text(m.old), style=DELETED))
            out.append(" → ")
            out.append_text(as_line(value_text(m.new), style=INSERTED))
    elif change.kind_old and change.kind_new:
        out.append("\nmeta: unchanged", style="dim")
    return out


class RecordDiffScreen(GlobalKeysFirst, Screen):
    BINDINGS = [
        Binding("escape,q", "back", "Back"),
        Binding("pagedown", "page(1)", "Page↓", show=False),
        Binding("pageup", "page(-1)", "Page↑", show=False),
    ]
    AUTO_FOCUS = "#record-diff-body"

    def __init__(self, root: str | Path, rev_a: str, rev_b: str, path: str, rid: str, **kwargs):
        super().__init__(**kwargs)
        self.root = Path(root)
        self.rev_a, self.rev_b, self.path, self.rid = rev_a, rev_b, path, rid
        self.change: RecordChange | None = None
        self.error: str | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with VerticalScroll(id="record-diff-body", can_focus=True):
            yield Static(as_text(f"reading {self.rid} at {self.rev_a} and {self.rev_b}…", style="yellow"),
                         id="record-diff")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = clean(f"{self.path}: {self.rev_a} → {self.rev_b}")
        self._load()

    @work(thread=True, exclusive=True, group="record-diff", exit_on_error=False)
    def _load(self) -> None:
        from pipeline.commands.diff import record_change

        try:
            change = record_change(self.root, self.rev_a, self.rev_b, self.rid, self.path)
        except UserError as err:
            self.app.call_from_thread(self._failed, str(err))
            return
        except Exception as err:  # DVC internals: shown, the app stays
            self.app.call_from_thread(self._failed, f"{type(err).__name__}: {err}")
            return
        self.app.call_from_thread(self._show, change)

    def _failed(self, message: str) -> None:
        self.error = message
        self.query_one("#record-diff", Static).update(as_text(message, multiline=True, style="bold red"))

    def _show(self, change: RecordChange) -> None:
        self.change = change
        self.query_one("#record-diff", Static).update(change_text(change, self.rev_a, self.rev_b))

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_page(self, direction: int) -> None:
        body = self.query_one("#record-diff-body", VerticalScroll)
        body.scroll_page_down() if direction > 0 else body.scroll_page_up()
