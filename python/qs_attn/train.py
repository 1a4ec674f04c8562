"""Training from Python: ``qs_attn.train(...)`` runs the Rust trainer (networks, loop, data
loading, checkpoints all in Rust) through :class:`qs_attn.Trainer`, which reports progress here
(progress line, TensorBoard) and runs callbacks between iterations."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

from ._extras import require
from .datasets import bundled_dataset
from .trainer import TrainResult, Trainer

__all__ = ["TrainResult", "bundled_dataset", "train", "resume", "plot_losses"]


def train(
    dataroot: Optional[str] = None,
    name: str = "experiment",
    mode: str = "global",
    *,
    progress: Optional[bool] = None,
    callback: Optional[Callable] = None,
    **options,
) -> TrainResult:
    """Trains CUT / QS-Attn on an unaligned dataset (``trainA/``, ``trainB/``; ``testA/``,
    ``testB/`` for sample grids).

    Args:
        dataroot: the dataset folder; default: :func:`bundled_dataset`.
        name: run name; outputs go to ``<checkpoints_dir>/<name>/`` (``latest.safetensors``,
            ``epoch_<n>.safetensors``, ``loss_log.jsonl``, ``samples/``, ``tensorboard/``).
        mode: ``"global"`` (default), ``"local"``, ``"local_global"``, ``"cross"`` or ``"none"``
            (plain CUT, random patches only).
        progress: show progress (iterations, rate, time left, losses) on stderr: ``None`` when
            stderr is a terminal or a notebook, ``True`` always, ``False`` never.
        callback: called after every iteration with a :class:`qs_attn.StepInfo` (``step``,
            ``epoch``, ``losses``, ``images()``); return ``False`` to stop.
        **options: the reference's option names where they exist — ``n_epochs``,
            ``n_epochs_decay``, ``batch_size``, ``load_size``, ``crop_size``, ``num_patches``,
            ``nce_T``, ``lambda_NCE``, ``lambda_GAN``, ``nce_idt``, ``nce_layers``, ``gan_mode``,
            ``lr``, ``beta1``, ``beta2``, ``ngf``, ``ndf``, ``n_blocks``, ``init_type``,
            ``init_gain``, ``flip_equivariance``, ``no_flip``, ``direction``, ``netF_nc`` — and
            ours: ``local_layout``, ``window``, ``qs_slots``, ``per_image_ids``, ``lambda_gp``,
            ``device`` ("cpu", "cuda", "cuda:N"), ``precision`` ("fp32", or "bf16": G and D
            under bfloat16 autocast, F and the NCE loss in float32), ``channels_last``,
            ``cudnn_benchmark`` (default on), ``seed``, ``max_iters``, ``checkpoints_dir``,
            ``print_freq``, ``display_freq``, ``save_latest_freq``, ``save_epoch_freq``,
            ``num_samples``, ``num_threads``, ``on_nonfinite`` ("stop": a NaN/inf loss or gradient
            is an error; "skip": that update is skipped), ``overwrite`` (replace an earlier run
            of the same name instead of refusing); and the parts of :class:`qs_attn.Trainer`
            (``generator``, ``discriminator``, ``projector``, ``gan_loss``, ``nce_loss``,
            ``callbacks``, ``epoch_callbacks``). Unknown or impossible options raise
            ``ValueError``.

    Ctrl-C stops after the current iteration and saves the latest checkpoint.
    """
    callbacks = list(options.pop("callbacks", ())) + ([callback] if callback is not None else [])
    trainer = Trainer(dataroot, name, mode, progress=progress, callbacks=callbacks, **options)
    return trainer.fit()


def resume(checkpoint: str, *, progress: Optional[bool] = None, callback: Optional[Callable] = None, **overrides) -> TrainResult:
    """Continues a run from its checkpoint exactly where it stopped (same data order, patch
    ids and optimiser state). ``overrides`` may change e.g. ``n_epochs``, ``max_iters``,
    ``device``; a run trained with supplied networks needs them again (``generator=`` …)."""
    callbacks = list(overrides.pop("callbacks", ())) + ([callback] if callback is not None else [])
    return Trainer.resume(checkpoint, progress=progress, callbacks=callbacks, **overrides).fit()


def plot_losses(log: str, out_png: str) -> Path:
    """Plots the losses of a run's ``loss_log.jsonl`` into a PNG (needs the ``plot`` extra)."""
    require("matplotlib", "plot_losses")
    # a Figure without pyplot: no backend switch, so the caller's (a notebook's inline) stays
    from matplotlib.figure import Figure
    rows = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{log} has no logged iterations yet")
    iters = [r["iter"] for r in rows]
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for key in ("D", "G_GAN"):
        axes[0].plot(iters, [r["losses"].get(key) for r in rows], label=key)
    for key in ("NCE", "NCE_Y"):
        if key in rows[0]["losses"]:
            axes[1].plot(iters, [r["losses"][key] for r in rows], label=key)
    for ax, title in zip(axes, ("adversarial", "contrastive (PatchNCE)")):
        ax.set_xlabel("iteration")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    return Path(out_png)
