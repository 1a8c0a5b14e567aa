"""Several training processes act as one: they stop together and resume from the same point.

A signal reaches one process (a scheduler's SIGTERM to one rank, Ctrl-C in a
terminal to all of them). Each process only notes it; at every step boundary
the processes agree (an all-reduce of the signal number, max), so all of them
stop after the same step, save the same checkpoint and exit with the same
status. Before the main process seals a checkpoint every process has written
its part of it (its RNG state): a barrier. A second signal stops at once,
except during a checkpoint save, which it lets finish first: a save cut in
half would leave the run without its newest checkpoint.

What one process decides for all (the run identity, the resume point) is
decided by the main process and shared (``from_main``): N processes never
pick N different checkpoints from their own view of the disk.

With one process all of this is the plain single-process behaviour: no
collective is called.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from transformers import TrainerCallback


def distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def from_main(value: Any) -> Any:
    """The main process's ``value`` on every process (others pass anything, e.g. None)."""
    if not distributed():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wait_for_everyone() -> None:
    if distributed():
        import torch.distributed as dist

        dist.barrier()


def agreed_signal(received: int | None, device: Any) -> int | None:
    """The signal any process received (the highest number if several), the same on every process."""
    if not distributed():
        return received
    import torch
    import torch.distributed as dist

    # gloo reduces CPU tensors, NCCL CUDA ones: the Trainer's device is the one the backend takes.
    flag = torch.tensor([received or 0], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None


class StopOnSignal(TrainerCallback):
    """SIGTERM / SIGINT on any process: every process finishes the step, one checkpoint is saved, all stop.

    A second signal stops at once (KeyboardInterrupt), or right after the save
    in flight. Put it first among the callbacks: its ``on_save`` barrier must
    run before the main process seals the checkpoint.
    """

    def __init__(self):
        self.received: int | None = None  # the agreed signal, once the processes have stopped on it
        self._local: int | None = None  # what this process received
        self._saving = False
        self._hard_stop = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may take signals (a run started from a worker thread)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame):
        if self._local is not None:
            if self._saving:
                self._hard_stop = True
                print(f"\ntrain: {signal.Signals(signum).name}: stopping as soon as the checkpoint being saved is complete",
                      flush=True)
                return
            raise KeyboardInterrupt
        self._local = signum
        print(f"\ntrain: {signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
              "(again to stop now)", flush=True)

    def on_step_end(self, args, state, control, **kw):
        agreed = agreed_signal(self._local, args.device)
        if agreed is not None:
            self.received = agreed
            control.should_save = True
            control.should_training_stop = True
        # The Trainer saves right after this hook when asked to (a stop, or train.save_every).
        self._saving = bool(control.should_save)

    def on_save(self, args, state, control, **kw):
        # Every process has written its files (RNG state, shards) before the main one seals the checkpoint.
        wait_for_everyone()

    def after_save(self) -> None:
        """Called once the checkpoint is sealed: a second signal that waited for it stops now."""
        self._saving = False
        if self._hard_stop:
            raise KeyboardInterrupt

    def on_step_begin(self, args, state, control, **kw):
        self.after_save()

    def on_train_end(self, args, state, control, **kw):
        self._saving = False
