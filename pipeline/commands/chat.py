"""``tenny chat``: talk to the base model and to base + adapter, side by side.

With no flags it opens the chat screen (tui/screens/chat.py) as an app of its
own, through ``tui/commands/chat.py`` (the CLI's table points there, so
``pipeline/`` never imports the app above it); ``--prompt TEXT`` asks both once
and streams the answers to stdout instead, for scripts and pipes: that is this
module's ``run``. Torch is imported inside ``run`` only: the CLI imports every
command module to build its help.
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
    parser.add_argument("--gguf", metavar="FILE", help="talk to an exported GGUF file (models/gguf/…) through llama.cpp's "
                                                       "llama-server on loopback, as Ollama or LM Studio would run it "
                                                       "(the chat screen in a terminal; one question per line from a pipe)")


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


def check(args: Any = None) -> tuple[Any, str | None]:
    """(sampling, only) from the flags, once the models are known to exist: fails before any screen opens."""
    from pipeline.engines.chat_session import check_models

    sampling = sampling_from(args)
    only = getattr(args, "only", None)
    check_models(paths.BASE_DIR, paths.ADAPTER_DIR, only)
    return sampling, only


def gguf_chat(params: Any, path: str, prompt: str | None, sampling: Any, out=None, lines=None) -> int:
    """A GGUF through llama-server: ``prompt`` answered once, or a chat read line by line from stdin.

    No system turn is sent: the file's own chat template supplies the one training used, as it
    does for anyone serving the file (pipeline/engines/gguf_chat.py).
    """
    from pipeline.engines.gguf_chat import GgufChatSession

    out = out or sys.stdout
    session = GgufChatSession(params, Path(path))
    session.load()
    stop = threading.Event()
    try:
        asks = [prompt] if prompt is not None else _read_lines(lines, out)
        for ask in asks:
            print(f"── {session.title} ──", file=out, flush=True)
            reply = session.reply("gguf", ask, sampling, stop, _Printer(out))
            note = reply.note()
            print(f"\n[{note}]" if note else "", file=out, flush=True)
    finally:
        session.close()
    return 0


def _read_lines(lines, out):
    source = lines if lines is not None else sys.stdin
    while True:
        if source is sys.stdin:
            print("you> ", end="", file=out, flush=True)
        line = source.readline()
        if not line:
            return
        if line.strip():
            yield line.strip()


def run(params: Any, args: Any = None) -> int:
    """``tenny chat --prompt TEXT``: both answers on stdout, no app."""
    if getattr(args, "gguf", None):
        if getattr(args, "prompt", None) is not None and not args.prompt.strip():
            raise UserError("--prompt: empty; pass the text to ask")
        return gguf_chat(params, args.gguf, getattr(args, "prompt", None), sampling_from(args))
    sampling, only = check(args)
    prompt = getattr(args, "prompt", None)
    if prompt is None:
        raise UserError("pass --prompt TEXT to ask from a script (`tenny chat` alone opens the app)")
    if not prompt.strip():
        raise UserError("--prompt: empty; pass the text to ask")
    return one_shot(params, prompt, sampling, only)
