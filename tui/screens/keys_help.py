"""The app's ``?``: every key of the screen in front, then the keys that work on every screen."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


def _key(b: Binding) -> str:
    return b.key_display or ", ".join(k.replace("question_mark", "?") for k in b.key.split(","))


def keys_table(bindings: list[Binding]) -> Table:
    table = Table(box=None, show_header=False, pad_edge=False, expand=True)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for b in bindings:
        table.add_row(_key(b), b.tooltip or b.description)
    return table


class KeysHelp(ModalScreen[None]):
    DEFAULT_CSS = """
    KeysHelp { align: center middle; }
    KeysHelp > VerticalScroll { width: 64; max-width: 100%; height: auto; max-height: 100%;
                                border: round $accent; background: $surface; padding: 0 1; }
    KeysHelp .keys-title { text-style: bold; margin: 1 0 0 0; }
    """
    BINDINGS = [Binding("escape,q,question_mark", "close", "Close")]

    def __init__(self, screen_name: str, screen_keys: list[Binding], global_keys: list[Binding]) -> None:
        super().__init__()
        self.screen_name = screen_name
        self.screen_keys = screen_keys
        self.global_keys = global_keys

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(Text(f"Keys — {self.screen_name} (escape closes)", style="bold"))
            if self.screen_keys:
                yield Static(keys_table(self.screen_keys))
            yield Static(Text("On every screen", style="bold"), classes="keys-title")
            yield Static(keys_table(self.global_keys))

    def action_close(self) -> None:
        self.dismiss(None)
