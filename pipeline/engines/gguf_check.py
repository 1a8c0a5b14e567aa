"""A GGUF file checked in llama.cpp against the merged model in transformers.

Both answer the same rendered prompts greedily for a few dozen tokens. Per
file: the share of prompts whose answers are the same token for token, the
first token where one leaves the other (with how much the merged model
preferred its own token, so a near-tie is told from a broken file), whether
answers stop where the merged model's stop, the file's size and llama.cpp's
generation speed.

An f16 file must answer as the merged model does (a near-tie flipped by f16
rounding excepted) and every file must stop where the merged model stops:
otherwise the export fails, naming the file and the prompt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.engines.llama_server import LlamaServer

STOP = -1  # stands for "stopped at the turn end" in the compared sequences
# Logits by which the merged model may prefer its token where an f16 file picks another: f16
# rounding moves logits by ~1e-3 on the test models and ~1e-2 on SmolLM2; a broken file by whole units.
NEAR_TIE = 0.05


@dataclass
class Answer:
    tokens: list[int]  # without the end token
    stopped: bool


@dataclass
class Reference:
    """The merged model's greedy answers, computed once for every file."""

    prompts: list[str]  # the user turns, for messages
    rendered: list[str]  # as the model sees them (chat template, system prompt)
    prompt_ids: list[list[int]]
    answers: list[Answer]
    tokens_per_s: float
    end_ids: list[int] = field(default_factory=list)


def reference_answers(model, tok, prompts: list[str], rendered: list[str], n_tokens: int, end_ids: list[int]) -> Reference:
    import torch

    answers, prompt_ids, produced, seconds = [], [], 0, 0.0
    for text in rendered:
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        started = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=n_tokens, do_sample=False, eos_token_id=end_ids,
                                 pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else end_ids[0])
        seconds += time.perf_counter() - started
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        produced += len(new)
        cut = next((i for i, t in enumerate(new) if t in end_ids), None)
        answers.append(Answer(new if cut is None else new[:cut], cut is not None))
        prompt_ids.append(ids["input_ids"][0].tolist())
    return Reference(prompts, rendered, prompt_ids, answers, produced / seconds if seconds else 0.0, end_ids)


def _logit_gap(model, prompt_ids: list[int], prefix: list[int], ours: int, theirs: int) -> float:
    """How much the merged model prefers its token over the file's at the first difference."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + prefix])).logits[0, -1].float()
    return float(logits[ours] - logits[theirs])


def _piece(tok, token: int) -> str:
    return "(turn end)" if token == STOP else tok.decode([token])


def check_file(server: LlamaServer, model, tok, ref: Reference, n_tokens: int, eog_ids: set[int]) -> dict:
    """Run the file on every prompt; the figures reports/export.json keeps for it."""
    identical = stopped = produced = 0
    predicted_ms = 0.0
    first = None
    prompt_tokens_same = True
    for user, text, prompt_ids, want in zip(ref.prompts, ref.rendered, ref.prompt_ids, ref.answers):
        # The model is compared on the same prompt tokens (ids, so no BOS rule of the runtime adds one);
        # the tokenizer is compared on its own: the same text must give the same ids.
        if server.tokenize(text, add_special=False) != prompt_ids:
            prompt_tokens_same = False
        got = server.complete(prompt_ids, n_tokens)
        tokens = list(got.tokens)
        while tokens and tokens[-1] in eog_ids:  # the end token, where llama.cpp returns it
            tokens.pop()
        produced += got.predicted_n
        predicted_ms += got.predicted_ms
        stopped += got.stopped
        a = want.tokens + ([STOP] if want.stopped else [])
        b = tokens + ([STOP] if got.stopped else [])
        if a == b:
            identical += 1
            continue
        if not (want.stopped or got.stopped):  # both cut at n_tokens: compare what both said
            n = min(len(a), len(b))
            if a[:n] == b[:n]:
                identical += 1
                continue
        if first is None:
            i = next(i for i in range(min(len(a), len(b)) + 1) if i >= len(a) or i >= len(b) or a[i] != b[i])
            ours = a[i] if i < len(a) else STOP
            theirs = b[i] if i < len(b) else STOP
            end = ref.end_ids[0]
            gap = _logit_gap(model, prompt_ids, want.tokens[:i], end if ours == STOP else ours,
                             end if theirs == STOP else theirs)
            first = {"prompt": user, "token": i, "merged": _piece(tok, ours), "gguf": _piece(tok, theirs),
                     "logit_gap": round(gap, 4)}
    n = len(ref.prompts)
    merged_stops = sum(a.stopped for a in ref.answers)
    return {
        "bytes": server.model.stat().st_size,
        "tokens_per_s": round(produced / (predicted_ms / 1000), 1) if predicted_ms else None,
        "identical": round(identical / n, 3) if n else None,
        "prompts": n,
        "first_divergence": first,
        "stopped": stopped,
        "merged_stopped": merged_stops,
        "stops_at_turn_end": stopped >= merged_stops and not (merged_stops and not stopped),
        "prompt_tokens_identical": prompt_tokens_same,
    }


def failure(path: Path, gguf_type: str, figures: dict) -> str | None:
    """Why the file must not ship, or None: f16 answering otherwise, or answers that never stop."""
    first = figures["first_divergence"]
    if gguf_type in ("f16", "f32", "bf16") and first is not None and first["logit_gap"] > NEAR_TIE:
        return (f"{path}: in llama.cpp its greedy answer to {first['prompt']!r} leaves the merged model's at token "
                f"{first['token']} (merged {first['merged']!r}, llama.cpp {first['gguf']!r}, a lead of "
                f"{first['logit_gap']:.2f} logits): the {gguf_type} file is not the merged model; see "
                "reports/export.json")
    if gguf_type in ("f16", "f32", "bf16") and not figures["prompt_tokens_identical"]:
        return (f"{path}: llama.cpp tokenizes the eval prompts otherwise than the merged model's tokenizer: the "
                "converter does not know this tokenizer; see reports/export.json")
    if figures["merged_stopped"] and not figures["stopped"]:
        return (f"{path}: in llama.cpp no answer stops at the turn end (the merged model stops on "
                f"{figures['merged_stopped']} of {figures['prompts']} prompts): the file lacks the trained end token")
    return None
