"""Rows for the trainer: padded batches, or samples packed into rows of ``max_seq_len``.

Packed rows carry position ids that restart at every sample and no attention
mask; transformers then keeps the samples apart (no cross-sample attention) as
long as the forward builds no KV cache (``use_cache=False``, which the train
stage sets). The first token of every packed sample takes no loss: unpacked,
nothing predicts it either, so per-sample losses are the same packed or not.

Made with ``count_tokens=True`` (the train stage), a collator puts
``real_tokens`` (the batch's non-pad token count, a plain int) into every
batch: the trainer pops it before the forward and counts it only for training
steps (train_callbacks.InOrderTrainer), so eval batches and a loader that
collates ahead or in worker processes never skew tokens/s.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from pipeline.engines.modeling import IGNORE_INDEX

REAL_TOKENS = "real_tokens"  # the batch key with the batch's non-pad token count

Example = tuple[list[int], list[int]]  # (input_ids, labels)


def pack(examples: Sequence[Example], row_len: int) -> list[list[int]]:
    """Best-fit decreasing: each row is a list of example indices whose lengths sum to <= ``row_len``.

    No sample is cut (train already left out every sample longer than
    ``max_seq_len``). The order is deterministic; the trainer shuffles rows.
    """
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i][0]), i))
    rows: list[list[int]] = []
    # (room left, row index), sorted: the tightest row that still fits is a bisect away.
    room: list[tuple[int, int]] = []
    for i in order:
        n = len(examples[i][0])
        if n > row_len:
            raise ValueError(f"example {i} has {n} tokens, more than a row of {row_len}")
        at = bisect.bisect_left(room, (n, -1))
        if at == len(room):
            rows.append([i])
            bisect.insort(room, (row_len - n, len(rows) - 1))
        else:
            left, r = room.pop(at)
            rows[r].append(i)
            bisect.insort(room, (left - n, r))
    return rows


class PaddedCollator:
    """A batch of whole examples, right-padded, with an attention mask."""

    def __init__(self, pad_id: int, count_tokens: bool = False):
        self.pad_id = pad_id
        self.count_tokens = count_tokens

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        width = max(len(item["input_ids"]) for item in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        real = 0
        for row, item in enumerate(batch):
            n = len(item["input_ids"])
            input_ids[row, :n] = torch.tensor(item["input_ids"])
            labels[row, :n] = torch.tensor(item["labels"])
            mask[row, :n] = 1
            real += n
        out = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
        return {**out, REAL_TOKENS: real} if self.count_tokens else out


class PackedCollator:
    """A batch of packed rows: samples side by side, position ids restarting at each.

    An unpacked example (eval) is a row of one sample.
    """

    def __init__(self, pad_id: int, count_tokens: bool = False):
        self.pad_id = pad_id
        self.count_tokens = count_tokens

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        rows = [item["segments"] if "segments" in item else [(item["input_ids"], item["labels"])] for item in batch]
        width = max(sum(len(ids) for ids, _ in segments) for segments in rows)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        positions = torch.zeros((len(batch), width), dtype=torch.long)
        real = 0
        for row, segments in enumerate(rows):
            at = 0
            for ids, labs in segments:
                n = len(ids)
                input_ids[row, at:at + n] = torch.tensor(ids)
                labels[row, at + 1:at + n] = torch.tensor(labs[1:])
                positions[row, at:at + n] = torch.arange(n)
                at += n
            # Padding at the row's end is one more "sample": it sees only itself and takes no loss.
            positions[row, at:] = torch.arange(width - at)
            real += at
        out = {"input_ids": input_ids, "position_ids": positions, "labels": labels}
        return {**out, REAL_TOKENS: real} if self.count_tokens else out


class FlatCollator:
    """Padding-free: every sample of the batch side by side in one row (flash attention's varlen path).

    transformers' ``DataCollatorWithFlattening`` does the work: position ids
    restart at each sample and each sample's first label is -100, as packed.
    Only flash attention keeps the samples apart without a mask; the train
    stage uses this collator only then.
    """

    def __init__(self, pad_id: int, count_tokens: bool = False):
        from transformers import DataCollatorWithFlattening

        self.pad_id = pad_id
        self.count_tokens = count_tokens
        self.flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)

    def __call__(self, batch: list[dict]) -> dict:
        samples = [{"input_ids": list(ids), "labels": list(labs)} for item in batch
                   for ids, labs in (item["segments"] if "segments" in item else [(item["input_ids"], item["labels"])])]
        out = dict(self.flatten(samples, return_tensors="pt"))
        if self.count_tokens:
            out[REAL_TOKENS] = sum(len(s["input_ids"]) for s in samples)
        return out


def as_dataset(examples: Sequence[Example], packing: bool, row_len: int) -> list[dict]:
    """What the trainer iterates: one dict per example, or per packed row."""
    if not packing:
        return [{"input_ids": ids, "labels": labs} for ids, labs in examples]
    return [{"segments": [examples[i] for i in row]} for row in pack(examples, row_len)]
