"""``tenny chat``: talk to the base model and to base + adapter, side by side.

With no flags it opens the chat screen (tui/screens/chat.py) as an app of its
own; ``--prompt TEXT`` asks both once and streams the answers to stdout
instead, for scripts and pipes. Textual and torch are imported inside ``run``
only: the CLI imports every command module to build its help.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any

from pipeline.core import paths
from pipeline.core.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--temperature", type=float, default=0.7, metavar="T", help="0 is greedy, as eval answers (default: 0.7)")
    parser.add_argument("--top-p", type=float, default=0.95, metavar="P", help="nucleus sampling mass (default: 0.95)")
    parser.add_argument("--max-new-tokens", type=int, default=200, metavar="N", help="longest answer in tokens (default: 200)")
    parser.add_argument("--only", choices=("base", "adapter"), help="chat with one model only")
    parser.add_argument("--prompt", metavar="TEXT", help="ask once, print both answers as they stream, and exit (no app)")


def sampling_from(args: Any):
    from pydantic import ValidationError

    from pipeline.engines.chat_session import Sampling

    values = {"temperature": getattr(args, "temperature", 0.7), "top_p": getattr(args, "top_p", 0.95),
              "max_new_tokens": getattr(args, "max_new_tokens", 200)}
    try:
        return Sampling(**values)
    except ValidationError as err:
        first = err.errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-")
        raise UserError(f"{flag} {values[first['loc'][0]]}: {first['msg']}") from None


class _Printer:
    """Writes an answer's pieces as they come, made safe for the terminal."""

    def __init__(self, out) -> None:
        self.out = out
        self.started = False

    def __call__(self, piece: str) -> None:
        from pipeline.core.text import clean

        if not self.started:
            piece = piece.lstrip()  # the answer starts after the space the prompt left out
            self.started = bool(piece)
        self.out.write(clean(piece, multiline=True))
        self.out.flush()


def one_shot(params: Any, prompt: str, sampling: Any, only: str | None, out=None) -> int:
    """Both answers to ``prompt``, streamed to ``out`` (stdout) with a header line each."""
    out = out or sys.stdout  # looked up now: a default bound at import keeps a stream that may be replaced since
    from pipeline.engines.chat_session import MAKE_MODELS, SIDE_TITLES, ChatSession

    session = ChatSession(params, root=Path("."), only=only)
    if not session.has_adapter and only is None:
        print(f"tenny chat: no adapter in {paths.ADAPTER_DIR} (`{MAKE_MODELS}` trains one): the base model alone",
              file=sys.stderr)
    session.load()
    stop = threading.Event()
    for i, side in enumerate(session.sides):
        print(("\n" if i else "") + f"── {SIDE_TITLES[side]} ──", file=out, flush=True)
        try:
            reply = session.reply(side, prompt, sampling, stop, _Printer(out))
        except KeyboardInterrupt:
            stop.set()
            raise
        note = reply.note()
        print(f"\n[{note}]" if note else "", file=out, flush=True)
    return 0


def run(params: Any, args: Any = None) -> int:
    from pipeline.engines.chat_session import check_models

    sampling = sampling_from(args)
    only = getattr(args, "only", None)
    check_models(paths.BASE_DIR, paths.ADAPTER_DIR, only)  # fail before the screen opens
    prompt = getattr(args, "prompt", None)
    if prompt is not None:
        if not prompt.strip():
            raise UserError("--prompt: empty; pass the text to ask")
        return one_shot(params, prompt, sampling, only)
    if not sys.stdout.isatty() and not sys.stdin.isatty():
        raise UserError("tenny chat needs a terminal (run it in one, or over ssh -t), or pass --prompt TEXT")

    from tui.chat_app import ChatApp

    ChatApp(Path.cwd(), params, sampling=sampling, only=only).run()
    return 0
