"""QLoRA vs LoRA: memory and speed of a training step, through tenny's own loading code.

Builds a Llama-shaped model from a config (random weights: the figures are
about memory and speed, not quality), saves it as a local folder, and loads it
the way the train stage does (``pipeline.engines.modeling.load_base_model`` with
``quantization`` none / 8bit / 4bit), then takes LoRA steps on q/v projections.
Prints, per quantization: load seconds, parameters, peak memory, median and
p90 step time, tokens/s. On a GPU the memory is torch's peak allocation; on the
CPU the process's peak RSS.

    python bench/bench_qlora.py --preset smollm2   # 135M shape, CPU-friendly
    python bench/bench_qlora.py --preset 1b        # TinyLlama-1.1B shape, GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PRESETS = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, vocab_size=512),
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, vocab_size=49152),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4, vocab_size=32000),
    "3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8, vocab_size=32000),
}


def peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(folder: Path, quantization: str, device: str, steps: int, batch: int, seq: int, ckpt: bool) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from pipeline.engines.modeling import load_base_model, prepare_for_lora
    from pipeline.engines.packing import PaddedCollator

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model = load_base_model(folder, quantization, device)
    load_s = time.perf_counter() - t0
    weights_mb = torch.cuda.memory_allocated() / 2**20 if device == "cuda" else -1  # -1: not measured on the CPU
    model = prepare_for_lora(model, quantization, ckpt)  # the train stage's own preparation
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.train()  # transformers checkpoints only in training mode, as in the train stage
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    times = []
    for step in range(steps + 2):
        ids = torch.randint(0, vocab, (batch, seq), generator=gen).tolist()
        b = {k: v.to(device) for k, v in PaddedCollator(0)([{"input_ids": row, "labels": row} for row in ids]).items()}
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= 2:  # the first steps warm up kernels and allocator
            times.append(time.perf_counter() - t)
    times.sort()
    med = statistics.median(times)
    out = {
        "quantization": quantization, "device": device, "load_s": round(load_s, 2),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "weights_mb": round(weights_mb), "peak_mem_mb": round(peak_memory_mb(device)), "grad_ckpt": ckpt,
        "step_median_s": round(med, 4), "step_p90_s": round(times[int(len(times) * 0.9) - 1], 4),
        "tokens_per_s": round(batch * seq / med), "final_loss": round(loss.item(), 3),
        "layer": type(model.base_model.model.model.layers[0].self_attn.q_proj.base_layer).__name__,
    }
    del model, opt
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=PRESETS, default="smollm2")
    ap.add_argument("--quantization", nargs="+", default=["none", "8bit", "4bit"])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing, as QLoRA usually runs")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.engines.modeling import BASE_INFO, pick_device, quiet_libraries

    quiet_libraries()
    device = pick_device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights, base = Path(tmp) / "weights", Path(tmp) / "base"
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(max_position_embeddings=2048, **PRESETS[args.preset])).to(torch.bfloat16).save_pretrained(weights)
        base.mkdir()
        (base / BASE_INFO).write_text(json.dumps({"kind": "pretrained", "source": str(weights), "source_name": args.preset}))
        for q in args.quantization:
            row = one(base, q, device, args.steps, args.batch, args.seq, args.grad_ckpt)
            rows.append(row)
            print(json.dumps(row), flush=True)
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    print(f"\npreset {args.preset}, batch {args.batch} x {args.seq} tokens, LoRA r=16 on q/v, "
          f"gradient checkpointing {'on' if args.grad_ckpt else 'off'}, {args.steps} timed steps, {gpu}")
    print(f"{'quantization':>12} {'layer':>14} {'weights MB':>10} {'peak MB':>9} {'step s (median)':>16} {'tokens/s':>9} {'load s':>7}")
    base_row = rows[0]
    for r in rows:
        print(f"{r['quantization']:>12} {r['layer']:>14} {r['weights_mb']:>10} {r['peak_mem_mb']:>9} {r['step_median_s']:>16} "
              f"{r['tokens_per_s']:>9} {r['load_s']:>7}   peak x{r['peak_mem_mb'] / base_row['peak_mem_mb']:.2f} vs {base_row['quantization']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
