"""The training progress display on stderr: tqdm's bar when tqdm is installed (the ``progress``
extra), else one self-overwriting line with the same fields: iterations done of the schedule,
rate, time left, and the last logged losses.

``progress=None`` (the default) shows it when stderr is a terminal or a Jupyter kernel's
output, so logs and pipes stay quiet; ``True`` always, ``False`` never."""
from __future__ import annotations

import sys
import time
from typing import Dict, Optional

from ._extras import available

__all__ = ["ProgressDisplay", "wanted"]


def wanted(progress: Optional[bool]) -> bool:
    """Whether to show progress for the ``progress`` option."""
    if progress is not None:
        return bool(progress)
    return sys.stderr.isatty() or _in_jupyter_kernel()


def _in_jupyter_kernel() -> bool:
    """Whether this process is a running Jupyter kernel (not merely one that imported
    ipykernel, as a test runner executing notebooks does)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


def planned_iterations(progress: dict, max_iters: Optional[int]) -> int:
    """The schedule's last iteration: every epoch's iterations, or ``max_iters`` if sooner."""
    total = progress["iters_per_epoch"] * progress["last_epoch"]
    return min(total, max_iters) if max_iters else total


class ProgressDisplay:
    """Created per ``fit``; ``update`` after each iteration, ``close`` at the end."""

    def __init__(self, enabled: bool, max_iters: Optional[int]):
        self.enabled = enabled
        self.max_iters = max_iters
        self.bar = None
        self.losses: Dict[str, float] = {}
        self.start = time.perf_counter()
        self.first: Optional[int] = None

    def update(self, p: dict) -> None:
        if not self.enabled:
            return
        if p["losses"]:
            self.losses = p["losses"]
        total = planned_iterations(p, self.max_iters)
        shown = {k: f"{v:.3f}" for k, v in sorted(self.losses.items())}
        if available("tqdm"):
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=p["total_iters"] - 1, unit="it", file=sys.stderr,
                                dynamic_ncols=True, desc="qs_attn")
            self.bar.total = total
            self.bar.set_postfix(shown, refresh=False)
            self.bar.set_description(f"epoch {p['epoch']}/{p['last_epoch']}", refresh=False)
            self.bar.update(1)
            return
        if self.first is None:
            self.first = p["total_iters"] - 1
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = (p["total_iters"] - self.first) / elapsed
        left = (total - p["total_iters"]) / rate if rate > 0 else 0.0
        sys.stderr.write(
            f"\repoch {p['epoch']}/{p['last_epoch']} {p['total_iters']}/{total} it | {rate:.2f} it/s | "
            f"left {_clock(left)} | " + " ".join(f"{k} {v}" for k, v in shown.items()) + "   ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.first is not None:
            sys.stderr.write("\n")


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds + 0.5), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
