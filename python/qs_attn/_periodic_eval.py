"""Evaluation during training: every ``eval_freq`` iterations the current generator translates
the test split and is scored (FID, KID, L1/SSIM: :func:`qs_attn.evaluate.evaluate_generator`);
the run keeps ``best.safetensors`` (lowest FID so far, a full training checkpoint) beside
``latest.safetensors``, logs every evaluation to ``eval_log.jsonl`` and reports best and last at
the end, so the gap between the best and the last checkpoint is visible.

A resumed run's history is the log up to its checkpoint's iteration: evaluations of a
continuation that resuming from an earlier checkpoint discards are dropped from the log (when
the run starts, with the loss log's rows: ``src/train/run_dir.rs``), and a ``best.safetensors``
saved by such a continuation is kept aside as ``best_discarded_iter<N>.safetensors`` (nothing
is deleted) before the first new evaluation.
``best.safetensors`` always holds the last evaluation flagged ``best`` in the log; when a
discarded continuation had overwritten it, "best" restarts at the resume point."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import metrics
from .evaluate import _checkpoint_info, evaluate_generator


class TrainingEvaluator:
    """Runs the evaluations of one run (on rank 0 of a distributed run only)."""

    def __init__(self, run_dir: Path, every: int, data: Optional[Path], size: int,
                 max_images: Optional[int] = None, kid_subsets: int = 100, start: int = 0):
        """``start``: the iteration the run starts from (its checkpoint's when resumed, else 0)."""
        if every < 1:
            raise ValueError(f"eval_freq must be a positive number of iterations, got {every}")
        metrics.inception_weights_path()  # fails now, with the install command, if the extra is missing
        self.run_dir, self.every, self.data, self.size = run_dir, every, data, size
        self.max_images, self.kid_subsets = max_images, kid_subsets
        self.log = run_dir / "eval_log.jsonl"
        self.best_file = run_dir / "best.safetensors"
        logged = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()] if self.log.exists() else []
        # the log on disk is trimmed to `start` only once the run starts (it may still be refused)
        self.evaluations: List[Dict[str, Any]] = [e for e in logged if e["iter"] <= start]
        flagged = [e for e in self.evaluations if e.get("best")]
        self.best = flagged[-1] if flagged and flagged[-1]["iter"] == checkpoint_iteration(self.best_file) else None

    def due(self, iteration: int) -> bool:
        return iteration % self.every == 0

    def evaluated(self, iteration: int) -> bool:
        return any(e["iter"] == iteration for e in self.evaluations)

    def __call__(self, trainer, iteration: int) -> Dict[str, Any]:
        """Scores the trainer's current generator; saves ``best.safetensors`` on a new best."""
        with trainer.averaged_weights():  # the generator that samples and export use
            scores = evaluate_generator(trainer.G, self.data, size=self.size, device=trainer.device,
                                        max_images=self.max_images, kid_subsets=self.kid_subsets,
                                        cache_dir=self.run_dir / "eval_cache")
        self._set_aside_discarded_best()
        scores = dict(scores, iter=iteration, epoch=trainer.epoch)
        self.evaluations.append(scores)
        if self.best is None or scores["fid"] < self.best["fid"]:
            trainer.save(self.best_file)
            scores["best"] = True
            self.best = scores
        with open(self.log, "a") as f:
            f.write(json.dumps(scores) + "\n")
        return scores

    def _set_aside_discarded_best(self) -> None:
        """Moves aside a ``best.safetensors`` that a discarded continuation saved (moved now,
        not when the run was set up, because until the run starts it may still be refused)."""
        saved_at = checkpoint_iteration(self.best_file)
        if saved_at is not None and (self.best is None or saved_at != self.best["iter"]):
            aside = self.run_dir / f"best_discarded_iter{saved_at}.safetensors"
            os.replace(self.best_file, aside)
            print(f"qs_attn: best.safetensors came from iterations this resumed run discards; kept as {aside}",
                  file=sys.stderr)

    def report(self) -> str:
        """One line: the best and the last evaluation."""
        best, last = self.best, self.evaluations[-1] if self.evaluations else None
        if last is None:
            return "no evaluation ran"
        return (f"best FID {best['fid']:.2f} at iteration {best['iter']} (best.safetensors); "
                f"last FID {last['fid']:.2f} at iteration {last['iter']}")

    def announce(self, scores: Dict[str, Any]) -> None:
        extra = "" if scores.get("l1") is None else f", L1 {scores['l1']:.4f}, SSIM {scores['ssim']:.4f}"
        print(f"\nqs_attn: iteration {scores['iter']}: FID {scores['fid']:.2f}, "
              f"KID {scores['kid_mean']:.4f} ± {scores['kid_std']:.4f}{extra}"
              f"{' (new best)' if scores.get('best') else ''}", file=sys.stderr)


def checkpoint_iteration(path: Path) -> Optional[int]:
    """The iteration a checkpoint file was saved at; ``None`` when there is no such file."""
    return _checkpoint_info(path)["iteration"] if path.exists() else None
