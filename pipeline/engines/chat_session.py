"""A conversation with the base model and with base + adapter, streamed token by token.

One model is loaded: the base with the adapter on top, and the base side
answers inside ``disable_adapter()`` (as the eval stage does), so the two sides
cost the memory of one. They answer one after the other for the same reason.
Each side keeps its own history, so a multi-turn chat shows how each model
carries its own earlier answers.

Prompts are rendered as training rendered its examples: the tokenizer's chat
template with ``build.system_prompt`` (``build.format: chat``), or the plain
text continued (``build.format: text``). Sampling, with the eval stage's
repetition settings; temperature 0 is greedy, as eval answers. An answer ends
at the turn end training taught (engines/turn_end.py) or at EOS, on both sides.

Heavy imports (torch, transformers, peft) happen inside methods: the CLI
imports this module's users at startup.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, Field

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.core.params import Params
from pipeline.engines.modeling import (
    BASE_INFO,
    chat_text,
    load_base_model,
    load_tokenizer,
    pick_device,
)
from pipeline.engines.turn_end import TurnEnds

SIDES = ("base", "adapter")
SIDE_TITLES = {"base": "base model", "adapter": "base + adapter"}
MAKE_MODELS = "dvc repro train"  # prepares models/base and trains models/adapter


class Sampling(BaseModel):
    """How the next answers are drawn; the chat screen's keys change these between turns."""

    temperature: float = Field(0.7, ge=0, le=2, description="0: greedy (the same answer every time, as eval answers)")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling: keep the smallest set of tokens with this much probability")
    max_new_tokens: int = Field(200, ge=1, description="longest answer, in tokens")


@dataclass
class Reply:
    text: str
    tokens: int
    finish: str  # eos | length | stopped
    seconds: float

    def note(self) -> str:
        """Why the answer ended, in words (empty when the model ended it)."""
        if self.finish == "stopped":
            return f"stopped after {self.tokens} tokens"
        if self.finish == "length":
            return f"cut at max_new_tokens ({self.tokens})"
        return ""


@dataclass
class Turn:
    user: str
    reply: str


@dataclass
class SideState:
    turns: list[Turn] = field(default_factory=list)


def history_messages(turns: list[Turn], user: str) -> list[dict]:
    """Earlier exchanges as chat messages, then ``user``: what a side's next prompt holds."""
    out: list[dict] = []
    for t in turns:
        out += [{"role": "user", "content": t.user}, {"role": "assistant", "content": t.reply}]
    return out + [{"role": "user", "content": user}]


def check_models(base_dir: Path, adapter_dir: Path, only: str | None) -> bool:
    """Whether the adapter is there; a UserError naming the command when what is needed is not."""
    if not (base_dir / BASE_INFO).exists():
        raise UserError(f"{base_dir}: no prepared base model; run `{MAKE_MODELS}` (it prepares the base, then trains the adapter)")
    has_adapter = (adapter_dir / "adapter_config.json").exists()
    if only == "adapter" and not has_adapter:
        raise UserError(f"{adapter_dir}: no adapter to chat with; run `{MAKE_MODELS}` first (or drop --only adapter)")
    return has_adapter


class _EventStop:
    """Ends generation at the next token once ``event`` is set (Esc on the screen, Ctrl-C in the shell)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event
        self.fired = False  # a stop that came after the last token did not stop anything

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        self.fired = self.fired or self.event.is_set()
        return torch.full((input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device)


class ChatSession:
    """Base and adapter, loaded once, each with its own conversation."""

    def __init__(self, params: Params, *, root: Path | None = None, only: str | None = None) -> None:
        root = Path(root) if root is not None else Path(".")
        self.params = params
        self.base_dir = root / paths.BASE_DIR
        self.adapter_dir = root / paths.ADAPTER_DIR
        self.has_adapter = check_models(self.base_dir, self.adapter_dir, only)
        if only:
            self.sides: tuple[str, ...] = (only,)
        else:
            self.sides = SIDES if self.has_adapter else ("base",)
        self.state = {side: SideState() for side in self.sides}
        self.model = None
        self.tok = None
        self.stops: list[int] = []  # the turn end and EOS: where an answer ends (engines/turn_end.py)
        self.device = "cpu"
        self._lock = threading.Lock()  # one generation at a time: the sides share one model

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def load(self) -> None:
        """The tokenizer and the model (with the adapter when a side needs it); seconds on a CPU."""
        tp = self.params.train
        try:
            # the adapter folder's tokenizer wins when there is one (tiny trains its own), even for the base alone;
            # it says an unprepared project before transformers is imported (and quiets the libraries after)
            tok = load_tokenizer(self.base_dir, self.adapter_dir)
        except UserError as err:
            raise UserError(f"{err} — run `{MAKE_MODELS}`") from None
        device = pick_device(tp.device)
        model = load_base_model(self.base_dir, tp.quantization, device)
        if "adapter" in self.sides:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(self.adapter_dir))
        model.eval()
        build = self.params.build
        self.stops = TurnEnds(tok, build.stop_token).for_format(build.format).stop_ids
        self.tok, self.model, self.device = tok, model, device

    def close(self) -> None:
        """Let the models go (the chat screen switching to a GGUF file, or closing)."""
        self.model = self.tok = None

    def clear(self) -> None:
        for state in self.state.values():
            state.turns.clear()

    # ---------------------------------------------------------------- prompts

    def render(self, side: str, user: str, turns: list[Turn] | None = None) -> str:
        """The prompt this side's model continues: its history, then ``user``."""
        turns = self.state[side].turns if turns is None else turns
        build = self.params.build
        if build.format == "text":
            # Text training taught plain continuation: earlier exchanges are just earlier text.
            return "".join(f"{t.user}{t.reply}\n" for t in turns) + user
        system = [{"role": "system", "content": build.system_prompt}] if build.system_prompt else []
        return chat_text(self.tok, system + history_messages(turns, user), add_generation_prompt=True)

    def _fit(self, side: str, user: str, max_new_tokens: int) -> tuple[list[int], int]:
        """Prompt ids that leave room for the answer: the oldest exchanges go first, then the answer shrinks."""
        limit = self._context_limit()
        turns = list(self.state[side].turns)
        while True:
            ids = self.tok(self.render(side, user, turns), add_special_tokens=False)["input_ids"]
            if limit is None or len(ids) + max_new_tokens <= limit or not turns:
                break
            turns.pop(0)
        if limit is not None and len(ids) >= limit:
            raise UserError(f"the prompt is {len(ids)} tokens; this model reads at most {limit}: write a shorter one")
        room = max_new_tokens if limit is None else min(max_new_tokens, limit - len(ids))
        return ids, room

    def _context_limit(self) -> int | None:
        config = getattr(self.model, "config", None)
        for name in ("max_position_embeddings", "n_positions"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    # ---------------------------------------------------------------- answers

    def reply(self, side: str, user: str, sampling: Sampling, stop: threading.Event,
              on_piece: Callable[[str], None] = lambda piece: None) -> Reply:
        """``side``'s answer to ``user``, each decoded piece passed to ``on_piece`` as it is generated.

        Setting ``stop`` ends the answer at the next token; what was written so
        far stays in the history, as the person saw it.
        """
        if not self.loaded:
            raise UserError("the models are still loading")
        import torch
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        with self._lock:
            ids, room = self._fit(side, user, sampling.max_new_tokens)
            tok = self.tok
            streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
            input_ids = torch.tensor([ids], device=self.device)
            stopper = _EventStop(stop)
            kwargs = {
                "input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "max_new_tokens": room,
                "streamer": streamer, "stopping_criteria": StoppingCriteriaList([stopper]),
                "pad_token_id": tok.pad_token_id, "eos_token_id": self.stops,
                "repetition_penalty": self.params.eval.repetition_penalty,
                "no_repeat_ngram_size": self.params.eval.no_repeat_ngram_size,
            }
            if sampling.temperature > 0:
                kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
            else:
                kwargs.update(do_sample=False)
            outcome: dict = {}

            def generate() -> None:
                try:
                    with torch.no_grad():
                        if side == "base" and "adapter" in self.sides:
                            with self.model.disable_adapter():
                                outcome["ids"] = self.model.generate(**kwargs)
                        else:
                            outcome["ids"] = self.model.generate(**kwargs)
                except BaseException as err:  # noqa: BLE001 -- re-raised on the caller's thread, after the streamer is released
                    outcome["error"] = err
                    streamer.end()

            started = time.monotonic()
            thread = threading.Thread(target=generate, name=f"chat-{side}", daemon=True)
            thread.start()
            pieces = []
            for piece in streamer:
                if piece:
                    pieces.append(piece)
                    on_piece(piece)
            thread.join()
            if "error" in outcome:
                raise outcome["error"]
            new = outcome["ids"][0, input_ids.shape[1]:].tolist()
            if stopper.fired:
                finish = "stopped"
            elif new and new[-1] in self.stops:
                finish = "eos"
            else:
                finish = "length"
            written = "".join(pieces)
            # A chat template puts its own space after "Assistant:", so history holds the answer itself;
            # a text continuation is kept exactly, its first character may join the prompt's last word.
            said = written if self.params.build.format == "text" else written.strip()
            self.state[side].turns.append(Turn(user, said))
            return Reply(written.strip(), len(new), finish, time.monotonic() - started)
