"""Training from Python: ``qs_attn.train(...)`` runs the Rust trainer (networks, loop, data
loading, checkpoints all in Rust) and reports progress here (progress line, TensorBoard)."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from . import _native

__all__ = ["TrainResult", "bundled_dataset", "train", "resume", "plot_losses"]


def bundled_dataset() -> Path:
    """The small real two-domain set shipped with the package: emoji drawn by Google (Noto,
    domain A) and by EmojiOne (domain B), 64x64, 977 training and 108 test pairs (file names
    pair them for evaluation; training is unpaired). Licences in its LICENSES.md."""
    return Path(__file__).resolve().parent / "data" / "emoji"


@dataclass
class TrainResult:
    """What a run produced. ``checkpoint`` is the latest checkpoint (resume from it)."""

    run_dir: Path
    checkpoint: Optional[Path]
    samples: List[Path]
    log: Path
    final_losses: Dict[str, float]
    total_iters: int
    interrupted: bool
    stopped_by: Optional[str] = None


class _ProgressLine:
    """One self-overwriting status line on stderr, and TensorBoard scalars when available."""

    def __init__(self, enabled: bool, run_dir: Path, user_callback: Optional[Callable[[dict], object]]):
        self.enabled = enabled
        self.user_callback = user_callback
        self.start = time.perf_counter()
        self.start_iter: Optional[int] = None
        self.losses: Dict[str, float] = {}
        self.writer = None
        try:  # TensorBoard event files when tensorboard is installed
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        except Exception:
            self.writer = None

    def __call__(self, p: dict) -> bool:
        if self.start_iter is None:
            self.start_iter = p["total_iters"] - 1
        if p["losses"]:
            self.losses = p["losses"]
            if self.writer is not None:
                for k, v in p["losses"].items():
                    self.writer.add_scalar(f"loss/{k}", v, p["total_iters"])
        if self.enabled:
            rate = (p["total_iters"] - self.start_iter) / max(time.perf_counter() - self.start, 1e-9)
            shown = " ".join(f"{k} {v:.3f}" for k, v in sorted(self.losses.items()))
            sys.stderr.write(
                f"\repoch {p['epoch']}/{p['last_epoch']} iter {p['epoch_iter']}/{p['iters_per_epoch']} "
                f"(total {p['total_iters']}) | {shown} | {rate:.2f} it/s   "
            )
            sys.stderr.flush()
        if self.user_callback is not None:
            return self.user_callback(p) is not False
        return True

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
        if self.writer is not None:
            self.writer.close()


def _run(trainer: "_native.Trainer", progress: bool, callback) -> TrainResult:
    line = _ProgressLine(progress, Path(trainer.run_dir), callback)
    try:
        summary = trainer.fit(line)
    finally:
        line.close()
    if summary["interrupted"]:
        print(f"qs_attn: training stopped; checkpoint saved to {summary['latest_checkpoint']}", file=sys.stderr)
    return TrainResult(
        run_dir=Path(summary["run_dir"]),
        checkpoint=Path(summary["latest_checkpoint"]) if summary["latest_checkpoint"] else None,
        samples=[Path(s) for s in summary["samples"]],
        log=Path(summary["log"]),
        final_losses=dict(summary["final_losses"]),
        total_iters=int(summary["total_iters"]),
        interrupted=bool(summary["interrupted"]),
        stopped_by=summary.get("stopped_by"),
    )


def train(
    dataroot: Optional[str] = None,
    name: str = "experiment",
    mode: str = "global",
    *,
    progress: bool = True,
    callback: Optional[Callable[[dict], object]] = None,
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
        progress: print a progress line (iteration, losses, it/s) on stderr.
        callback: called after every iteration with a dict (``epoch``, ``epoch_iter``,
            ``total_iters``, ``losses`` on logging iterations); return ``False`` to stop.
        **options: the reference's option names where they exist — ``n_epochs``,
            ``n_epochs_decay``, ``batch_size``, ``load_size``, ``crop_size``, ``num_patches``,
            ``nce_T``, ``lambda_NCE``, ``lambda_GAN``, ``nce_idt``, ``nce_layers``, ``gan_mode``,
            ``lr``, ``beta1``, ``beta2``, ``ngf``, ``ndf``, ``n_blocks``, ``init_type``,
            ``init_gain``, ``flip_equivariance``, ``no_flip``, ``direction``, ``netF_nc`` — and
            ours: ``local_layout``, ``window``, ``qs_slots``, ``per_image_ids``, ``lambda_gp``,
            ``device`` ("cpu", "cuda", "cuda:N"), ``seed``, ``max_iters``, ``checkpoints_dir``,
            ``print_freq``, ``display_freq``, ``save_latest_freq``, ``save_epoch_freq``,
            ``num_samples``, ``num_threads``. Unknown or impossible options raise ``ValueError``.

    Ctrl-C stops after the current iteration and saves the latest checkpoint.
    """
    config = dict(options, name=name, mode=mode)
    config["dataroot"] = str(dataroot if dataroot is not None else bundled_dataset())
    trainer = _native.Trainer(json.dumps(config))
    return _run(trainer, progress, callback)


def resume(checkpoint: str, *, progress: bool = True, callback=None, **overrides) -> TrainResult:
    """Continues a run from its checkpoint exactly where it stopped (same data order, patch
    ids and optimiser state). ``overrides`` may change e.g. ``n_epochs``, ``max_iters``,
    ``device``."""
    trainer = _native.Trainer.resume(str(checkpoint), json.dumps(overrides) if overrides else None)
    return _run(trainer, progress, callback)


def plot_losses(log: str, out_png: str) -> Path:
    """Plots the losses of a run's ``loss_log.jsonl`` into a PNG (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plot_losses needs matplotlib: pip install matplotlib") from e
    rows = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{log} has no logged iterations yet")
    iters = [r["iter"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
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
    plt.close(fig)
    return Path(out_png)
