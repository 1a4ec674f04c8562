"""The moving average of G's weights (option ``ema_decay``, ``src/train/ema.rs``) on the Python
side: a context in which a trainer's G holds the average (for samples and evaluation), and the
averaged generator of a checkpoint (``G_ema.<name>`` entries over the ``G`` state dict)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator

import torch

#: Checkpoint key prefix of the averaged weights (the Rust side's `ema::PREFIX`).
PREFIX = "G_ema"


@contextmanager
def averaged_weights(native) -> Iterator[bool]:
    """Inside, the trainer's G (and every view of it) holds the moving average of its weights;
    on exit, the trained weights again (an exact exchange). Yields whether an average exists
    (without ``ema_decay`` the context changes nothing)."""
    swapped = native.swap_ema()
    try:
        yield swapped
    finally:
        if swapped:
            native.swap_ema()


def generator_state(states: Dict[str, Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """The generator a checkpoint's user gets: G's state with the averaged parameters when the
    run kept an average (``states`` as read by ``models.checkpoint_state_dicts``)."""
    return {**states["G"], **states.get(PREFIX, {})}
