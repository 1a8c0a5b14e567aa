"""The train step without overhead of tenny's own: how often to log, which attention kernel, which rows.

Each choice here was measured (bench/bench_train.py, docs/training.md).
"""

from __future__ import annotations

from pipeline.engines.packing import FlatCollator, PackedCollator, PaddedCollator

# Steps between logs when train.log_every is 0. Logging reads the loss off the
# device (a sync) and writes the dvclive files and run.json; a GPU step of
# 100-200 ms logs about once a second at 10, which keeps the screen live. A
# CPU step takes a second or more: every step.
LOG_EVERY_GPU = 10
LOG_EVERY_CPU = 1


def log_every(setting: int, device: str) -> int:
    if setting > 0:
        return setting
    return LOG_EVERY_GPU if device.startswith("cuda") else LOG_EVERY_CPU


def flash_available() -> bool:
    from transformers.utils import is_flash_attn_2_available

    return is_flash_attn_2_available()


def attention(setting: str, device: str) -> str:
    """The kernel to train with: flash attention on a GPU that has it (auto), else SDPA.

    Asked for flash attention where it is not installed or there is no GPU:
    one line, and the run goes on with SDPA.
    """
    on_gpu = device.startswith("cuda")
    if setting == "auto":
        return "flash_attention_2" if on_gpu and flash_available() else "sdpa"
    if setting == "flash_attention_2" and not (on_gpu and flash_available()):
        why = "no CUDA GPU" if not on_gpu else "the flash-attn package is not installed (pip install flash-attn)"
        print(f"train: train.attn_implementation: flash_attention_2 is not available here ({why}); using sdpa",
              flush=True)
        return "sdpa"
    return setting


def set_attention(model, kernel: str) -> str:
    """Switch a loaded model to ``kernel`` (a no-op when it already runs it); returns the kernel in use.

    A model that cannot run it (an architecture without SDPA support) keeps the one it loaded with, with a line.
    """
    current = getattr(model.config, "_attn_implementation", None)
    if current == kernel:
        return kernel
    try:
        model.set_attn_implementation(kernel)
    except (ValueError, ImportError) as err:
        print(f"train: train.attn_implementation: {kernel} does not work with this model "
              f"({str(err).splitlines()[0]}); using {current}", flush=True)
        return current or kernel
    return kernel


def collator_for(packing: bool, kernel: str, pad_id: int):
    """Padded batches; packed rows; or with flash attention, packed samples in one padding-free row.

    Flash attention's varlen path keeps samples apart by their position ids,
    so the rows need neither padding nor a block mask (the mask is what made
    packing 0.80x on short samples with SDPA).
    """
    if packing and kernel == "flash_attention_2":
        return FlatCollator(pad_id, count_tokens=True)
    return (PackedCollator if packing else PaddedCollator)(pad_id, count_tokens=True)
