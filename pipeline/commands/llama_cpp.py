"""``tenny llama-cpp``: find llama.cpp, or fetch and build it once into tenny's cache.

The export stage does the same when ``export.gguf`` asks for files and none is
found; this command does it ahead of time (a fresh machine, CI) and says where
it is. pipeline/engines/llama_cpp.py has the rules.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=None, metavar="N", help="parallel compile jobs (default: all cores)")
    parser.add_argument("--bin-dir", action="store_true",
                        help='print only the folder of the binaries: export PATH="$(tenny llama-cpp --bin-dir):$PATH"')


def run(params: Any, args: Any = None) -> int:
    from pipeline.engines import llama_cpp

    found = llama_cpp.locate(params.export.llama_cpp)
    if found is None:
        found = llama_cpp.build_cached(jobs=getattr(args, "jobs", None))
    if getattr(args, "bin_dir", False):
        print(found.bin_dir)
        return 0
    print(f"llama.cpp: {found.root} (from {found.origin})")
    for name in llama_cpp.NEEDED:
        print(f"  {found.tool(name)}")
    print(f"  {found.convert_hf}")
    print(f'on your PATH: export PATH="{found.bin_dir}:$PATH"')
    return 0
