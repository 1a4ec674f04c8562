"""The trainer object: the Rust training loop driven from Python one iteration at a time, with
any part replaced by the user's PyTorch code.

The Rust side runs each iteration (data loading, D step, G + F step, Adam, logs, sample grids,
checkpoints); between iterations Python runs the callbacks, evaluation and progress display.
User-supplied parts are called from inside the Rust step through pyo3 (see
``src/python/parts.rs`` for the call conventions, the reference's).
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Union

import torch
from torch import nn

from . import _ema, _native
from . import distributed as dist_mod
from ._extras import require
from ._periodic_eval import TrainingEvaluator
from ._progress import ProgressDisplay, wanted
from ._tensorboard import TensorBoardLog
from ._stopping import TerminationRequest, save_after_failure
from .datasets import bundled_dataset
from .models import Discriminator, Generator
from .nn import PatchSampleF

__all__ = ["StepInfo", "StopTraining", "TrainResult", "Trainer"]


class StopTraining(Exception):
    """Raise from a callback to stop training after the current iteration (the latest
    checkpoint is written, as on Ctrl-C)."""


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
    #: In-training evaluations (``eval_freq``): one dict per evaluation, and the best one.
    evaluations: Optional[List[dict]] = None
    best: Optional[dict] = None


class StepInfo:
    """What a callback receives after an iteration: ``step`` (iterations so far), ``epoch``,
    ``epoch_iter``, ``iters_per_epoch``, ``last_epoch``, ``losses`` (this iteration's loss terms
    as floats, read from the device when first accessed) and :meth:`images`."""

    def __init__(self, trainer: "Trainer", progress: dict):
        self.trainer = trainer
        self.step: int = progress["total_iters"]
        self.epoch: int = progress["epoch"]
        self.epoch_iter: int = progress["epoch_iter"]
        self.iters_per_epoch: int = progress["iters_per_epoch"]
        self.last_epoch: int = progress["last_epoch"]
        self._losses: Optional[Dict[str, float]] = progress["losses"]

    @property
    def losses(self) -> Dict[str, float]:
        if self._losses is None:
            self._losses = self.trainer._native.last_losses() or {}
        return self._losses

    def images(self) -> Dict[str, torch.Tensor]:
        """This iteration's images (detached, in [−1, 1]): ``real_A``, ``fake_B``, ``real_B``
        and ``idt_B`` (with the identity NCE term)."""
        return self.trainer.visuals()

    def __repr__(self) -> str:
        return f"StepInfo(step={self.step}, epoch={self.epoch}, epoch_iter={self.epoch_iter}/{self.iters_per_epoch})"


Callback = Callable[[StepInfo], object]


def _parts(generator, discriminator, projector, gan_loss, nce_loss, device: str) -> Dict[str, object]:
    """The user-supplied parts for the native trainer; modules are moved to the device."""
    out: Dict[str, object] = {}
    for key, part, kind in (("G", generator, nn.Module), ("D", discriminator, nn.Module), ("F", projector, nn.Module),
                            ("gan_loss", gan_loss, None), ("nce_loss", nce_loss, None)):
        if part is None:
            continue
        if kind is not None and not isinstance(part, kind):
            raise TypeError(f"{key} must be a torch.nn.Module, got {type(part).__name__}")
        if kind is None and not callable(part):
            raise TypeError(f"{key} must be callable, got {type(part).__name__}")
        if isinstance(part, nn.Module):
            part.to(device).train()
        out[key] = part
    return out


class Trainer:
    """CUT / QS-Attn training, step by step or to the end, with swappable parts.

    Args:
        dataroot, name, mode, **options: as :func:`qs_attn.train`.
        generator: a ``torch.nn.Module`` used instead of the built-in ResNet generator; called
            as the reference's: ``G(x)``, ``G(x, layers=[...], encode_only=True)`` (the NCE
            taps), ``G(x, layers=[...])`` (``(translation, taps)`` of one pass).
        discriminator: a module ``D(x)`` → patch logits.
        projector: a module with the call of :class:`qs_attn.nn.PatchSampleF` (the
            reference's ``netF``); its layers may be created on the first call.
        gan_loss: ``gan_loss(prediction, target_is_real: bool)`` → scalar tensor.
        nce_loss: ``nce_loss(queries, keys, num_images)`` → per-row losses or a scalar (the
            mean is taken, weighted by ``lambda_NCE`` and averaged over the layers).
        callbacks: called after every iteration with a :class:`StepInfo`; returning ``False``
            or raising :class:`StopTraining` stops training.
        epoch_callbacks: the same, after the last iteration of each epoch.
        progress: show progress on stderr (``qs_attn._progress``): ``None`` when stderr is a
            terminal or a notebook, ``True`` always, ``False`` never.
        distributed: train as one process of a ``torchrun`` launch (see
            :mod:`qs_attn.distributed`): data shards, gradient averaging, rank 0 writes. Default:
            on when ``WORLD_SIZE`` > 1. ``batch_size`` is per process. Callbacks run on every
            rank (``StepInfo.trainer.rank``) and must stop on all ranks alike.
        dist_timeout: seconds a collective may wait for the other processes before failing.
        eval_freq: evaluate every this many iterations (and at the end) on the test split:
            FID, KID and, with paired ground truth, L1 / SSIM (needs the ``eval`` extra); keeps
            ``best.safetensors`` (lowest FID) beside ``latest.safetensors``, logs to
            ``eval_log.jsonl``; the result reports the best and the last evaluation.
        eval_data: the folder with ``testA/`` / ``testB/`` to evaluate on (default: ``dataroot``).
        eval_max_images: evaluate on the first N test images only (quick checks; default all).

    The parameters of supplied modules are trained by the trainer's Adam (moved to the
    training device first); their ``state_dict`` goes into the checkpoints.
    """

    def __init__(self, dataroot: Optional[Union[str, Path]] = None, name: str = "experiment", mode: str = "global", *,
                 generator: Optional[nn.Module] = None, discriminator: Optional[nn.Module] = None,
                 projector: Optional[nn.Module] = None, gan_loss: Optional[Callable] = None,
                 nce_loss: Optional[Callable] = None, callbacks: Iterable[Callback] = (),
                 epoch_callbacks: Iterable[Callback] = (), progress: Optional[bool] = None,
                 distributed: Optional[bool] = None, dist_timeout: float = 300.0,
                 eval_freq: Optional[int] = None, eval_data: Optional[Union[str, Path]] = None,
                 eval_max_images: Optional[int] = None, **options):
        config = dict(options, name=name, mode=mode)
        config["dataroot"] = str(dataroot if dataroot is not None else bundled_dataset())
        rank_world = self._join(config, distributed, dist_timeout)
        parts = _parts(generator, discriminator, projector, gan_loss, nce_loss, config.get("device", "cpu"))
        self._setup(_native.Trainer(_options_json(config), parts), parts, callbacks, epoch_callbacks, progress, rank_world)
        self._setup_eval(eval_freq, eval_data, eval_max_images)

    @staticmethod
    def _join(config: dict, distributed: Optional[bool], timeout: float):
        """Joins the torchrun process group when distributed (setting the process's device in
        ``config``); ``(rank, world_size)`` or ``None``."""
        if distributed is None:
            distributed = dist_mod.launched_by_torchrun()
        if not distributed:
            return None
        rank, world, config["device"] = dist_mod.setup(config.get("device", "cpu"), timeout)
        return rank, world

    @classmethod
    def resume(cls, checkpoint: Union[str, Path], *, generator: Optional[nn.Module] = None,
               discriminator: Optional[nn.Module] = None, projector: Optional[nn.Module] = None,
               gan_loss: Optional[Callable] = None, nce_loss: Optional[Callable] = None,
               callbacks: Iterable[Callback] = (), epoch_callbacks: Iterable[Callback] = (),
               progress: Optional[bool] = None, distributed: Optional[bool] = None, dist_timeout: float = 300.0,
               eval_freq: Optional[int] = None, eval_data: Optional[Union[str, Path]] = None,
               eval_max_images: Optional[int] = None, **overrides) -> "Trainer":
        """Continues a run from its checkpoint exactly where it stopped. A run trained with a
        supplied network needs the same kind of module again. A checkpoint of a distributed run
        resumes in one process or on any number of processes (same images seen, rounded down
        to whole global batches)."""
        config = {"device": overrides.get("device") or
                  json.loads(_native.read_checkpoint_metadata(str(checkpoint))["config"]).get("device", "cpu")}
        rank_world = cls._join(config, distributed, dist_timeout)
        if rank_world is not None:
            overrides["device"] = config["device"]
        parts = _parts(generator, discriminator, projector, gan_loss, nce_loss, config["device"])
        native = _native.Trainer.resume(str(checkpoint), _options_json(overrides) if overrides else None, parts)
        self = cls.__new__(cls)
        self._setup(native, parts, callbacks, epoch_callbacks, progress, rank_world)
        self._setup_eval(eval_freq, eval_data, eval_max_images)
        return self

    def _setup(self, native, parts, callbacks, epoch_callbacks, progress, rank_world) -> None:
        #: ``(rank, world_size)``; ``(0, 1)`` in a single process.
        self.rank, self.world_size = rank_world or (0, 1)
        if rank_world is not None:
            dist_mod.broadcast_states({net: native.state_dict(net) for net in ("G", "D", "F")})
            native.distribute(self.rank, self.world_size, dist_mod.GradientAverager())
        progress = wanted(progress) and self.rank == 0
        self._native = native
        self._parts = parts
        self.config: dict = json.loads(native.config_json)
        self.callbacks: List[Callback] = list(callbacks)
        self.epoch_callbacks: List[Callback] = list(epoch_callbacks)
        self.progress = progress
        #: The logged loss rows (every ``print_freq`` iterations): ``{"iter", "epoch", **losses}``.
        self.losses: List[Dict[str, float]] = []
        self._views: Dict[str, nn.Module] = {}

    def _setup_eval(self, every: Optional[int], data, max_images: Optional[int]) -> None:
        """In-training evaluation (rank 0 only); see :mod:`qs_attn._periodic_eval`."""
        self._eval = None
        if every is None or self.rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._eval = TrainingEvaluator(self.run_dir, int(every), Path(data or self.config["dataroot"]),
                                       int(self.config["crop_size"]), max_images, start=self.total_iters)

    @property
    def evaluations(self) -> List[dict]:
        """The in-training evaluations so far (``eval_freq``), oldest first."""
        return [] if self._eval is None else list(self._eval.evaluations)

    def _evaluate(self) -> None:
        scores = self._eval(self, self.total_iters)
        if self.progress:
            self._eval.announce(scores)

    # -- the networks -------------------------------------------------------------------------

    @property
    def G(self) -> nn.Module:
        """The generator: the supplied module, or the built-in one as a module sharing the
        trainer's tensors."""
        if "G" in self._parts:
            return self._parts["G"]
        if "G" not in self._views:
            self._views["G"] = Generator._of_trainer(self._native, int(self.config["crop_size"]))
        return self._views["G"]

    @property
    def D(self) -> nn.Module:
        """The discriminator (supplied, or the built-in one sharing the trainer's tensors)."""
        if "D" in self._parts:
            return self._parts["D"]
        if "D" not in self._views:
            self._views["D"] = Discriminator._of_trainer(self._native)
        return self._views["D"]

    @property
    def F(self) -> nn.Module:
        """The projector (supplied, or a :class:`qs_attn.nn.PatchSampleF` holding the
        trainer's own MLP tensors)."""
        if "F" in self._parts:
            return self._parts["F"]
        if "F" not in self._views:
            self._views["F"] = PatchSampleF._of_trainer(self._native, self.config)
        return self._views["F"]

    # -- training -----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """The training device (every network, built-in or supplied, is on it)."""
        return torch.device(self.config["device"])

    @property
    def total_iters(self) -> int:
        return self._native.total_iters

    @property
    def epoch(self) -> int:
        return self._native.epoch

    @property
    def run_dir(self) -> Path:
        return Path(self._native.run_dir)

    @property
    def finished(self) -> bool:
        """The schedule (epochs, or ``max_iters``) is complete."""
        return self._native.finished

    def _advance(self) -> Optional[dict]:
        """One iteration; runs the callbacks. ``None`` when the schedule is complete."""
        p = self._native.advance()
        if p is None:
            return None
        if p["losses"]:
            self.losses.append(dict(p["losses"], iter=p["total_iters"], epoch=p["epoch"]))
        if self._eval is not None and self._eval.due(p["total_iters"]):
            self._evaluate()
        info = None
        for callbacks, due in ((self.callbacks, True), (self.epoch_callbacks, p["epoch_end"])):
            for cb in callbacks if due else ():
                info = info or StepInfo(self, p)
                if cb(info) is False:
                    raise StopTraining(f"{getattr(cb, '__name__', cb)!s} returned False")
        return p

    def step(self) -> Dict[str, float]:
        """Trains one iteration of the schedule and returns its losses (floats). Raises
        ``RuntimeError`` once the schedule is complete."""
        if self._advance() is None:
            raise RuntimeError("the training schedule is complete (raise n_epochs or max_iters to go on)")
        return self._native.last_losses()

    def fit(self, iterations: Optional[int] = None) -> TrainResult:
        """Trains ``iterations`` more iterations (default: to the end of the schedule), then
        writes a sample grid and the latest checkpoint. Ctrl-C, SIGTERM or :class:`StopTraining`
        stop early, with the checkpoint written; after an error the checkpoint is written before
        the error propagates (see :mod:`qs_attn._stopping`)."""
        line = ProgressDisplay(self.progress, self.config.get("max_iters"))
        events = TensorBoardLog(self.run_dir if self.rank == 0 else None)
        stopped_by = None
        done = 0
        sigterm = TerminationRequest.install()
        try:
            while iterations is None or done < iterations:
                p = self._advance()
                if p is None:
                    break
                done += 1
                line.update(p)
                events.update(p)
                if sigterm.stop_now(self.world_size, self.device):
                    stopped_by = sigterm.received
                    break
        except (KeyboardInterrupt, StopTraining) as e:
            stopped_by = repr(e)
        except Exception:
            save_after_failure(self)
            raise
        finally:
            sigterm.restore()
            line.close()
        if self._eval is not None and stopped_by is None and self.total_iters and not self._eval.evaluated(self.total_iters):
            self._evaluate()  # the last checkpoint is always scored too
        summary = self._native.finish(stopped_by is not None)
        events.close(summary["samples"])
        if self._eval is not None and self.progress:
            print(f"qs_attn: {self._eval.report()}", file=sys.stderr)
        if stopped_by is not None and self.rank == 0:
            print(f"qs_attn: training stopped; checkpoint saved to {summary['latest_checkpoint']}", file=sys.stderr)
        return TrainResult(
            run_dir=Path(summary["run_dir"]),
            checkpoint=Path(summary["latest_checkpoint"]) if summary["latest_checkpoint"] else None,
            samples=[Path(s) for s in summary["samples"]],
            log=Path(summary["log"]),
            final_losses=dict(summary["final_losses"]),
            total_iters=int(summary["total_iters"]),
            interrupted=bool(summary["interrupted"]),
            stopped_by=stopped_by,
            evaluations=None if self._eval is None else self.evaluations,
            best=None if self._eval is None else self._eval.best,
        )

    def visuals(self) -> Dict[str, torch.Tensor]:
        """The images of the last iteration (detached, in [−1, 1])."""
        v = self._native.visuals()
        if v is None:
            raise RuntimeError("no iteration has run yet")
        return v

    def samples(self, n: int = 4, as_pil: bool = False):
        """A grid of test translations (rows: source | translation | target-domain image |
        identity), from the first ``n`` images of testA/testB (or trainA/trainB): a ``3×H×W``
        tensor in [0, 1], or a PIL image with ``as_pil`` (needs the ``plot`` extra)."""
        rows = [torch.cat([_pad(image) for image in row], dim=2) for row in self._native.sample_rows(n)]
        grid = ((torch.cat(rows, dim=1).cpu() + 1) / 2).clamp(0, 1)
        if not as_pil:
            return grid
        Image = require("PIL.Image", "samples(as_pil=True)")
        return Image.fromarray((grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())

    def averaged_weights(self):
        """A context in which ``G`` holds the moving average of its weights (``ema_decay``;
        without it, nothing changes): ``with trainer.averaged_weights(): trainer.G(x)``."""
        return _ema.averaged_weights(self._native)

    def save(self, path: Union[str, Path]) -> Path:
        """Writes a training checkpoint (weights, optimiser states, position) to ``path``."""
        self._native.save(str(path))
        return Path(path)


def _options_json(options: dict) -> str:
    """The options as JSON for the native trainer. JSON has no NaN or infinity: such a float
    is sent as its text, which the trainer refuses, naming the option."""
    def encode(value):
        return str(value) if isinstance(value, float) and not math.isfinite(value) else value

    return json.dumps({key: encode(value) for key, value in options.items()})


def _pad(img: torch.Tensor, gap: int = 2) -> torch.Tensor:
    """``img`` (3×H×W in [−1, 1]) with a white border of ``gap`` pixels."""
    return nn.functional.pad(img, (gap, gap, gap, gap), value=1.0)
