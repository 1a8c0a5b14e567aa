"""The small modal screens of the review queue: edit, tag, go to, search, filter, confirm.

Each dismisses with its answer (or None when cancelled with escape), so the
review screen stays the only place that writes decisions.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.suggester import Suggester
from textual.widgets import Input, Label, OptionList, Static, TextArea
from textual.widgets.option_list import Option

from pipeline.core.text import as_line, as_text, clean, count_unsafe


class EditDialog(ModalScreen[str | None]):
    """Edit a sample's text: ctrl+s saves (an accepted edit), escape cancels."""

    # priority: TextArea takes escape itself (to release focus) and would swallow it
    BINDINGS = [
        Binding("ctrl+s", "save", "Save", priority=True),
        Binding("escape", "cancel", "Cancel", priority=True),
    ]

    def __init__(self, text: str, what: str = "text") -> None:
        super().__init__()
        # The editor shows the same visible escapes as the sample view: a person
        # never edits invisible escapes or bidi overrides they cannot see.
        self.unsafe = count_unsafe(text, multiline=True)
        self.initial = clean(text, multiline=True) if self.unsafe else text
        self.what = what

    def compose(self) -> ComposeResult:
        with Vertical(id="rv-dialog", classes="rv-edit"):
            yield Label(as_text(f"Edit the {self.what} — ctrl+s saves (and accepts), escape cancels"),
                        classes="rv-dialog-title")
            if self.unsafe:
                yield Static(as_text(f"{self.unsafe} control/invisible characters are shown as escapes such as \\x1b; "
                                     "saving keeps them as typed text, so delete any you do not want."),
                             classes="rv-dialog-note")
            yield TextArea(self.initial, soft_wrap=True, show_line_numbers=False, tab_behavior="indent", id="rv-editor")

    def on_mount(self) -> None:
        self.query_one(TextArea).focus()

    def action_save(self) -> None:
        self.dismiss(self.query_one(TextArea).text)

    def action_cancel(self) -> None:
        self.dismiss(None)


class TagSuggester(Suggester):
    """Completes the last comma-separated tag from the tags already in the log."""

    def __init__(self, known: list[str]) -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self.known = known

    async def get_suggestion(self, value: str) -> str | None:
        head, sep, last = value.rpartition(",")
        stem = last.lstrip()
        if not stem:
            return None
        lead = last[: len(last) - len(stem)]
        for tag in self.known:
            if tag.lower().startswith(stem.lower()) and tag != stem:
                return f"{head}{sep}{lead}{tag}"
        return None


class PromptDialog(ModalScreen[str | None]):
    """One line of input: enter answers, escape cancels."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, value: str = "", placeholder: str = "", *, suggester: Suggester | None = None,
                 input_type: str = "text", note: str = "") -> None:
        super().__init__()
        self.title_text = title
        self.value = value
        self.placeholder = placeholder
        self.suggester = suggester
        self.input_type = input_type
        self.note = note

    def compose(self) -> ComposeResult:
        with Vertical(id="rv-dialog", classes="rv-prompt"):
            yield Label(as_text(self.title_text, multiline=True), classes="rv-dialog-title")
            yield Input(self.value, placeholder=self.placeholder, suggester=self.suggester,
                        type=self.input_type, id="rv-input")  # type: ignore[arg-type]
            if self.note:
                yield Static(as_text(self.note, multiline=True), classes="rv-dialog-note")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class FilterDialog(ModalScreen[str | None]):
    """Type a filter (``tag:NAME``, ``KEY=VALUE``) or pick one with ↑/↓; enter applies."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("down", "move(1)", "Down", show=False, priority=True),
        Binding("up", "move(-1)", "Up", show=False, priority=True),
    ]

    def __init__(self, current: str, tags: list[str], slots: list[str]) -> None:
        super().__init__()
        self.current = current
        self.choices = ["all", "pending", "accepted", "rejected", "edited", "mine", "undecided", "needs-more",
                        "disagreements"]
        self.choices += [f"tag:{t}" for t in tags[:50]]
        self.choices += slots[:50]

    def compose(self) -> ComposeResult:
        with Vertical(id="rv-dialog", classes="rv-filter"):
            # a tag or slot value in the label came from a file: inert, never markup
            yield Label(as_text(f"Filter (now: {self.current}) — type pending, tag:NAME or KEY=VALUE, or pick with ↑/↓; "
                                "enter applies"), classes="rv-dialog-title")
            yield Input(placeholder="pending, tag:funny, topic=airports …", id="rv-input")
            yield OptionList(*[Option(as_line(c, 200), id=str(i)) for i, c in enumerate(self.choices)],
                             id="rv-filter-list")

    def on_mount(self) -> None:
        self.query_one(Input).focus()
        options = self.query_one(OptionList)
        options.highlighted = self.choices.index(self.current) if self.current in self.choices else 0

    def action_move(self, step: int) -> None:
        options = self.query_one(OptionList)
        at = (options.highlighted or 0) + step
        options.highlighted = max(0, min(len(self.choices) - 1, at))
        self.query_one(Input).value = ""

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        typed = event.value.strip()
        if typed:
            self.dismiss(typed)
            return
        at = self.query_one(OptionList).highlighted
        self.dismiss(self.choices[at] if at is not None else None)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(self.choices[int(event.option.id or 0)])

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmDialog(ModalScreen[bool]):
    """A yes/no question: y or enter confirms, n or escape declines."""

    BINDINGS = [
        Binding("y,enter", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="rv-dialog", classes="rv-confirm"):
            yield Static(as_text(self.question, multiline=True), classes="rv-dialog-title")
            yield Label("y  yes      n  no", classes="rv-dialog-note")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
