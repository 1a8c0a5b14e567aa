"""Rows for the trainer: padded batches, or samples packed into rows of ``max_seq_len``.

Packed rows carry position ids that restart at every sample and no attention
mask; transformers then keeps the samples apart (no cross-sample attention) as
long as the forward builds no KV cache (``use_cache=False``, which the train
stage sets). The first token of every packed sample takes no loss: unpacked,
nothing predicts it either, so per-sample losses are the same packed or not.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from pipeline.engines.modeling import IGNORE_INDEX

Example = tuple[list[int], list[int]]  # (input_ids, labels)


def pack(examples: Sequence[Example], row_len: int) -> list[list[int]]:
    """Best-fit decreasing: each row is a list of example indices whose lengths sum to <= ``row_len``.

    No sample is cut (encode_example already truncated every sample to
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

    def __init__(self, pad_id: int):
        self.pad_id = pad_id
        self.real_tokens = 0  # counted for tokens/s; read and reset by the live-metrics callback

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        width = max(len(item["input_ids"]) for item in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, item in enumerate(batch):
            n = len(item["input_ids"])
            input_ids[row, :n] = torch.tensor(item["input_ids"])
            labels[row, :n] = torch.tensor(item["labels"])
            mask[row, :n] = 1
            self.real_tokens += n
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


class PackedCollator:
    """A batch of packed rows: samples side by side, position ids restarting at each.

    An unpacked example (eval) is a row of one sample.
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id
        self.real_tokens = 0

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        rows = [item["segments"] if "segments" in item else [(item["input_ids"], item["labels"])] for item in batch]
        width = max(sum(len(ids) for ids, _ in segments) for segments in rows)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        positions = torch.zeros((len(batch), width), dtype=torch.long)
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
            self.real_tokens += at
        return {"input_ids": input_ids, "position_ids": positions, "labels": labels}


def as_dataset(examples: Sequence[Example], packing: bool, row_len: int) -> list[dict]:
    """What the trainer iterates: one dict per example, or per packed row."""
    if not packing:
        return [{"input_ids": ids, "labels": labs} for ids, labs in examples]
    return [{"segments": [examples[i] for i in row]} for row in pack(examples, row_len)]
