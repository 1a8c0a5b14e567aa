"""Benchmark: CPU a stage process spends importing torch, transformers and peft.

Each figure is the median of N fresh interpreters (user + sys CPU, and wall),
in the same run: the plain imports, then pipeline/core/startup.py's
``preload_ml_stack`` (the collector paused during the imports, then frozen),
which `tenny base|train|eval|export|judge` call first.

    python bench/bench_startup.py        # 5 of each
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLAIN = ("import peft, torch, transformers\n"
         "from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer\n")
PRELOAD = "from pipeline.core.startup import preload_ml_stack\npreload_ml_stack()\n"


def measure(code: str) -> tuple[float, float]:
    before = os.times()
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, stderr=subprocess.DEVNULL)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return cpu, time.monotonic() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=5)
    args = ap.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"plain imports": [], "preload_ml_stack": []}
    for _ in range(args.n):  # interleaved: a busy moment on the machine hits both alike
        results["plain imports"].append(measure(PLAIN))
        results["preload_ml_stack"].append(measure(PRELOAD))
    base = statistics.median(c for c, _ in results["plain imports"])
    print(f"{'':18} {'CPU s (median)':>15} {'wall s':>8} {'vs plain':>9}   (n={args.n})")
    for name, runs in results.items():
        cpu = statistics.median(c for c, _ in runs)
        wall = statistics.median(w for _, w in runs)
        print(f"{name:18} {cpu:15.2f} {wall:8.2f} {cpu / base:8.2f}×")


if __name__ == "__main__":
    main()
