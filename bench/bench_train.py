"""Training throughput and memory: the train stage's own step against a bare transformers + peft loop.

Builds a Llama-shaped model from a config (random weights: the figures are about
speed and memory, not quality) and synthetic samples whose token lengths follow
a persona-like (short) or instruction-like (long) distribution, then times, in
one process and on the same samples:

- ``bare``: a hand-written loop (padded batches, AdamW, forward/backward), what
  tenny's train stage was before it moved to the Trainer;
- ``padded``: the train stage's step: its TrainingArguments, InOrderTrainer and
  PaddedCollator (train.packing: false);
- ``packed``: the same with packed rows (train.packing: true).

Prints per variant: median step time, real (non-pad) tokens/s, samples/s, peak
memory and, with a peak FLOP/s figure, model FLOPs utilization (4 x parameters
per real token: forward plus the input-gradient half of backward, the frozen
base takes no weight gradients). Medians over the timed steps after warm-up.

    python bench/bench_train.py                                   # tiny shape, CPU, a minute
    python bench/bench_train.py --preset smollm2 --steps 12       # the default base's shape on the CPU
    python bench/bench_train.py --project . --epoch               # after `dvc repro`: the real base and
                                                                  # data/final/train.jsonl, one epoch each,
                                                                  # at params.yaml's batch_size / max_seq_len
    python bench/bench_train.py --overhead --steps 200 --batch 2 --max-len 64   # tenny's step vs a bare Trainer
    python bench/bench_train.py --preset smollm2 --sample-cost --steps 6          # answers' share of a default run
    python bench/bench_train.py --preset 1.7b --samples instruction --batch 16 --row-len 8192 \\
        --peak-tflops 790                                         # an H100/H200 (bf16)
    ... --gradient-checkpointing / --liger                        # the memory knobs
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PRESETS = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, vocab_size=512),
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152),
    "1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=49152),
}
# Token lengths seen in practice: persona one-liners (~60 tokens with the chat template) and
# instruction data (median ~300). Log-normal, clipped to the row length.
SAMPLES = {"persona": (60, 0.35), "instruction": (300, 0.6)}


def make_examples(kind: str, n: int, max_len: int, vocab: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    from pipeline.engines.modeling import IGNORE_INDEX

    median, sigma = SAMPLES[kind]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = max(8, min(max_len, int(rng.lognormvariate(0, sigma) * median)))
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        prompt = length // 3  # the masked prompt part of a chat sample
        out.append((ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return out


def project_data(args):
    """The real thing: the project's base model folder and its encoded train split, at its params."""
    import math

    from transformers import AutoConfig

    from pipeline.core.params import load_params
    from pipeline.core.records import read_records
    from pipeline.engines.modeling import encode_within, load_tokenizer, read_base_info
    from pipeline.engines.packing import pack

    root = args.project
    params = load_params(root / "params.yaml")
    info = read_base_info(root / "models/base")
    folder = root / "models/base" if info["kind"] != "pretrained" else info["source"]
    tok = load_tokenizer(root / "models/base")
    global PAD
    PAD = tok.pad_token_id
    examples, _ = encode_within(list(read_records(root / "data/final/train.jsonl")), tok, params.train.max_seq_len)
    args.batch = args.packed_batch = params.train.batch_size
    args.row_len = args.max_len = params.train.max_seq_len
    args.preset = f"{info.get('source_name', info['source'])} from {root}"
    if args.epoch:
        packed_rows = len(pack(examples, args.row_len))
        args.steps_padded = math.ceil(len(examples) / args.batch) - args.warmup
        args.steps_packed = math.ceil(packed_rows / args.packed_batch) - args.warmup
    return folder, examples, AutoConfig.from_pretrained(folder)


def peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fresh_model(folder: Path, device: str, args):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pipeline.engines.modeling import prepare_for_lora

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16 if device == "cuda" else torch.float32,
                                                 attn_implementation="sdpa").to(device)
    model.config.use_cache = False
    model = prepare_for_lora(model, "none", args.gradient_checkpointing)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


PAD = 0


def bare(folder, device, examples, args) -> dict:
    """The loop tenny had: padded batches in a seeded order, AdamW, clip, step."""
    import torch

    from pipeline.engines.packing import PaddedCollator

    model = fresh_model(folder, device, args)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    collate = PaddedCollator(PAD)
    order = list(range(len(examples)))
    random.Random(0).shuffle(order)
    times, tokens = [], []
    for step in range(args.warmup + steps_for(args, packing=False)):
        rows = [examples[order[(step * args.batch + i) % len(order)]] for i in range(args.batch)]
        batch = {k: v.to(device) for k, v in collate([{"input_ids": a, "labels": b} for a, b in rows]).items()}
        sync(device)
        t0 = time.perf_counter()
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
            tokens.append(int(batch["attention_mask"].sum()))
    return summarize("bare transformers+peft, padded", times, tokens, args.batch, model, device, args)


def stage(folder, device, examples, args, packing: bool) -> dict:
    """The train stage's own step: its TrainingArguments, InOrderTrainer, collators and row order."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from pipeline.core.params import TrainParams
    from pipeline.engines.packing import PackedCollator, PaddedCollator, as_dataset
    from pipeline.engines.train_callbacks import InOrderTrainer
    from pipeline.stages.train import epochs_in_order, training_arguments

    batch = args.packed_batch if packing else args.batch
    tp = TrainParams(batch_size=batch, packing=packing, max_seq_len=args.row_len if packing else args.max_len,
                     gradient_checkpointing=args.gradient_checkpointing, liger_kernel=args.liger,
                     max_steps=args.warmup + steps_for(args, packing), save_every=10**9, eval_every=10**9, lr=1e-4,
                     device=device)
    rows = as_dataset(examples, packing, tp.max_seq_len)
    collator = (PackedCollator if packing else PaddedCollator)(PAD)
    model = fresh_model(folder, device, args)
    out = Path(tempfile.mkdtemp(prefix="bench-train-"))
    targs = training_arguments(tp, out, device, evaluate=False)
    targs.save_strategy = "no"
    data = epochs_in_order(rows, tp.max_steps * batch, 0)

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            sync(device)
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            sync(device)
            if state.global_step > args.warmup:
                times.append(time.perf_counter() - self.t0)

    trainer = InOrderTrainer(model=model, args=targs, data_collator=collator, train_dataset=data, callbacks=[Clock()])
    for quiet in (ProgressCallback, PrinterCallback):  # as the stage does: no log dicts on stdout
        trainer.remove_callback(quiet)
    trainer.train()
    # Real tokens per step from the rows each step took (the loader collates a batch ahead of the clock).
    per_step = [sum(len(ids) for ids, _ in row_segments(r)) for r in data]
    tokens = [sum(per_step[s * batch:(s + 1) * batch]) for s in range(args.warmup, args.warmup + len(times))]
    label = f"tenny train stage, {'packed rows of ' + str(tp.max_seq_len) if packing else 'padded'}"
    return summarize(label, times, tokens, batch, model, device, args, samples=[
        len(row_segments(r)) for r in data[args.warmup * batch:]])


def overhead(folder, device, examples, args) -> None:
    """tenny's step against a bare Trainer with the same TrainingArguments and no callbacks, same process.

    Both take the same rows in the same order through the same collator; tenny adds its
    callbacks (live figures and run.json, sealed checkpoints, stop on signal,
    answers while training) and its token count. The clock is the interval
    between consecutive ``on_step_begin`` calls, so it holds everything a step
    costs: the Trainer's own logging, every callback, the loader. Rounds
    alternate (bare, tenny, bare, tenny, ...) so a machine that slows down
    mid-run slows both alike. Prints medians and the ratio.
    """
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from pipeline.core import run_status as rs
    from pipeline.core.params import TrainParams
    from pipeline.engines import train_samples
    from pipeline.engines.packing import REAL_TOKENS, as_dataset
    from pipeline.engines.train_callbacks import InOrderTrainer, LiveMetrics, SealCheckpoints
    from pipeline.engines.train_speed import collator_for
    from pipeline.stages.train import epochs_in_order, training_arguments

    try:
        from pipeline.engines.train_stop import StopOnSignal
    except ImportError:  # before the stop moved out of train_callbacks
        from pipeline.engines.train_callbacks import StopOnSignal

    # Wall time, or this process's CPU time: on a machine other jobs share, waiting for a core
    # swamps a difference of milliseconds, while the CPU time counts the work each step did.
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    steps = args.warmup + args.steps
    tp = TrainParams(batch_size=args.batch, max_seq_len=args.max_len, max_steps=steps, save_every=10**9,
                     eval_every=10**9, lr=1e-4, device=device, log_every=args.log_every)
    rows = as_dataset(examples, False, tp.max_seq_len)
    data = epochs_in_order(rows, steps * tp.batch_size, 0)

    class Clock(TrainerCallback):
        def __init__(self):
            self.starts: list[float] = []

        def on_step_begin(self, a, state, control, **kw):
            self.starts.append(clock())

        def on_train_end(self, a, state, control, **kw):
            self.starts.append(clock())

        def intervals(self) -> list[float]:
            return [b - a for a, b in zip(self.starts[args.warmup:], self.starts[args.warmup + 1:])]

    class Ordered(Trainer):
        """transformers' Trainer taking the rows in the order given, as tenny's does; nothing else."""

        def _get_train_sampler(self, *a, **kw):
            return InOrderTrainer._get_train_sampler(self)

    class Uncounted:
        """The bare Trainer's collator: tenny's, without the token count it adds to each batch."""

        def __init__(self, inner):
            self.inner = inner

        def __call__(self, batch):
            out = self.inner(batch)
            out.pop(REAL_TOKENS, None)
            return out

    def one(kind: str) -> list[float]:
        model = fresh_model(folder, device, args)
        out = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
        targs = training_arguments(tp, out / "checkpoints", device, evaluate=False)
        clock = Clock()
        collator = collator_for(False, "sdpa", PAD)
        if kind == "bare":
            # The same row order as tenny's (a random sampler would batch other lengths together).
            trainer = Ordered(model=model, args=targs, data_collator=Uncounted(collator), train_dataset=data,
                              callbacks=[clock])
            trainer.remove_callback(PrinterCallback)
        else:
            live_dir = out / "dvclive"
            status = rs.RunStatus(live_dir / rs.RUN_JSON, total_steps=None, device=device)
            sampler = train_samples.SampleAnswers(
                live_dir, _BenchTok(), ["Say something."], ["Say something."], stops=[PAD],
                sample_every=0, max_new_tokens=8, resumed_from=None)
            trainer = InOrderTrainer(model=model, args=targs, data_collator=collator, train_dataset=data,
                                     callbacks=[StopOnSignal(), SealCheckpoints({}, 2),
                                                LiveMetrics(live_dir, status, None, steps_per_epoch=len(rows) / tp.batch_size),
                                                sampler, clock])
            for quiet in (ProgressCallback, PrinterCallback):
                trainer.remove_callback(quiet)
        import contextlib
        import io

        with contextlib.redirect_stderr(io.StringIO()):  # tenny's progress bar: not for the bench's output
            trainer.train()
        return clock.intervals()

    times: dict[str, list[float]] = {"bare": [], "tenny": []}
    for _ in range(args.rounds):
        for kind in ("bare", "tenny"):
            times[kind].extend(one(kind))
    bare_s, tenny_s = statistics.median(times["bare"]), statistics.median(times["tenny"])
    print(f"# overhead: {args.rounds} rounds x {args.steps} timed steps each, after {args.warmup} warm-up steps; "
          f"batch {args.batch}; train.log_every {args.log_every} (0: auto); {args.clock} time")
    print("variant | median_step_s | mean_step_s | steps")
    for kind, label in (("bare", "bare Trainer, no callbacks"), ("tenny", "tenny train stage (its callbacks)")):
        print(f"{label} | {statistics.median(times[kind]):.5f} | {statistics.mean(times[kind]):.5f} | {len(times[kind])}")
    print(f"tenny / bare (median step): {tenny_s / bare_s:.3f}x")


def sample_cost(folder, device, examples, args) -> None:
    """What answering while training costs at the defaults: a step of the train stage against a round of
    answers (train.sample_prompts: 5 prompts, train.sample_max_new_tokens new tokens, greedy, full
    length: no EOS on random weights), and the share of a run of --run-steps steps that sample_every: 0 (about 5 rounds) takes."""
    import math

    import torch

    from pipeline.core.params import TrainParams
    from pipeline.engines import train_samples

    row = stage(folder, device, examples, args, packing=False)
    model = fresh_model(folder, device, args)
    prompt_len = sorted(len(ids) for ids, _ in examples)[len(examples) // 2] // 3

    class Tok(_BenchTok):
        def __call__(self, texts, **kw):
            from transformers import BatchEncoding

            ids = torch.randint(3, 500, (len(texts), prompt_len), generator=torch.Generator().manual_seed(0))
            return BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids)})

    new_tokens = TrainParams().sample_max_new_tokens
    sampler = train_samples.SampleAnswers(Path(tempfile.mkdtemp()), Tok(), ["p"] * 5, ["p"] * 5, stops=[-1],
                                          sample_every=0, max_new_tokens=new_tokens, resumed_from=None)
    model.train()
    rounds = []
    for _ in range(3):
        sync(device)
        t0 = time.perf_counter()
        sampler.answer(model, 0)
        sync(device)
        rounds.append(time.perf_counter() - t0)
    step_s, round_s = row["median_step_s"], statistics.median(rounds)
    n = math.ceil(args.run_steps / train_samples.every_for(0, args.run_steps))
    share = n * round_s / (args.run_steps * step_s + n * round_s)
    print(f"# sample cost: {prompt_len}-token prompts, batch {args.batch}")
    print(f"median train step {step_s:.3f} s | median answer round (5 prompts x {new_tokens} tokens) {round_s:.3f} s")
    print(f"a run of {args.run_steps} steps, {n} rounds (sample_every: 0): {100 * share:.1f} % of its time")


class _BenchTok:
    """The least a tokenizer must do for SampleAnswers on random weights and ids (no vocabulary here)."""

    pad_token_id = 0
    padding_side = "right"

    def __call__(self, texts, **kw):
        import torch

        from transformers import BatchEncoding

        ids = torch.tensor([[5, 6, 7, 8]] * len(texts))
        return BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids)})

    def decode(self, ids, **kw):
        return " ".join(map(str, ids))


def steps_for(args, packing: bool) -> int:
    """Timed steps: --steps, or with --epoch the steps one epoch takes in that variant."""
    return getattr(args, "steps_packed" if packing else "steps_padded", args.steps)


def row_segments(row: dict) -> list:
    return row["segments"] if "segments" in row else [(row["input_ids"], row["labels"])]


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def summarize(label, times, tokens, batch, model, device, args, samples=None) -> dict:
    med = statistics.median(times)
    tok_s = statistics.median(t / s for t, s in zip(tokens, times))
    n_samples = (sum(samples[:len(times) * batch]) / len(times)) if samples else batch
    params = sum(p.numel() for p in model.parameters())
    row = {"variant": label, "median_step_s": round(med, 4), "real_tokens_per_s": round(tok_s, 1),
           "samples_per_s": round(n_samples / med, 2), "epoch_s": round(args.n_samples / (n_samples / med), 1),
           "peak_memory_mb": round(peak_memory_mb(device)),
           "params_m": round(params / 1e6, 1)}
    if args.peak_tflops:
        row["mfu_pct"] = round(100 * 4 * params * tok_s / (args.peak_tflops * 1e12), 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--samples", choices=sorted(SAMPLES), default="persona")
    ap.add_argument("--n", type=int, default=2000, help="synthetic samples")
    ap.add_argument("--batch", type=int, default=8, help="padded batch size (train.batch_size, packing off)")
    ap.add_argument("--packed-batch", type=int, default=2, help="packed rows per step")
    ap.add_argument("--row-len", type=int, default=512, help="packed row length (train.max_seq_len, packing on)")
    ap.add_argument("--max-len", type=int, default=512, help="longest sample")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--liger", action="store_true", help="Liger kernels (GPU, pip install liger-kernel)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the card's measured bf16 peak, for MFU")
    ap.add_argument("--only", nargs="*", choices=["bare", "padded", "packed"], default=["bare", "padded", "packed"])
    ap.add_argument("--project", type=Path, help="a reproduced tenny project: its models/base and data/final/train.jsonl")
    ap.add_argument("--epoch", action="store_true", help="time one whole epoch per variant (with --project)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--overhead", action="store_true",
                    help="tenny's step against a bare Trainer with the same arguments and no callbacks (tiny model)")
    ap.add_argument("--rounds", type=int, default=3, help="--overhead: alternating rounds of each")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="--overhead: wall time, or the process's CPU time (steadier on a shared machine)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--sample-cost", action="store_true",
                    help="a round of answers while training against a train step, and its share of a run")
    ap.add_argument("--run-steps", type=int, default=84, help="--sample-cost: steps in the run (default pipeline: 84)")
    ap.add_argument("--log-every", type=int, default=0, help="--overhead: train.log_every (0: the default)")
    args = ap.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.engines.modeling import quiet_libraries

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.project:
        folder, examples, cfg = project_data(args)
    else:
        folder = Path(tempfile.mkdtemp(prefix="bench-train-model-"))
        cfg = LlamaConfig(**PRESETS[args.preset], max_position_embeddings=max(args.row_len, args.max_len),
                          pad_token_id=PAD, tie_word_embeddings=True)
        torch.manual_seed(0)
        LlamaForCausalLM(cfg).save_pretrained(folder)
        examples = make_examples(args.samples, args.n, min(args.max_len, args.row_len), cfg.vocab_size)
    args.n_samples = len(examples)
    lengths = sorted(len(ids) for ids, _ in examples)
    gpu = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    what = f"{len(examples)} samples of {args.project}/data/final/train.jsonl" if args.project else f"{args.samples} samples"
    timed = "one epoch per variant" if args.epoch and args.project else f"{args.steps} timed steps"
    print(f"# {args.preset} ({cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}), LoRA r=16 q/v, {gpu}, "
          f"torch {torch.__version__}; {what}: median {lengths[len(lengths) // 2]} tokens, "
          f"p90 {lengths[int(len(lengths) * 0.9)]}; {timed} after {args.warmup} warm-up steps")
    if args.overhead:
        overhead(folder, device, examples, args)
        return
    if args.sample_cost:
        sample_cost(folder, device, examples, args)
        return
    results = []
    for variant in args.only:
        if variant == "bare":
            results.append(bare(folder, device, examples, args))
        else:
            results.append(stage(folder, device, examples, args, packing=variant == "packed"))
        if args.json:
            print(json.dumps(results[-1]))
    if not args.json:
        head = ["variant", "median_step_s", "real_tokens_per_s", "samples_per_s", "epoch_s", "peak_memory_mb"] + (
            ["mfu_pct"] if args.peak_tflops else [])
        print(" | ".join(head))
        for r in results:
            print(" | ".join(str(r[h]) for h in head))
        base = next((r for r in results if r["variant"].startswith("bare")), None)
        for r in results:
            if base and r is not base:
                print(f"{r['variant']}: {r['samples_per_s'] / base['samples_per_s']:.2f}x the bare loop's samples/s")


if __name__ == "__main__":
    main()
