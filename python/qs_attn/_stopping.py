"""How a training run stops besides reaching its end: on SIGTERM as on Ctrl-C, and after a
failure with its checkpoint written.

SIGTERM is what schedulers (SLURM, Kubernetes), ``docker stop`` and ``kill`` send. While
:meth:`qs_attn.Trainer.fit` runs, it is recorded instead of ending the process; the loop then
stops after the iteration in progress and ``fit`` writes the latest checkpoint and returns
(``interrupted``, ``stopped_by="SIGTERM"``), as Ctrl-C does. A second SIGTERM is handled as it
was before ``fit`` began (by default: the process ends at once). In a ``torch.distributed`` run
the ranks agree after every iteration whether any of them was signalled, so all stop at the same
iteration and rank 0 writes the checkpoint.
"""
from __future__ import annotations

import signal
import sys
import threading
from typing import Optional

import torch
import torch.distributed as dist

from .distributed import _collective_failed

__all__ = ["TerminationRequest", "save_after_failure"]


class TerminationRequest:
    """Records SIGTERM between :meth:`install` and :meth:`restore` (main thread only: Python
    delivers signals there; elsewhere nothing is installed and SIGTERM keeps its handler)."""

    def __init__(self) -> None:
        self.received: Optional[str] = None
        self._previous = None
        self._installed = False

    @classmethod
    def install(cls) -> "TerminationRequest":
        request = cls()
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, request._handle)
            # a handler set outside Python reads as None: restore the default then
            request._previous = signal.SIG_DFL if previous is None else previous
            request._installed = True
        return request

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name
        signal.signal(signal.SIGTERM, self._previous)  # a second SIGTERM acts as before fit

    def restore(self) -> None:
        if self._installed and signal.getsignal(signal.SIGTERM) == self._handle:
            signal.signal(signal.SIGTERM, self._previous)
        self._installed = False

    def stop_now(self, world_size: int, device: torch.device) -> bool:
        """Whether to stop after this iteration: this process was signalled or, in a
        distributed run, any process was (one small all-reduce per iteration)."""
        if world_size <= 1:
            return self.received is not None
        flag = torch.tensor([0 if self.received is None else 1], device=device)
        try:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        except Exception as e:  # a dead peer or a timeout: said as for the gradients
            raise _collective_failed("agreeing whether to stop", e) from e
        if flag.item() and self.received is None:
            self.received = "SIGTERM on another rank"
        return bool(flag.item())


def save_after_failure(trainer) -> None:
    """After an error in the middle of training: writes the latest checkpoint (rank 0, once an
    iteration has run) so the run can be resumed, and says so on stderr. Never raises: the
    original error is the one that matters. A diverged run's weights are refused by the
    divergence guard, which keeps the last finite checkpoint."""
    if trainer.rank != 0 or trainer.total_iters == 0:
        return
    path = trainer.run_dir / "latest.safetensors"
    try:
        trainer._native.save(str(path))
    except Exception as e:  # noqa: BLE001 - reported, then the original error propagates
        print(f"qs_attn: training failed; no checkpoint written ({e})", file=sys.stderr)
        return
    print(f"qs_attn: training failed at iteration {trainer.total_iters}; checkpoint saved to {path}", file=sys.stderr)
