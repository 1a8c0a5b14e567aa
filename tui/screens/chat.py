"""Chat: talk to the base model and to base + adapter side by side, multi-turn.

The models load in a worker (the status line says which folder is loading,
then "ready", or the error); answers stream into their pane as the tokens are
generated (the generation runs in a worker thread and hands text to the UI
through ``call_from_thread``). The base answers first, then the adapter: the
two share one model in memory (pipeline/engines/chat_session.py). With a GGUF
file (``tenny chat --gguf FILE``, or g here), one pane answers from that file
through llama.cpp's llama-server (pipeline/engines/gguf_chat.py): what a person
will hear after handing the file to Ollama or LM Studio.

Keys: i or Enter types (no screen opens with a text field focused); Enter
sends; Esc stops the answer being written, and otherwise leaves the field;
t/T and p/P raise and lower temperature and top-p for the next answer; c
clears both conversations; g switches to the next GGUF file of models/gguf/
(and from the last one back to the Python models). Side by side from 100 columns, stacked below that,
so 80×24 over SSH works. Everything a model or a person wrote is shown as
text (``as_text``), never as markup.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Static
from textual.worker import get_current_worker

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.core.text import as_text, clean
from pipeline.engines.chat_session import (
    MAKE_MODELS,
    SIDE_TITLES,
    SIDES,
    ChatSession,
    Reply,
    Sampling,
)
from pipeline.engines.gguf_chat import SIDE as GGUF_SIDE
from pipeline.engines.gguf_chat import GgufChatSession, gguf_files, title
from tui.global_keys import GlobalKeysFirst

STACK_BELOW = 100  # columns: two readable panes need about 50 each
FLUSH_EVERY = 0.03  # seconds between pane updates while tokens stream: smooth, and cheap with a fast model


@dataclass
class Exchange:
    user: str
    reply: str = ""
    note: str = "writing…"
    failed: bool = False


def conversation_text(exchanges: list[Exchange]) -> Text:
    """A pane's content: each user turn, then the answer, as text; a note says how an answer ended."""
    out = Text(overflow="fold")
    for i, ex in enumerate(exchanges):
        if i:
            out.append("\n\n")
        out.append("you: ", style="bold")
        out.append_text(as_text(ex.user, multiline=True, style="bold"))
        out.append("\n")
        out.append_text(as_text(ex.reply, multiline=True))
        if ex.note:
            out.append(("\n" if ex.reply else "") + ex.note, style="bold red" if ex.failed else "italic dim")
    return out


class ChatPane(VerticalScroll):
    """One side's conversation; scrolls with the answer unless the reader scrolled up."""

    def __init__(self, side: str) -> None:
        super().__init__(id=f"chat-{side}-pane", classes="chat-pane")
        self.side = side
        self.exchanges: list[Exchange] = []

    def compose(self) -> ComposeResult:
        yield Static(id=f"chat-{self.side}", classes="chat-log")

    def on_mount(self) -> None:
        self.border_title = SIDE_TITLES.get(self.side, "")

    def _show(self) -> None:
        follow = self.scroll_y >= self.max_scroll_y - 1
        self.query_one(Static).update(conversation_text(self.exchanges))
        if follow:
            self.call_after_refresh(self.scroll_end, animate=False)

    def begin(self, user: str) -> None:
        self.exchanges.append(Exchange(user))
        self.border_subtitle = "writing…"
        self._show()

    def add(self, text: str) -> None:
        ex = self.exchanges[-1]
        # the generation prompt ends before the space an answer starts with
        ex.reply = (ex.reply + text) if ex.reply else text.lstrip()
        self._show()

    def finish(self, reply: Reply) -> None:
        ex = self.exchanges[-1]
        ex.reply, ex.note = reply.text, reply.note()
        self.border_subtitle = f"{reply.tokens} tokens, {reply.seconds:.1f} s"
        self._show()

    def fail(self, message: str) -> None:
        ex = self.exchanges[-1]
        ex.note, ex.failed = f"error: {message}", True
        self.border_subtitle = "error"
        self._show()

    def clear(self) -> None:
        self.exchanges.clear()
        self.border_subtitle = ""
        self._show()


class ChatScreen(GlobalKeysFirst, Screen):
    BINDINGS = [
        Binding("i,enter", "focus_input", "Type", key_display="i"),
        Binding("escape", "escape", "Stop/leave", key_display="esc"),
        Binding("t", "temperature(0.1)", "Temp±", key_display="t/T"),
        Binding("T", "temperature(-0.1)", "Temperature down", show=False),
        Binding("p", "top_p(0.05)", "Top-p±", key_display="p/P"),
        Binding("P", "top_p(-0.05)", "Top-p down", show=False),
        Binding("c", "clear", "Clear"),
        Binding("g", "next_gguf", "GGUF"),
    ]

    def __init__(self, root: str | Path | None = None, params=None, *, sampling: Sampling | None = None,
                 only: str | None = None, gguf: str | Path | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root = Path(root or Path.cwd())
        self.params = params
        self.sampling = sampling or Sampling()
        self.only = only
        self.gguf = Path(gguf) if gguf else None  # a file of models/gguf/ instead of the Python models
        self.session: ChatSession | GgufChatSession | None = None
        self.state = "loading"  # loading | ready | error
        self.error: str | None = None
        self.generating = False
        self._stop = threading.Event()
        self._notice = ""

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="chat-status")
        with Container(id="chat-panes"):
            for side in (*SIDES, GGUF_SIDE):
                yield ChatPane(side)
        yield Input(id="chat-input", placeholder="i or Enter to type · Enter sends · Esc stops an answer / leaves")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = clean(str(self.root))
        self._layout(self.app.size.width)
        self._start_loading()

    def _start_loading(self) -> None:
        for side in SIDES:
            self.query_one(f"#chat-{side}-pane").display = self.gguf is None and self.only in (None, side)
        pane = self.query_one(f"#chat-{GGUF_SIDE}-pane", ChatPane)
        pane.display = self.gguf is not None
        if self.gguf is not None:
            pane.border_title = clean(title(self.gguf))
            self._status(f"starting llama-server for {self.gguf} …")
        else:
            self._status(f"loading {paths.BASE_DIR}" + ("" if self.only == "base" else f" + {paths.ADAPTER_DIR}") + " …")
        self.state, self.error = "loading", None
        self.load_models()

    def on_resize(self, event) -> None:
        self._layout(event.size.width)

    def _layout(self, width: int) -> None:
        self.query_one("#chat-panes").set_class(width < STACK_BELOW, "-stacked")

    def on_unmount(self) -> None:
        self._stop.set()  # a generation thread must not outlive the screen
        self._close_session()

    def _close_session(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            session.close()  # llama-server must not outlive the screen either

    # ---------------------------------------------------------------- status

    def _status(self, message: str | None = None, error: bool = False) -> None:
        status = self.query_one("#chat-status", Static)
        status.set_class(error, "-error")
        if message is not None:
            status.update(as_text(message))
            return
        state = "writing…" if self.generating else "ready"
        sp = self.sampling
        temp = "greedy" if sp.temperature == 0 else f"temperature {sp.temperature:.1f}"
        line = f"{state} · {temp} (t/T) · top-p {sp.top_p:.2f} (p/P) · ≤{sp.max_new_tokens} tokens"
        status.update(as_text(self._notice + line))

    # ---------------------------------------------------------------- loading

    @work(thread=True, exclusive=True, group="chat-load", exit_on_error=False)
    def load_models(self) -> None:
        try:
            params = self.params
            if params is None:
                from pipeline.core.params import load_params

                params = load_params(self.root / paths.PARAMS)
            if self.gguf is not None:
                session = GgufChatSession(params, self.gguf)
            else:
                session = ChatSession(params, root=self.root, only=self.only)
            session.load()
        except UserError as err:
            self.app.call_from_thread(self._load_failed, str(err))
        except Exception as err:  # noqa: BLE001 -- the screen says what went wrong; the app stays up
            self.app.call_from_thread(self._load_failed, f"{type(err).__name__}: {err}")
        else:
            self.app.call_from_thread(self._loaded, session)

    def _load_failed(self, message: str) -> None:
        self.state, self.error = "error", message
        self._status(f"could not load the models: {message}", error=True)

    def _loaded(self, session: ChatSession | GgufChatSession) -> None:
        if not self.is_attached:  # the screen closed while the models loaded
            session.close()
            return
        self.session, self.state = session, "ready"
        self._notice = ""
        if isinstance(session, GgufChatSession):
            self._notice = f"{session.path.name} in llama.cpp (g: next file) · "
        elif "adapter" not in session.sides:
            self.query_one("#chat-adapter-pane").display = False
            if self.only is None:
                self._notice = f"no adapter in {paths.ADAPTER_DIR} (`{MAKE_MODELS}` trains one): the base alone · "
        self._status()

    # ---------------------------------------------------------------- keys

    def action_focus_input(self) -> None:
        self.query_one("#chat-input", Input).focus()

    def action_escape(self) -> None:
        if self.generating:
            self._stop.set()
        else:
            self.set_focus(None)

    def action_temperature(self, delta: float) -> None:
        value = min(2.0, max(0.0, round(self.sampling.temperature + delta, 2)))
        self.sampling = self.sampling.model_copy(update={"temperature": value})
        self._status_if_ready()

    def action_top_p(self, delta: float) -> None:
        value = min(1.0, max(0.05, round(self.sampling.top_p + delta, 2)))
        self.sampling = self.sampling.model_copy(update={"top_p": value})
        self._status_if_ready()

    def _status_if_ready(self) -> None:
        if self.state == "ready":
            self._status()

    def action_clear(self) -> None:
        if self.generating:
            self.notify("an answer is being written: Esc stops it, then c clears", markup=False)
            return
        if self.session is not None:
            self.session.clear()
        for pane in self.query(ChatPane):
            pane.clear()

    def action_next_gguf(self) -> None:
        """The next GGUF file of models/gguf/; after the last one, the Python models again."""
        if self.generating:
            self.notify("an answer is being written: Esc stops it, then g switches", markup=False)
            return
        if self.state == "loading":
            self.notify("still loading: wait for ready, then g switches", markup=False)
            return
        files = gguf_files(self.root)
        if not files and self.gguf is None:
            self.notify(f"no GGUF file in {paths.GGUF_DIR}/: `tenny export --set export.gguf=[q4_k_m]` writes one",
                        severity="warning", markup=False)
            return
        order: list[Path | None] = [*files, None]
        here = next((i for i, f in enumerate(order) if f is not None and self.gguf is not None
                     and f.resolve() == self.gguf.resolve()), -1)
        self.gguf = order[(here + 1) % len(order)]
        self._close_session()
        for pane in self.query(ChatPane):
            pane.clear()
        self._start_loading()

    # ---------------------------------------------------------------- answers

    @on(Input.Submitted, "#chat-input")
    def send(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        if self.state != "ready":
            message = "the models are still loading" if self.state == "loading" else "the models did not load (see the status line)"
            self.notify(message, severity="warning", markup=False)
            return
        if self.generating:
            self.notify("an answer is being written: wait, or Esc to stop it", markup=False)
            return
        event.input.value = ""
        self.generating = True
        self._stop = threading.Event()
        self._status()
        self.answer(text, self.sampling)

    @work(thread=True, exclusive=True, group="chat-answer", exit_on_error=False)
    def answer(self, text: str, sampling: Sampling) -> None:
        worker = get_current_worker()
        try:
            for side in self.session.sides:
                self._answer_side(side, text, sampling, worker)
                if worker.is_cancelled:
                    return
        finally:
            if not worker.is_cancelled:
                self.app.call_from_thread(self._answered)

    def _answer_side(self, side: str, text: str, sampling: Sampling, worker) -> None:
        """One side's answer, on the worker thread; the pane gets the text in batches of ``FLUSH_EVERY``."""
        call = self.app.call_from_thread
        pane = self.query_one(f"#chat-{side}-pane", ChatPane)
        stop = self._stop = threading.Event()  # Esc stops this side's answer; the next side still answers
        call(pane.begin, text)
        pending: list[str] = []
        last = time.monotonic()

        def on_piece(piece: str) -> None:
            nonlocal last
            pending.append(piece)
            if worker.is_cancelled:
                stop.set()
            if time.monotonic() - last >= FLUSH_EVERY:
                call(pane.add, "".join(pending))
                pending.clear()
                last = time.monotonic()

        try:
            reply = self.session.reply(side, text, sampling, stop, on_piece)
        except UserError as err:
            call(pane.fail, str(err))
        except Exception as err:  # noqa: BLE001 -- the pane says what went wrong; the app stays up
            call(pane.fail, f"{type(err).__name__}: {err}")
        else:
            call(pane.finish, reply)

    def _answered(self) -> None:
        self.generating = False
        self._status()
