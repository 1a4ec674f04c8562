"""Evaluation during training: every ``eval_freq`` iterations the current generator translates
the test split and is scored (FID, KID, L1/SSIM: :func:`qs_attn.evaluate.evaluate_generator`);
the run keeps ``best.safetensors`` (lowest FID so far, a full training checkpoint) beside
``latest.safetensors``, logs every evaluation to ``eval_log.jsonl`` and reports best and last at
the end, so the gap between the best and the last checkpoint is visible."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import metrics
from .evaluate import evaluate_generator


class TrainingEvaluator:
    """Runs the evaluations of one run (on rank 0 of a distributed run only)."""

    def __init__(self, run_dir: Path, every: int, data: Optional[Path], size: int,
                 max_images: Optional[int] = None, kid_subsets: int = 100):
        if every < 1:
            raise ValueError(f"eval_freq must be a positive number of iterations, got {every}")
        metrics.inception_weights_path()  # fails now, with the install command, if the extra is missing
        self.run_dir, self.every, self.data, self.size = run_dir, every, data, size
        self.max_images, self.kid_subsets = max_images, kid_subsets
        self.log = run_dir / "eval_log.jsonl"
        self.evaluations: List[Dict[str, Any]] = []
        if self.log.exists():  # a resumed run: its earlier evaluations count for "best"
            self.evaluations = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    @property
    def best(self) -> Optional[Dict[str, Any]]:
        return min(self.evaluations, key=lambda e: e["fid"], default=None)

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
        previous_best = self.best
        scores = dict(scores, iter=iteration, epoch=trainer.epoch)
        self.evaluations.append(scores)
        if previous_best is None or scores["fid"] < previous_best["fid"]:
            trainer.save(self.run_dir / "best.safetensors")
            scores["best"] = True
        with open(self.log, "a") as f:
            f.write(json.dumps(scores) + "\n")
        return scores

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
