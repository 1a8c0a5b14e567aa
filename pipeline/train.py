"""Stage train: LoRA (or QLoRA) on the base model, read top to bottom.

Inputs: models/base/, data/final/{train,val}.jsonl, params ``train``.
Outputs: models/adapter/ (adapter + tokenizer via save_pretrained, and
training.json: what was used), dvclive/ (live metrics and plots; run.json
says how far along the run is, for `tenny train-watch`).

Seeded: the same params and data give the same adapter on the CPU.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

from pipeline import paths
from pipeline.errors import UserError
from pipeline.modeling import (check_target_modules, collate, encode_example, load_base_model, load_tokenizer,
                               pick_device, prepare_for_lora, quiet_libraries, read_base_info, replace_dir,
                               train_tiny_tokenizer)
from pipeline.params import Params
from pipeline.records import read_records, render_text, write_json


class RunStatus:
    """dvclive/run.json: progress a watcher can read at any moment (written atomically)."""

    def __init__(self, path: Path, **fixed: Any):
        self.path = path
        self.state: dict[str, Any] = {"status": "running", "step": 0, "started_at": time.time(),
                                      "last_checkpoint": None, **fixed}

    def update(self, **changes: Any) -> None:
        self.state.update(changes, updated_at=time.time())
        write_json(self.path, self.state)


def open_live():
    """dvclive's logger for dvclive/; metrics and plots are declared in dvc.yaml, not by dvclive."""
    import dvclive.live
    from dvclive import Live
    from scmrepo.exceptions import SCMError

    kwargs = dict(dir=str(paths.DVCLIVE_DIR), dvcyaml=None, save_dvc_exp=False, report=None)
    try:
        return Live(**kwargs)
    except SCMError:
        # dvclive 3.49 fails in a git repo with no commit yet (`git init` then `dvc repro`);
        # nothing of DVC's is needed here, so log without the DVC integration.
        original = dvclive.live.get_dvc_repo
        dvclive.live.get_dvc_repo = lambda: None
        try:
            return Live(**kwargs)
        finally:
            dvclive.live.get_dvc_repo = original


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def mean_loss(model, examples, batch_size: int, pad_id: int, device: str) -> float:
    """Token-weighted mean loss over the labelled tokens of ``examples``."""
    import torch

    total, tokens = 0.0, 0
    was_training = model.training  # eval generates right after: dropout must stay off there
    model.eval()
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collate(examples[i:i + batch_size], pad_id).items()}
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


def run(params: Params, args: Any = None) -> int:
    quiet_libraries()
    import torch
    from peft import LoraConfig, get_peft_model
    from tqdm import tqdm

    tp = params.train
    if tp.threads:
        torch.set_num_threads(tp.threads)
    seed_everything(tp.seed)
    device = pick_device(tp.device)
    for f in (paths.TRAIN, paths.VAL):
        if not f.exists():
            raise UserError(f"{f}: missing; run `tenny build` (or `dvc repro build`) first")
    train_records = list(read_records(paths.TRAIN))
    val_records = list(read_records(paths.VAL))
    if not train_records:
        raise UserError(f"{paths.TRAIN}: empty; nothing to train on")

    # ---- tokenizer and base model
    info = read_base_info(paths.BASE_DIR)
    if info["kind"] == "tiny":
        if tp.quantization != "none":
            raise UserError("train.quantization: the tiny base is too small for bitsandbytes layers; use none")
        tok = train_tiny_tokenizer([render_text(r) for r in train_records], tp.tiny.vocab_size)
    else:
        tok = load_tokenizer(paths.BASE_DIR)
    model = load_base_model(paths.BASE_DIR, tp.quantization, device)
    model = prepare_for_lora(model, tp.quantization, tp.gradient_checkpointing)
    check_target_modules(model, tp.lora.target_modules)
    lora = LoraConfig(r=tp.lora.r, lora_alpha=tp.lora.alpha, lora_dropout=tp.lora.dropout,
                      target_modules=tp.lora.target_modules or None, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    lora_params = [p for p in model.parameters() if p.requires_grad]  # once: the step clips these
    trainable = sum(p.numel() for p in lora_params)
    total_params = sum(p.numel() for p in model.parameters())

    # ---- data
    train_ex = [encode_example(r, tok, tp.max_seq_len) for r in train_records]
    val_ex = [encode_example(r, tok, tp.max_seq_len) for r in val_records]
    steps_per_epoch = math.ceil(len(train_ex) / (tp.batch_size * tp.grad_accum))
    total_steps = tp.max_steps or max(1, math.ceil(steps_per_epoch * tp.epochs))
    warmup = int(total_steps * tp.warmup_ratio)

    optimizer = torch.optim.AdamW(lora_params, lr=tp.lr, weight_decay=tp.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / (warmup + 1) if s < warmup else max(0.0, (total_steps - s) / max(1, total_steps - warmup)))

    def batches():
        # A fresh seeded shuffle every epoch; the same seed gives the same order.
        gen = random.Random(tp.seed)
        while True:
            order = list(range(len(train_ex)))
            gen.shuffle(order)
            for i in range(0, len(order), tp.batch_size):
                yield [train_ex[j] for j in order[i:i + tp.batch_size]]

    # ---- run, with live figures
    paths.DVCLIVE_DIR.mkdir(exist_ok=True)
    status = RunStatus(paths.DVCLIVE_DIR / "run.json", total_steps=total_steps, device=device,
                       quantization=tp.quantization, base_model=tp.base_model, eta_s=None)
    status.update()
    live = open_live()
    live.log_params({"base_model": tp.base_model, "quantization": tp.quantization, "device": device,
                     "trainable_params": trainable, "total_params": total_params, "total_steps": total_steps})
    pad_id = tok.pad_token_id
    model.train()
    stream = batches()
    started = time.time()
    val_loss = float("nan")
    train_loss = float("nan")
    try:
        bar = tqdm(range(1, total_steps + 1), desc="train", unit="step", dynamic_ncols=True)
        for step in bar:
            t0 = time.time()
            n_tokens, step_loss = 0, 0.0
            for _ in range(tp.grad_accum):
                batch = {k: v.to(device) for k, v in collate(next(stream), pad_id).items()}
                loss = model(**batch).loss / tp.grad_accum
                loss.backward()
                step_loss += loss.item()
                n_tokens += int(batch["attention_mask"].sum())
            torch.nn.utils.clip_grad_norm_(lora_params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            dt = time.time() - t0
            train_loss = step_loss
            live.log_metric("train/loss", round(step_loss, 5))
            live.log_metric("train/lr", schedule.get_last_lr()[0])
            live.log_metric("train/tokens_per_s", round(n_tokens / dt, 1))
            live.log_metric("train/epoch", round(step / steps_per_epoch, 4))
            live.log_metric("train/step_time_s", round(dt, 4))
            if val_ex and (step % tp.eval_every == 0 or step == total_steps):
                val_loss = mean_loss(model, val_ex, tp.batch_size, pad_id, device)
                live.log_metric("eval/loss", round(val_loss, 5))
            live.next_step()
            elapsed = time.time() - started
            status.update(step=step, eta_s=round(elapsed / step * (total_steps - step), 1))
            bar.set_postfix(loss=f"{step_loss:.3f}", val=f"{val_loss:.3f}")
    except BaseException as err:
        status.update(status="failed", error=type(err).__name__)
        raise
    # ---- save: build beside, then swap in whole
    out = paths.ADAPTER_DIR
    with replace_dir(out, prefix=".adapter.") as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        summary = {"base_model": tp.base_model, "quantization": tp.quantization, "device": device,
                   "steps": total_steps, "train_samples": len(train_ex), "val_samples": len(val_ex),
                   "final_train_loss": round(train_loss, 5), "final_val_loss": round(val_loss, 5),
                   "trainable_params": trainable, "seconds": round(time.time() - started, 1),
                   "torch": torch.__version__}
        (tmp / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    for key in ("quantization", "device", "base_model", "trainable_params", "seconds"):
        live.summary[key] = summary[key]
    live.end()
    status.update(status="finished", last_checkpoint=str(out))
    print(f"train: {total_steps} steps on {device} ({tp.quantization}), "
          f"train loss {train_loss:.3f}, val loss {val_loss:.3f} → {out}/")
    return 0
