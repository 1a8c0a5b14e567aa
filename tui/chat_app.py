"""``tenny chat`` as an app of its own: the chat screen and nothing else.

The main app (tui/app.py, key 7) shows the same ChatScreen; this one starts
without the other screens' imports, which matters over SSH.
"""

from __future__ import annotations

from pathlib import Path

from textual.app import App
from textual.binding import Binding

from pipeline.engines.chat_session import Sampling
from tui.screens.chat import ChatScreen


class ChatApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "tenny chat"
    BINDINGS = [Binding("q", "quit", "Quit")]  # while the field has focus q types; Esc leaves it first

    def __init__(self, root: str | Path, params, *, sampling: Sampling | None = None, only: str | None = None,
                 gguf: str | Path | None = None) -> None:
        super().__init__()
        self.chat = ChatScreen(root, params, sampling=sampling, only=only, gguf=gguf)

    def get_default_screen(self) -> ChatScreen:
        return self.chat
