"""Answers while it trains: a few held-out prompts answered every N steps, into dvclive/samples.jsonl.

Loss cannot say whether the model sounds like the persona yet, has started to
loop or recites its data; its answers can. Every ``train.sample_every`` steps
(about five times a run by default) the main process answers
``train.sample_prompts`` greedily and briefly, with the same stop tokens as
eval, and appends one line per prompt:

    {"step": 20, "prompt": "...", "answer": "...", "eos": true, "tokens": 17, "repeated_4grams": 0}

``eos``: the answer ended by itself before ``train.sample_max_new_tokens``;
``repeated_4grams``: word 4-grams that occur more than once in it (a model
starting to loop). The Training screen and ``tenny train-watch --samples``
read the file (pipeline/engines/train_progress.py). Lines are appended whole
(one ``write`` each), so a kill -9 leaves at most a cut last line, and a
resumed run first drops what the killed run wrote past its checkpoint, so no
step appears twice.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import Counter
from pathlib import Path

from transformers import TrainerCallback

from pipeline.core import run_status as rs
from pipeline.core.errors import UserError
from pipeline.core.records import append_jsonl
from pipeline.engines.eval_metrics import ngrams, words
from pipeline.engines.modeling import chat_text
from pipeline.engines.turn_end import stop_token_ids

TIMES_PER_RUN = 5  # sample_every: 0 answers about this many times (and at the last step)
VAL_PROMPTS = 4  # default prompts: this many val prompts, plus the first eval prompt


def user_turn(record: dict) -> str | None:
    """The prompt a record answers (a chat's last user turn before an assistant turn); None for text."""
    if "prompt" in record:
        return record["prompt"]
    user = last = None
    for turn in record.get("messages", []):
        if turn["role"] == "user":
            user = turn["content"]
        elif turn["role"] == "assistant" and user is not None:
            last = user
    return last


def pick_prompts(explicit: list[str] | None, val: list[dict], eval_prompts: list[str]) -> list[str]:
    """``train.sample_prompts``, or 4 val prompts and the first eval prompt.

    Val prompts are taken in the order of a hash of the record id, as eval
    draws its val sample, so the same prompts come back whatever else changes
    in val, and training shows answers to prompts eval will score.
    """
    if explicit is not None:
        return list(explicit)
    keyed = sorted((hashlib.blake2b(r["id"].encode(), digest_size=8).digest(), u)
                   for r in val if (u := user_turn(r)) is not None)
    chosen = [u for _, u in keyed[:VAL_PROMPTS]]
    if eval_prompts and eval_prompts[0] not in chosen:
        chosen.append(eval_prompts[0])
    return chosen


def render(tok, user: str, fmt: str, system_prompt: str | None) -> str:
    """A prompt as training rendered its examples (the chat template for chat data)."""
    if fmt == "chat":
        system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        return chat_text(tok, system + [{"role": "user", "content": user}], add_generation_prompt=True)
    return user


def check_lengths(tok, rendered: list[str], prompts: list[str], max_seq_len: int, explicit: bool) -> None:
    """A prompt that does not fit ``train.max_seq_len`` fails now, not at step N."""
    for i, (text, user) in enumerate(zip(rendered, prompts)):
        n = len(tok(text, add_special_tokens=False)["input_ids"])
        if n >= max_seq_len:
            where = f"train.sample_prompts[{i}]" if explicit else "a default sample prompt (from data/final/val.jsonl)"
            raise UserError(f"{where}: {user[:60]!r}... is {n} tokens, not shorter than train.max_seq_len "
                            f"({max_seq_len}): shorten it, list shorter train.sample_prompts, or set "
                            "train.sample_every: -1")


def repeated_4grams(answer: str) -> int:
    """Word 4-grams that occur more than once in one answer (eval_metrics' loop test, counted)."""
    return sum(1 for c in Counter(ngrams(words(answer), 4)).values() if c > 1)


def every_for(sample_every: int, max_steps: int) -> int:
    """Steps between answers: the setting, or about ``TIMES_PER_RUN`` times a run for 0."""
    return sample_every if sample_every > 0 else max(1, math.ceil(max_steps / TIMES_PER_RUN))


def drop_after(path: Path, step: int | None) -> None:
    """Keep the lines of steps up to ``step`` (all gone for None: a fresh run); a cut last line goes too."""
    if not path.exists():
        return
    if step is None:
        path.unlink()
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # the line a kill cut short
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line + "\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)


class SampleAnswers(TrainerCallback):
    """Answers ``prompts`` every ``every`` steps and at the last step (main process only)."""

    def __init__(self, directory: Path, tok, prompts: list[str], rendered: list[str], *, stops: list[int],
                 sample_every: int, max_new_tokens: int, resumed_from: int | None):
        self.path = directory / rs.SAMPLES
        self.tok = tok
        self.stops = stops
        self.prompts = prompts
        self.rendered = rendered
        self.sample_every = sample_every
        self.every = 0
        self.max_new_tokens = max_new_tokens
        self.resumed_from = resumed_from
        self.seconds = 0.0  # spent answering, this session: the cost training.json reports
        self.rounds = 0

    def on_train_begin(self, args, state, control, **kw):
        self.every = every_for(self.sample_every, state.max_steps)
        if state.is_world_process_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            drop_after(self.path, self.resumed_from)

    def on_step_end(self, args, state, control, model=None, **kw):
        step = state.global_step
        if not state.is_world_process_zero or model is None:
            return
        # At multiples of `every` and the last step only: a stop by signal should be quick.
        if step % self.every and step != state.max_steps:
            return
        started = time.perf_counter()
        for row in self.answer(model, step):
            append_jsonl(self.path, row, fsync=False)
        self.seconds += time.perf_counter() - started
        self.rounds += 1

    def answer(self, model, step: int) -> list[dict]:
        import torch

        tok, stops = self.tok, self.stops
        was_training, side = model.training, tok.padding_side
        model.eval()  # no dropout: the answers are greedy and repeatable
        tok.padding_side = "left"  # each row continues its own prompt
        try:
            device = next(p.device for p in model.parameters())
            enc = tok(self.rendered, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False, use_cache=True,
                                     eos_token_id=stops, pad_token_id=tok.pad_token_id)
        finally:
            tok.padding_side = side
            model.train(was_training)
        rows = []
        for prompt, gen in zip(self.prompts, out[:, enc["input_ids"].shape[1]:].tolist()):
            n = next((i for i, t in enumerate(gen) if t in stops), len(gen))
            text = tok.decode(gen[:n], skip_special_tokens=True).strip()
            rows.append({"step": step, "prompt": prompt, "answer": text, "eos": n < len(gen),
                         "tokens": n, "repeated_4grams": repeated_4grams(text)})
        return rows

    def summary(self, run_seconds: float) -> dict:
        """What training.json says about the answers and their cost."""
        return {"every": self.every, "prompts": len(self.prompts), "rounds": self.rounds,
                "max_new_tokens": self.max_new_tokens, "seconds": round(self.seconds, 2),
                "share_of_run": round(self.seconds / run_seconds, 4) if run_seconds > 0 else None}


def plan(tp, params, tok, val: list[dict]) -> tuple[list[str], list[str], list[int]] | None:
    """(prompts, rendered prompts, stop ids) to answer while training, checked now; None when off or nothing to ask.

    Answers stop where eval's do: the turn end for ``build.format`` and EOS (engines/turn_end.py).
    """
    if tp.sample_every < 0:
        return None
    prompts = pick_prompts(tp.sample_prompts, val, params.eval.prompts)
    if not prompts:
        print("train: no sample answers while training (no val prompts and no eval.prompts); "
              "list some in train.sample_prompts", flush=True)
        return None
    rendered = [render(tok, p, params.build.format, params.build.system_prompt) for p in prompts]
    check_lengths(tok, rendered, prompts, tp.max_seq_len, explicit=tp.sample_prompts is not None)
    return prompts, rendered, stop_token_ids(tok, params.build.stop_token, params.build.format)


def callback(planned, tp, directory: Path, tok, resumed_from: int | None) -> SampleAnswers | None:
    if planned is None:
        return None
    prompts, rendered, stops = planned
    return SampleAnswers(directory, tok, prompts, rendered, stops=stops, sample_every=tp.sample_every,
                         max_new_tokens=tp.sample_max_new_tokens, resumed_from=resumed_from)
