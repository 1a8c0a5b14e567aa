"""``tenny chat``: the chat screen as an app of its own.

Flags, checks and ``--prompt`` (answers on stdout, no app): pipeline/commands/chat.py.
The screen: tui/screens/chat.py, hosted by tui/chat_app.py.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pipeline.commands import chat as printing
from pipeline.commands.chat import add_arguments
from pipeline.core.errors import UserError

__all__ = ["add_arguments", "run"]


def run(params: Any, args: Any = None) -> int:
    gguf = getattr(args, "gguf", None)
    terminal = sys.stdout.isatty() and sys.stdin.isatty()
    if getattr(args, "prompt", None) is not None or (gguf and not terminal):
        return printing.run(params, args)  # answers on stdout; --gguf from a pipe: one question per line
    if gguf:
        from pipeline.engines.gguf_chat import check_file

        sampling, only = printing.sampling_from(args), None
        check_file(Path(gguf))  # fail before the screen opens
    else:
        sampling, only = printing.check(args)  # fail before the screen opens
    if not sys.stdout.isatty() and not sys.stdin.isatty():
        raise UserError("tenny chat needs a terminal (run it in one, or over ssh -t), or pass --prompt TEXT")

    from tui.chat_app import ChatApp

    ChatApp(Path.cwd(), params, sampling=sampling, only=only, gguf=gguf).run()
    return 0
