"""Reference scores for a paired test split, with the protocol of :mod:`qs_attn.evaluate`, to
read a trained model's scores against:

- :func:`identity_scores` — the untranslated source images scored as if they were translations
  (FID/KID against the target test split, L1/SSIM against the true counterparts): a model has
  translated something only where it beats these;
- :func:`greyscale_scores` — the source images with their colour removed, scored the same way:
  what a "translator" that only drops colour reaches, which separates the colour part of a
  colour → monochrome gap from the drawing-style part;
- :func:`real_vs_real_scores` — held-out real target-domain images (random subsets of the
  target *training* split, as many as the test split has) scored against the target test
  split: the best FID/KID a perfect translator could expect at this sample size.

A benchmark separates translation from no translation only when the identity scores are far
worse than the real-vs-real ones (``docs/results.md``).
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from . import metrics
from .evaluate import evaluate_generator, real_features

PathLike = Union[str, Path]


#: Half an 8-bit level in [−1, 1] units. The evaluation stores a translation as 8-bit values by
#: truncation (as the PNG writer does), and a decoded level ``v/127.5 − 1`` can land a float
#: error below ``v``; the baselines return their images half a level up so that exactly their
#: own 8-bit values are scored.
HALF_LEVEL = 1 / 255


def identity_scores(data: PathLike, size: Optional[int] = 64, device: str = "cpu",
                    cache_dir: Optional[PathLike] = None) -> Dict[str, Any]:
    """:func:`qs_attn.evaluate.evaluate_generator` of the identity map on ``data``'s test split."""
    return evaluate_generator(lambda x: x + HALF_LEVEL, data, size=size, device=device, cache_dir=cache_dir)


#: ITU-R BT.601 luma weights of R, G, B (Pillow's ``convert("L")``).
LUMA = (0.299, 0.587, 0.114)


def greyscale(images: torch.Tensor) -> torch.Tensor:
    """``N×3×H×W`` images in [−1, 1] as 8-bit greyscale in all three channels: the luma
    (:data:`LUMA`) of their 8-bit values rounded to a level, as Pillow's ``convert("L")``, and
    raised by :data:`HALF_LEVEL`."""
    weights = torch.tensor(LUMA, dtype=torch.float64, device=images.device).view(1, 3, 1, 1)
    levels = ((images.double() + 1) * 127.5 * weights).sum(1, keepdim=True).round()
    return (levels / 127.5 - 1 + HALF_LEVEL).to(images.dtype).expand_as(images).contiguous()


def greyscale_scores(data: PathLike, size: Optional[int] = 64, device: str = "cpu",
                     cache_dir: Optional[PathLike] = None) -> Dict[str, Any]:
    """:func:`qs_attn.evaluate.evaluate_generator` of :func:`greyscale` on ``data``'s test split."""
    return evaluate_generator(greyscale, data, size=size, device=device, cache_dir=cache_dir)


def real_vs_real_scores(data: PathLike, size: Optional[int] = 64, draws: int = 5, seed: int = 0,
                        kid_subsets: int = 100, device: str = "cpu",
                        cache_dir: Optional[PathLike] = None) -> Dict[str, Any]:
    """FID and KID of ``draws`` random subsets of ``trainB`` (each the size of ``testB``, drawn
    with ``torch.Generator().manual_seed(seed)``) against ``testB``. Returns the mean and
    standard deviation over the draws of ``fid`` and ``kid_mean`` (``fid_std``, ``kid_std``:
    spread over draws), the per-draw values, and the counts."""
    test = real_features(data, "testB", size, device=device, cache_dir=cache_dir)
    train = real_features(data, "trainB", size, device=device, cache_dir=cache_dir)
    n = len(test)
    if len(train) < n:
        raise ValueError(f"{data}: trainB has {len(train)} images, fewer than testB's {n}")
    subset = metrics.default_kid_subset_size(n, n)
    g = torch.Generator().manual_seed(seed)
    fids, kids = [], []
    for _ in range(draws):
        held_out = train[torch.randperm(len(train), generator=g)[:n]]
        fids.append(metrics.fid_from_features(held_out, test))
        kids.append(metrics.kernel_inception_distance(held_out, test, kid_subsets, subset, seed)[0])
    spread = (lambda v: statistics.stdev(v)) if draws > 1 else (lambda v: 0.0)
    return {"fid": statistics.fmean(fids), "fid_std": spread(fids), "kid_mean": statistics.fmean(kids),
            "kid_std": spread(kids), "fids": fids, "kids": kids, "num_images": n, "draws": draws,
            "kid_subset_size": subset}
