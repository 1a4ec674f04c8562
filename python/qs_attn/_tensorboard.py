"""TensorBoard event files for a run, written whenever the ``tensorboard`` package is installed
(the ``tensorboard`` extra) and nothing otherwise: each logged iteration's loss terms as
scalars ``loss/<term>``, and each sample grid the run writes (``samples/iter_<n>.png``) as the
image ``samples`` at its iteration."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ._extras import available

__all__ = ["TensorBoardLog"]


class TensorBoardLog:
    """Events under ``<run_dir>/tensorboard``; ``run_dir=None`` (a process that does not
    write, e.g. a rank other than 0) or no tensorboard: every method does nothing."""

    def __init__(self, run_dir: Optional[Path]):
        self.writer = None
        self.logged_samples = set()
        if run_dir is None or not available("tensorboard"):
            return
        from torch.utils.tensorboard import SummaryWriter

        self.samples_dir = Path(run_dir) / "samples"
        self.logged_samples = set(self.samples_dir.glob("iter_*.png"))  # a resumed run's earlier grids
        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def update(self, progress: dict) -> None:
        """After an iteration (the dict ``_native.Trainer.advance`` returns)."""
        if self.writer is None:
            return
        step = progress["total_iters"]
        for term, value in (progress["losses"] or {}).items():
            self.writer.add_scalar(f"loss/{term}", value, step)
        self._sample(self.samples_dir / f"iter_{step:07d}.png")

    def close(self, samples: Iterable[str] = ()) -> None:
        """At the end of ``fit``: logs the grids the run wrote when it finished, then flushes."""
        if self.writer is None:
            return
        for path in samples:
            self._sample(Path(path))
        self.writer.close()
        self.writer = None

    def _sample(self, path: Path) -> None:
        if path in self.logged_samples or not path.is_file():
            return
        self.logged_samples.add(path)
        from PIL import Image  # torch's add_image encodes with Pillow too (a tensorboard dependency)

        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))  # the grid's exact 8-bit values
        self.writer.add_image("samples", pixels, int(path.stem.removeprefix("iter_")), dataformats="HWC")
