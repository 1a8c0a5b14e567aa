"""Stage eval: does the adapter help? Perplexity and generations, base vs adapter.

reports/eval.json (DVC metrics): val loss and perplexity of the base model and
of base + adapter, on the same tokens the training loss counts (completions
and assistant turns). reports/generations.jsonl: the eval prompts answered by
both, side by side, greedy, so a re-run gives the same text. Both stop at the
turn end training taught, or at EOS (engines/turn_end.py).

The answers are also measured offline (pipeline/engines/eval_metrics.py):
variety, loops, length against the training answers, stopping on time,
copying training answers, and refusing what the val data says is unknowable.
The prompts are ``eval.prompts`` plus ``eval.sample_val`` val prompts, which
bring their reference answers along.

With ``eval.judge.model`` set, a judge model compares the two answers to each
prompt in both orders (pipeline/engines/judging/, docs/judge.md).
reports/judge.json is written on every run: with the judge off it says so
(``{"model": null, "n_pairs": 0}``), so the metrics file always exists.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from typing import Any

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.core.params import Params
from pipeline.core.records import read_records, write_json, write_jsonl
from pipeline.engines.eval_metrics import answer_metrics, median_words
from pipeline.engines.judging.runner import OFF_REPORT, Answers, judge_answers, prepare, summary, write_reports
from pipeline.engines.modeling import (
    chat_text,
    encode_within,
    load_base_model,
    load_tokenizer,
    pick_device,
    quiet_libraries,
)
from pipeline.engines.packing import PaddedCollator
from pipeline.engines.turn_end import TurnEnds


def mean_loss(model, examples, batch_size: int, pad_id: int, device: str) -> float:
    """Token-weighted mean loss over the labelled tokens of ``examples``."""
    import torch

    total, tokens = 0.0, 0
    was_training = model.training  # eval generates right after: dropout must stay off there
    model.eval()
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            rows = [{"input_ids": ids, "labels": labels} for ids, labels in examples[i:i + batch_size]]
            batch = {k: v.to(device) for k, v in PaddedCollator(pad_id)(rows).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            shift_logits = logits[:, :-1].float()
            shift_labels = batch["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                ignore_index=-100, reduction="sum")
            total += loss.item()
            tokens += int((shift_labels != -100).sum())
    model.train(was_training)
    return total / max(tokens, 1)


def prompt_text(tok, user: str, params: Params) -> str:
    """An eval prompt rendered the way training rendered its examples."""
    if params.build.format == "chat":
        system = [{"role": "system", "content": params.build.system_prompt}] if params.build.system_prompt else []
        return chat_text(tok, system + [{"role": "user", "content": user}], add_generation_prompt=True)
    return user


def answers_of(record: dict) -> list[str]:
    """What a record teaches the model to say: its assistant turns, completion or text."""
    if "messages" in record:
        return [m["content"] for m in record["messages"] if m["role"] == "assistant"]
    return [record["completion"] if "completion" in record else record["text"]]


def prompt_and_reference(record: dict) -> tuple[str, str] | None:
    """A user turn and the answer to it (a chat's last such exchange); None for a text record."""
    if "prompt" in record:
        return record["prompt"], record["completion"]
    reference = user = None
    for turn in record.get("messages", []):
        if turn["role"] == "user":
            user = turn["content"]
        elif turn["role"] == "assistant" and user is not None:
            reference = (user, turn["content"])
    return reference


def sample_val(val: list[dict], k: int) -> list[tuple[str, str]]:
    """``k`` val prompts with their references, ordered by a hash of the id.

    The same sample is drawn whatever else comes and goes in val, so two runs
    (or two versions) of the data answer comparable prompts.
    """
    pairs = [(hashlib.blake2b(r["id"].encode(), digest_size=8).digest(), pr)
             for r in val if (pr := prompt_and_reference(r)) is not None]
    return [pr for _, pr in sorted(pairs)[:k]]


def eval_prompts(ep, val: list[dict]) -> list[tuple[str, str | None]]:
    """(user turn, reference answer or None) for every prompt both models answer."""
    if not ep.prompts and not ep.sample_val:
        return [pr for r in val[:5] if (pr := prompt_and_reference(r)) is not None]
    return [(p, None) for p in ep.prompts] + sample_val(val, ep.sample_val)


def generate(model, tok, prompts: list[str], ep, device: str, stops: list[int]) -> tuple[list[str], list[int]]:
    """Greedy answers and, for each, its token count before its stop (``max_new_tokens`` if cut off).

    ``stops``: the turn end and EOS (engines/turn_end.py). They replace the
    model's generation config, for the base side too: a base that stops only at
    EOS would run past its turn and skew every figure about its answers.
    """
    import torch

    tok.padding_side = "left"  # decoder-only: pad on the left so every row continues its own prompt
    out: list[str] = []
    counts: list[int] = []
    for i in range(0, len(prompts), ep.batch_size):
        enc = tok(prompts[i:i + ep.batch_size], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=ep.max_new_tokens, do_sample=False,
                                 repetition_penalty=ep.repetition_penalty, no_repeat_ngram_size=ep.no_repeat_ngram_size,
                                 pad_token_id=tok.pad_token_id, eos_token_id=stops)
        for row in gen[:, enc["input_ids"].shape[1]:].tolist():
            # rows that stopped early are padded after their stop (pad may be EOS itself)
            n = next((k for k, t in enumerate(row) if t in stops), len(row))
            counts.append(n)
            out.append(tok.decode(row[:n], skip_special_tokens=True).strip())
    return out, counts


def train_answers(records: Iterable[dict]) -> list[str]:
    return [a for r in records for a in answers_of(r)]


def run(params: Params, args: Any = None) -> int:
    quiet_libraries()
    from peft import PeftModel

    ep, tp = params.eval, params.train
    if not (paths.ADAPTER_DIR / "adapter_config.json").exists():
        raise UserError(f"{paths.ADAPTER_DIR}: no adapter; run `tenny train` (or `dvc repro train`) first")
    judge = prepare(ep.judge) if ep.judge.model else None  # a missing key fails now, not after generating
    device = pick_device(tp.device)
    tok = load_tokenizer(paths.BASE_DIR, paths.ADAPTER_DIR)
    all_val = list(read_records(paths.VAL))
    val = all_val[: ep.max_val_samples] if ep.max_val_samples else all_val
    if not val:
        raise UserError(f"{paths.VAL}: empty; raise build.val_fraction so eval has samples to score")
    ends = TurnEnds(tok, params.build.stop_token)
    # Scored as train scores them: a sample longer than train.max_seq_len is left out, never cut.
    examples, too_long = encode_within(val, tok, tp.max_seq_len, ends)
    if not examples:
        raise UserError(f"{paths.VAL}: every sample is longer than train.max_seq_len ({tp.max_seq_len} tokens, "
                        f"longest {max(n for _, n in too_long)}); raise train.max_seq_len")

    base = load_base_model(paths.BASE_DIR, tp.quantization, device)
    model = PeftModel.from_pretrained(base, str(paths.ADAPTER_DIR))
    model.eval()
    adapter_loss = mean_loss(model, examples, ep.batch_size, tok.pad_token_id, device)
    with model.disable_adapter():
        base_loss = mean_loss(model, examples, ep.batch_size, tok.pad_token_id, device)

    asked = eval_prompts(ep, all_val)
    prompts = [p for p, _ in asked]
    references = [ref for _, ref in asked]
    rendered = [prompt_text(tok, p, params) for p in prompts]
    stops = ends.for_format(params.build.format).stop_ids
    adapter_out, adapter_tokens = generate(model, tok, rendered, ep, device, stops)
    with model.disable_adapter():
        base_out, base_tokens = generate(model, tok, rendered, ep, device, stops)
    trained = train_answers(read_records(paths.TRAIN))

    report = {
        "val_samples": len(examples),
        "val_over_max_seq_len": len(too_long),
        "turn_end": ends.for_format(params.build.format).token,  # answers stop there and at EOS
        "val_tokens_scored": sum(sum(1 for x in labels[1:] if x != -100) for _, labels in examples),
        "base": {"loss": round(base_loss, 5), "perplexity": round(math.exp(base_loss), 4),
                 **answer_metrics(base_out, base_tokens, ep.max_new_tokens, trained, references)},
        "adapter": {"loss": round(adapter_loss, 5), "perplexity": round(math.exp(adapter_loss), 4),
                    **answer_metrics(adapter_out, adapter_tokens, ep.max_new_tokens, trained, references)},
        "perplexity_ratio": round(math.exp(adapter_loss - base_loss), 4),
        "prompts_answered": len(prompts),
        "train_median_words": median_words(trained),
        "quantization": tp.quantization,
        "device": device,
    }
    write_json(paths.EVAL_REPORT, report)
    write_jsonl(paths.GENERATIONS, (
        {"prompt": p, "base": b, "adapter": a, **({"reference": ref} if ref is not None else {})}
        for p, b, a, ref in zip(prompts, base_out, adapter_out, references)))
    print(f"eval: val perplexity base {report['base']['perplexity']:.2f} → adapter "
          f"{report['adapter']['perplexity']:.2f} ({len(examples)} samples) → {paths.EVAL_REPORT}")

    # Judge off: no verdicts, and one row that says so, because DVC warns about an empty output on every repro.
    judged, judgments = dict(OFF_REPORT), [{"kind": "off", "note": "no verdicts: the judge is off (set eval.judge.model)"}]
    if judge is not None:
        judged, judgments = judge_answers(judge, [Answers(p, b, a) for p, b, a in zip(prompts, base_out, adapter_out)],
                                          baseline="base", challenger="adapter")
    write_reports(judged, judgments)
    print(f"{summary(judged)} → {paths.JUDGE_REPORT}")
    return 0
