"""The export to GGUF, timed: merge, conversion and quantization per type, sizes, and
generation speed in llama.cpp per type next to transformers float32, same prompts, same run.

Needs a project where `dvc repro` (or `tenny train`) has made models/base and
models/adapter (the default: SmolLM2-135M-Instruct + its LoRA), and a built
llama.cpp (`tenny llama-cpp`). Work happens in a temporary folder; the
project's models/merged and models/gguf are not touched.

    python bench/bench_export.py --project . --types f16 q8_0 q4_k_m --tokens 64 --repeat 3

Prints, per type: seconds to make the file, MiB, median tokens/s in llama.cpp
(greedy, ``--tokens`` tokens per prompt, end tokens ignored so every run
generates the same count), and transformers float32 tokens/s on the same
prompts with the same count.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def transformers_speed(model, tok, prompts: list[str], tokens: int, repeat: int) -> float:
    import torch

    rates = []
    for _ in range(repeat):
        for text in prompts:
            ids = tok(text, return_tensors="pt", add_special_tokens=False)
            t0 = time.perf_counter()
            with torch.no_grad():
                model.generate(**ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                               pad_token_id=tok.pad_token_id)
            rates.append(tokens / (time.perf_counter() - t0))
    return statistics.median(rates)


def llama_speed(server, prompts: list[str], tokens: int, repeat: int) -> float:
    import requests

    rates = []
    for _ in range(repeat):
        for text in prompts:
            out = requests.post(server.url + "/completion", json={
                "prompt": text, "n_predict": tokens, "temperature": 0.0, "top_k": 1, "samplers": ["top_k"],
                "ignore_eos": True, "cache_prompt": False}, timeout=600).json()
            rates.append(out["timings"]["predicted_per_second"])
    return statistics.median(rates)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, default=Path("."), help="a tenny project after `dvc repro` (default: .)")
    ap.add_argument("--types", nargs="+", default=["f16", "q8_0", "q4_k_m"])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    project = args.project.resolve()
    os.chdir(project)
    from pipeline.core import paths
    from pipeline.core.params import load_params
    from pipeline.engines import gguf_files, llama_cpp
    from pipeline.engines.llama_server import serve
    from pipeline.engines.modeling import load_base_model, load_tokenizer, quiet_libraries
    from pipeline.stages import export

    quiet_libraries()
    if not (paths.ADAPTER_DIR / "adapter_config.json").exists():
        print(f"{project}: no models/adapter; run `dvc repro train` there first", file=sys.stderr)
        return 2
    params = load_params(paths.PARAMS)
    llama = llama_cpp.ensure(params.export.llama_cpp)
    tok = load_tokenizer(paths.BASE_DIR, paths.ADAPTER_DIR)
    prompts = [export.prompt_text(tok, p, params) for p in export.check_prompts(params)]
    import torch
    from peft import PeftModel

    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        model = PeftModel.from_pretrained(load_base_model(paths.BASE_DIR), str(paths.ADAPTER_DIR)).merge_and_unload()
        model.to(torch.float32).eval()
        model.save_pretrained(tmp / "merged")
        tok.save_pretrained(tmp / "merged")
        merge_s = time.perf_counter() - t0

        made = {}
        f16 = tmp / "model-f16.gguf"
        made["f16"] = gguf_files.convert(llama, tmp / "merged", f16, "f16")
        for t in args.types:
            if t == "f16":
                continue
            out = tmp / f"model-{t}.gguf"
            made[t] = (gguf_files.convert(llama, tmp / "merged", out, t) if t in gguf_files.CONVERTER_TYPES
                       else gguf_files.quantize(llama, f16, out, t))

        hf = transformers_speed(model, tok, prompts, args.tokens, args.repeat)
        print(f"bench_export: {project.name}, {len(prompts)} prompts × {args.tokens} tokens × {args.repeat}, "
              f"{os.cpu_count()} cores, llama.cpp from {llama.origin}")
        print(f"merge (load base + adapter, merge, save float32): {merge_s:.1f} s")
        print(f"{'type':<8} {'make s':>7} {'MiB':>8} {'llama.cpp tok/s':>16} {'× transformers':>15}")
        total = merge_s
        for t in args.types:
            done = made[t]
            total += done.seconds
            with serve(llama, done.path) as server:
                rate = llama_speed(server, prompts, args.tokens, args.repeat)
            print(f"{t:<8} {done.seconds:>7.1f} {done.path.stat().st_size / 2**20:>8.1f} {rate:>16.1f} "
                  f"{rate / hf:>14.1f}×")
        print(f"{'transformers float32':<25} {hf:>16.1f} tok/s (same prompts, same token count)")
        print(f"merge + all files: {total:.1f} s (the export stage adds the check in llama.cpp)")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
