"""A conversation with an exported GGUF file, as llama.cpp runs it.

The same face as ``ChatSession`` (sides, load, reply, clear) so the chat
screen and ``tenny chat --gguf`` hear the file a person will hand to Ollama or
LM Studio, not the Python model it came from. One side, ``gguf``; llama-server
serves the file on loopback from ``load`` until ``close``.

No system turn is sent: the file's own chat template carries the one training
used (export wrote it as the template's default), exactly as for anyone who
serves the file. Stops are the file's own (its EOS and end-of-turn tokens).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.engines.chat_session import Reply, Sampling, SideState, Turn, history_messages
from pipeline.engines.gguf_files import file_name

SIDE = "gguf"
LORA_SUFFIX = file_name("", "lora-f16")  # export.gguf_adapter's file: needs its base, no chat alone


def title(path: Path) -> str:
    return f"{path.name} (llama.cpp)"


def gguf_files(root: Path) -> list[Path]:
    """The chat-ready files in models/gguf/ by name; LoRA-only files need a base and are left out.

    Export swaps the whole folder in, so it holds one run's files: by name is by type.
    """
    folder = root / paths.GGUF_DIR
    return sorted(p for p in folder.glob("*.gguf") if p.is_file() and not p.name.endswith(LORA_SUFFIX))


def check_file(path: Path) -> Path:
    if not path.is_file():
        raise UserError(f"--gguf {path}: no such file; `tenny export --set export.gguf=[q4_k_m]` writes one into "
                        f"{paths.GGUF_DIR}/")
    if path.name.endswith(LORA_SUFFIX):
        raise UserError(f"--gguf {path}: a LoRA-only file needs its base (llama-server -m BASE.gguf --lora {path.name});"
                        f" chat with a full file of {paths.GGUF_DIR}/ instead")
    return path


class GgufChatSession:
    """One GGUF file behind llama-server, one conversation."""

    def __init__(self, params, path: Path) -> None:
        self.params = params
        self.path = check_file(Path(path))
        self.sides: tuple[str, ...] = (SIDE,)
        self.has_adapter = True  # the adapter is merged into the file
        self.title = title(self.path)
        self.state = {SIDE: SideState()}
        self.server = None
        self._stack = ExitStack()
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self.server is not None

    def load(self) -> None:
        from pipeline.engines import llama_cpp
        from pipeline.engines.llama_server import serve

        llama = llama_cpp.ensure(self.params.export.llama_cpp)
        self.server = self._stack.enter_context(serve(llama, self.path))

    def close(self) -> None:
        self.server = None
        self._stack.close()

    def clear(self) -> None:
        self.state[SIDE].turns.clear()

    def reply(self, side: str, user: str, sampling: Sampling, stop: threading.Event,
              on_piece: Callable[[str], None] = lambda piece: None) -> Reply:
        """The file's answer, each piece passed on as llama-server streams it; ``stop`` ends it at the next piece."""
        if self.server is None:
            raise UserError("llama-server is still starting")
        with self._lock:
            started = time.monotonic()
            pieces: list[str] = []
            end: dict = {}
            stopped = False
            for piece in self.server.stream_chat(history_messages(self.state[SIDE].turns, user), sampling.max_new_tokens, sampling.temperature,
                                                 top_p=sampling.top_p, end=end):
                if stop.is_set():
                    stopped = True  # leaving the loop closes the stream: llama-server stops generating
                    break
                pieces.append(piece)
                on_piece(piece)
            written = "".join(pieces)
            self.state[SIDE].turns.append(Turn(user, written.strip()))
            finish = "stopped" if stopped else ("length" if end.get("finish_reason") == "length" else "eos")
            return Reply(written.strip(), int(end.get("tokens", len(pieces))), finish, time.monotonic() - started)
