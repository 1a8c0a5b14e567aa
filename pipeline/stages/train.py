"""Stage train: LoRA (or QLoRA) on the base model through transformers' Trainer.

Inputs: models/base/, data/final/{train,val}.jsonl, params ``train``.
Outputs: models/adapter/ (adapter + tokenizer via save_pretrained, and
training.json: what was used and the run identity), dvclive/ (live metrics;
run.json says how far along the run is, for `tenny train-watch`).
Scratch, not an output: .tenny/checkpoints/run-<identity>/ (outside DVC: a
killed run continues where its last checkpoint was; a finished run's are
removed, so a re-run trains anew).

The Trainer runs the loop, schedule, accumulation, precision, checkpoint
contents and resume, and ``accelerate launch`` makes it data-parallel. tenny
keeps what is its own: prompt-masked labels (modeling.encode_example),
packing (engines/packing.py), the run identity (engines/run_identity.py),
sealed checkpoints of one run (engines/checkpoints.py), live figures under its
own names (engines/train_callbacks.py), processes that stop together
(engines/train_stop.py). Seeded: the same identity gives the same adapter on
the CPU, interrupted or not.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.core.params import Params, TrainParams
from pipeline.core.records import read_records, render_text, write_json
from pipeline.core.run_status import RUN_JSON, RunStatus
from pipeline.engines import checkpoints, run_identity
from pipeline.engines.modeling import (
    check_target_modules,
    encode_within,
    load_base_model,
    load_tokenizer,
    pick_device,
    prepare_for_lora,
    quiet_libraries,
    read_base_info,
    replace_dir,
    too_long_report,
    train_tiny_tokenizer,
)
from pipeline.engines import train_speed
from pipeline.engines.packing import as_dataset
from pipeline.engines.turn_end import TurnEnds

OOM_HINT = ("out of GPU memory: lower train.batch_size (raise train.grad_accum to keep the global batch), "
            "lower train.max_seq_len, set train.gradient_checkpointing: true, train.quantization: 4bit, "
            "or train.liger_kernel: true; with train.packing: true a row holds max_seq_len tokens")


def resume_point(tp: TrainParams, run_dir: Path, identity: run_identity.RunIdentity) -> checkpoints.Checkpoint | None:
    """The checkpoint to continue from, per train.resume: only ever one of this run identity.

    Checkpoints of other identities are ignored with one line each naming what
    differs (code, data, params, base, init_adapter, processes); a named one is refused.
    """
    if tp.resume == "never":
        return None
    if tp.resume != "auto":
        named = checkpoints.read_checkpoint(Path(tp.resume))
        if named is None:
            raise UserError(f"train.resume: {tp.resume}: not a complete tenny checkpoint "
                            f"(a {checkpoints.PREFIX}N folder holding {checkpoints.MARKER}); use auto or never")
        theirs = named.info.get("identity")
        if not theirs or identity.differs(theirs):
            raise UserError(f"train.resume: {named.path}: a checkpoint of another run "
                            f"({run_identity.difference_note(identity, theirs)}); refused: a checkpoint continues "
                            "only the run that made it. Set train.resume: auto or never, or train.init_adapter: "
                            f"{named.path} to start from its weights")
        return named
    for other in checkpoints.other_runs(run_dir.parent, run_dir):
        newest = checkpoints.complete(other)[-1].step
        note = run_identity.difference_note(identity, checkpoints.read_identity(other))
        print(f"train: ignoring checkpoints of another run in {other}/ (step {newest}): {note}")
    found = checkpoints.complete(run_dir)
    return found[-1] if found else None


def attach_lora(model, tp: TrainParams):
    """A fresh LoRA, or the one in train.init_adapter to fine-tune further."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if tp.init_adapter is None:
        check_target_modules(model, tp.lora.target_modules)
        lora = LoraConfig(r=tp.lora.r, lora_alpha=tp.lora.alpha, lora_dropout=tp.lora.dropout,
                          target_modules=tp.lora.target_modules or None, task_type="CAUSAL_LM")
        return get_peft_model(model, lora)
    folder = Path(tp.init_adapter)
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise UserError(f"train.init_adapter: {folder}: not a LoRA adapter folder (no adapter_config.json); "
                        "point it at a models/adapter/ a previous run wrote")
    theirs = json.loads(config_file.read_text()).get("base_model_name_or_path")
    ours = getattr(model.config, "_name_or_path", None)
    trained = folder / "training.json"
    theirs_base = json.loads(trained.read_text()).get("base_model") if trained.is_file() else None
    if theirs_base is not None and theirs_base != tp.base_model:
        raise UserError(f"train.init_adapter: {folder} was trained on base {theirs_base!r}, "
                        f"this run's base is {tp.base_model!r}: set train.base_model to match")
    try:
        return PeftModel.from_pretrained(model, str(folder), is_trainable=True)
    except (RuntimeError, ValueError, KeyError) as err:
        raise UserError(f"train.init_adapter: {folder} does not fit this base ({theirs} vs {ours}): "
                        f"{str(err).splitlines()[0]}") from None


def training_arguments(tp: TrainParams, output_dir: Path, device: str, evaluate: bool):
    """The Trainer's settings for a train run (bench/bench_train.py times the same)."""
    import torch
    from transformers import TrainingArguments

    from pipeline.engines.train_callbacks import early_stopping_arguments

    # train.early_stopping: a checkpoint per eval (save_steps = eval_every), the best one restored at the end
    saving = {"save_strategy": "steps", "save_steps": tp.save_every,
              **(early_stopping_arguments(tp.eval_every) if tp.early_stopping and evaluate else {})}
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=tp.batch_size, per_device_eval_batch_size=tp.batch_size,
        gradient_accumulation_steps=tp.grad_accum,
        max_steps=tp.max_steps or 1,  # the stage sets it once the number of processes is known
        # (and the warmup with it: warmup_steps(tp.warmup_ratio, max_steps))
        learning_rate=tp.lr, lr_scheduler_type=tp.lr_scheduler,
        warmup_steps=warmup_steps(tp.warmup_ratio, tp.max_steps or 1),
        weight_decay=tp.weight_decay, max_grad_norm=tp.max_grad_norm, optim=tp.optimizer,
        seed=tp.seed, data_seed=tp.seed, use_cpu=device == "cpu",
        bf16=device == "cuda" and torch.cuda.is_bf16_supported(),
        # k-bit bases get theirs from prepare_model_for_kbit_training
        gradient_checkpointing=tp.gradient_checkpointing and tp.quantization == "none",
        gradient_checkpointing_kwargs={"use_reentrant": False},
        use_liger_kernel=tp.liger_kernel and device == "cuda",
        logging_steps=train_speed.log_every(tp.log_every, device),
        eval_strategy="steps" if evaluate else "no", eval_steps=tp.eval_every,
        save_total_limit=None, **saving,
        prediction_loss_only=True, remove_unused_columns=False, label_names=["labels"],
        report_to="none", disable_tqdm=True, dataloader_num_workers=tp.dataloader_workers,
        torch_compile=tp.torch_compile, ddp_find_unused_parameters=False,
    )


def warmup_steps(ratio: float, total_steps: int) -> int:
    """train.warmup_ratio as whole steps, the rounding transformers uses (ceil).

    Passed as an int: transformers >= 5 reads a float ``warmup_steps`` below 1
    as a ratio, 4.x as a step count (0.05 would be no warmup at all).
    """
    return math.ceil(ratio * total_steps)


def epochs_in_order(rows: list[dict], n: int, seed: int) -> list[dict]:
    """The first ``n`` rows of a seeded shuffle per epoch, epoch after epoch.

    tenny fixes the order, not the sampler: global batch k is the same rows on
    one process or N (each takes its slice), and a resumed run skips to the
    same row.
    """
    out: list[dict] = []
    epoch = 0
    while len(out) < n:
        order = list(range(len(rows)))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        out.extend(rows[i] for i in order)
        epoch += 1
    return out[:n]


def distributed_device(device: str) -> str:
    """Under `accelerate launch`, each process loads onto its own GPU."""
    local_rank = os.environ.get("LOCAL_RANK")
    return f"cuda:{local_rank}" if device == "cuda" and local_rank is not None else device


def run(params: Params, args: Any = None) -> int:
    quiet_libraries()
    import torch
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from pipeline.engines import train_samples  # subclasses the Trainer's callback: transformers loads here, not at `tenny --help`
    from pipeline.engines.train_callbacks import (
        InOrderTrainer,
        LiveMetrics,
        SealCheckpoints,
        early_stopping_callback,
        early_stopping_report,
    )
    from pipeline.engines.train_stop import StopOnSignal, from_main, wait_for_everyone

    tp = params.train
    if tp.threads:
        torch.set_num_threads(tp.threads)
    device = pick_device(tp.device)
    set_seed(tp.seed)  # before LoRA's A matrices are drawn: the same seed gives the same adapter
    if tp.optimizer in ("adamw_8bit", "paged_adamw_8bit") and device != "cuda":
        raise UserError(f"train.optimizer: {tp.optimizer} needs a CUDA GPU (bitsandbytes); use adamw_torch here")
    if tp.liger_kernel and device != "cuda":
        print("train: train.liger_kernel is for GPUs; off on the CPU")
    elif tp.liger_kernel and importlib.util.find_spec("liger_kernel") is None:
        raise UserError("train.liger_kernel: the liger-kernel package is not installed: pip install liger-kernel")
    for f in (paths.TRAIN, paths.VAL):
        if not f.exists():
            raise UserError(f"{f}: missing; run `tenny build` (or `dvc repro build`) first")
    train_records = list(read_records(paths.TRAIN))
    val_records = list(read_records(paths.VAL))
    if not train_records:
        raise UserError(f"{paths.TRAIN}: empty; nothing to train on")
    if tp.early_stopping and not val_records:
        raise UserError(f"train.early_stopping: {paths.VAL} is empty, so there is no val loss to stop on: raise "
                        "build.val_fraction (and run `tenny build`), or remove train.early_stopping")

    # ---- tokenizer, base model, LoRA
    info = read_base_info(paths.BASE_DIR)
    if info["kind"] == "tiny":
        if tp.quantization != "none":
            raise UserError("train.quantization: the tiny base is too small for bitsandbytes layers; use none")
        if tp.max_seq_len > tp.tiny.n_positions:
            raise UserError(f"train.max_seq_len: {tp.max_seq_len} is longer than the tiny base takes "
                            f"(train.tiny.n_positions: {tp.tiny.n_positions})")
        tok = train_tiny_tokenizer([render_text(r) for r in train_records], tp.tiny.vocab_size)
    else:
        tok = load_tokenizer(paths.BASE_DIR)
    sampling = train_samples.plan(tp, params, tok, val_records)  # bad sample prompts fail now, not at step N
    model = load_base_model(paths.BASE_DIR, tp.quantization, distributed_device(device))
    kernel = train_speed.set_attention(model, train_speed.attention(tp.attn_implementation, device))
    model.config.use_cache = False  # packed rows stay apart only without a KV cache; training needs none
    model = prepare_for_lora(model, tp.quantization, tp.gradient_checkpointing)
    model = attach_lora(model, tp)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in model.parameters())

    # ---- data
    # A sample longer than max_seq_len is left out, never cut: cut, it loses its turn end (turn_end.py).
    ends = TurnEnds(tok, params.build.stop_token)
    train_ex, train_long = encode_within(train_records, tok, tp.max_seq_len, ends)
    val_ex, val_long = encode_within(val_records, tok, tp.max_seq_len, ends)
    too_long = too_long_report(train_long, val_long, tp.max_seq_len, bool(train_ex))
    rows = as_dataset(train_ex, tp.packing, tp.max_seq_len)
    collator = train_speed.collator_for(tp.packing, kernel, tok.pad_token_id)

    # ---- who this run is, where it keeps its checkpoints, where it starts: the main process
    # decides (it alone reads the base's bytes) and every process takes its word.
    targs = training_arguments(tp, paths.CHECKPOINTS_DIR, device, evaluate=bool(val_ex))
    main_process = targs.process_index == 0
    decided = None
    if main_process:
        # build.stop_token is learned as the turn end: it changes the weights as a train knob does
        train_knobs = {**tp.model_dump(mode="json"), "build.stop_token": params.build.stop_token}
        identity = run_identity.identify(train_knobs, [paths.TRAIN, paths.VAL], paths.BASE_DIR,
                                         Path(tp.init_adapter) if tp.init_adapter else None, targs.world_size,
                                         cache_file=paths.STATE_DIR / "file_hashes.json")
        run_dir = paths.CHECKPOINTS_DIR / f"run-{identity.id}"
        start = resume_point(tp, run_dir, identity)
        checkpoints.begin_run(run_dir, identity.as_json())
        decided = (identity, run_dir, start)
    identity, run_dir, start = from_main(decided)
    targs.output_dir = str(run_dir)
    if start is not None and main_process:
        print(f"train: resuming from step {start.step} ({start.path})", flush=True)

    global_batch = tp.batch_size * tp.grad_accum * targs.world_size
    targs.max_steps = tp.max_steps or max(1, math.ceil(len(rows) * tp.epochs / global_batch))
    targs.warmup_steps = warmup_steps(tp.warmup_ratio, targs.max_steps)
    train_set = epochs_in_order(rows, targs.max_steps * global_batch, tp.seed)
    paths.DVCLIVE_DIR.mkdir(exist_ok=True)
    status = RunStatus(paths.DVCLIVE_DIR / RUN_JSON, total_steps=None, device=device, quantization=tp.quantization,
                       base_model=tp.base_model, eta_s=None, run=run_dir.name)
    live = LiveMetrics(paths.DVCLIVE_DIR, status, start.step if start else None,
                       steps_per_epoch=len(rows) / global_batch)
    stop = StopOnSignal()  # first among the callbacks: every process has saved before the main one seals
    seal_info = {"run": run_dir.name, "base_model": tp.base_model, "lora": tp.lora.model_dump(),
                 "identity": identity.parts}
    trainer = InOrderTrainer(model=model, args=targs, data_collator=collator, train_dataset=train_set,
                             eval_dataset=[{"input_ids": i, "labels": lab} for i, lab in val_ex] or None,
                             callbacks=[stop, SealCheckpoints(seal_info, tp.keep_checkpoints), live])
    samples = train_samples.callback(sampling, tp, paths.DVCLIVE_DIR, tok, start.step if start else None)
    for extra in ([samples] if samples else []) + ([early_stopping_callback(tp.early_stopping)]
                                                   if tp.early_stopping else []):
        trainer.add_callback(extra)
    for quiet in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(quiet)
    started = time.time()
    stop.install()
    try:
        result = trainer.train(resume_from_checkpoint=str(start.path) if start else None)
    except torch.cuda.OutOfMemoryError:
        if main_process:
            status.update(status="failed", error="OutOfMemoryError")
        raise UserError(OOM_HINT) from None
    except OSError as err:
        if main_process:
            status.update(status="failed", error=type(err).__name__)
        if err.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise
        newest = checkpoints.complete(run_dir)
        kept = f"the last complete checkpoint (step {newest[-1].step}) is intact; " if newest else ""
        raise UserError(f"{err.filename or run_dir}: {err.strerror or err}; {kept}"
                        "free space and run again to continue") from None
    except BaseException as err:
        if main_process:
            status.update(status="failed", error=type(err).__name__)
        raise
    finally:
        stop.uninstall()
    if stop.received is not None:
        live.close()
        if main_process:
            status.update(status="interrupted")
            print(f"train: stopped at step {trainer.state.global_step}; run `tenny train` again to continue from its checkpoint")
        # No process exits before the main one is done: a launcher stops the others when one exits.
        wait_for_everyone()
        return 128 + stop.received

    # ---- save: build beside, then swap in whole
    train_loss = next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), float("nan"))
    val_loss = next((h["eval_loss"] for h in reversed(trainer.state.log_history) if "eval_loss" in h), float("nan"))
    summary = {"base_model": tp.base_model, "quantization": tp.quantization, "device": device,
               "steps": trainer.state.global_step, "train_samples": len(train_ex), "val_samples": len(val_ex),
               "packing": tp.packing, "rows": len(rows),
               "final_train_loss": round(train_loss, 5), "final_val_loss": round(val_loss, 5),
               "trainable_params": trainable, "total_params": total_params,
               "resumed_from_step": start.step if start else None, "processes": targs.world_size,
               "seconds": round(time.time() - started, 1), "torch": torch.__version__,
               "run_identity": identity.as_json(), "over_max_seq_len": too_long,
               "turn_end": ends.chat.token if any("messages" in r for r in train_records) else ends.text.token,
               "train_tokens": trainer.state.num_input_tokens_seen * targs.world_size,
               "log_every": targs.logging_steps, "attn_implementation": kernel}
    if samples is not None:
        summary["samples"] = samples.summary(summary["seconds"])
    if tp.early_stopping:
        summary["early_stopping"] = early_stopping_report(trainer.state, tp.early_stopping)
    # Every process takes part (FSDP / DeepSpeed gather the weights here); the main one writes.
    staged = run_dir / "final-adapter"
    trainer.save_model(str(staged))
    if main_process:
        # Finished from here on: this run is never resumed, even if the swap below is cut short.
        checkpoints.mark_finished(run_dir, {"step": trainer.state.global_step, "run": run_dir.name})
        out = paths.ADAPTER_DIR
        with replace_dir(out, prefix=".adapter.") as tmp:
            for f in staged.iterdir():
                if f.name != "training_args.bin":  # the Trainer's pickle; training.json says what was used
                    shutil.move(str(f), tmp / f.name)
            tok.save_pretrained(tmp)
            write_json(tmp / "training.json", summary)
        checkpoints.remove_run(run_dir)  # a finished run's checkpoints resume nothing: free their disk
        live.close(**{k: summary[k] for k in ("quantization", "device", "base_model", "trainable_params", "seconds")})
        status.update(status="finished", step=trainer.state.global_step, last_checkpoint=str(out),
                      **({"kept_step": summary["early_stopping"]["kept_step"],
                          "stop_reason": summary["early_stopping"]["reason"]} if tp.early_stopping else {}))
        print(f"train: {trainer.state.global_step} steps on {device} ({tp.quantization}"
              f"{', packed' if tp.packing else ''}{f', {targs.world_size} processes' if targs.world_size > 1 else ''}), "
              f"train loss {train_loss:.3f}, val loss {val_loss:.3f} → {out}/ ({result.metrics.get('train_runtime', 0):.0f} s)")
    return 0

