"""Start-up of the commands that train and generate: torch, transformers and peft, imported once, fast.

Importing the three creates about half a million Python objects, and the cyclic
garbage collector walks every one of them again on each full collection while
the imports run: on a 2-core machine that is 3 of the 8 CPU-seconds a stage
process spends before its first step (bench/bench_startup.py). With the
collector paused during the imports they take 40 % less CPU; freezing what
they created (``gc.freeze``, made for long-lived start-up state) keeps later
collections in the run, such as accelerate's ``gc.collect()`` after training,
from walking it again. Nothing the command itself creates is frozen.
"""

from __future__ import annotations

import gc

# `tenny <command>` for these imports the stack; DVC starts one process per stage.
ML_COMMANDS = frozenset({"base", "train", "eval", "export", "judge"})


def preload_ml_stack() -> None:
    """Import torch, transformers (with its Trainer and Auto classes) and peft with the collector paused."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer  # noqa: F401 -- lazy modules, loaded now
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
