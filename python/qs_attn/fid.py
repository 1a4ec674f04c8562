"""FID and KID between two image folders, as pytorch-fid / clean-fid / torch-fidelity offer, with
the protocol of :mod:`qs_attn.metrics` (the TensorFlow Inception-v3 weights, offline; the ``eval``
extra)::

    qs_attn.fid.folder_distance("real/", "generated/")    # {"fid", "kid_mean", "kid_std", ...}
    qs-attn fid real/ generated/ --json scores.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from . import metrics
from .evaluate import real_features

__all__ = ["folder_distance"]

PathLike = Union[str, Path]


def folder_distance(
    dir_a: PathLike,
    dir_b: PathLike,
    *,
    size: Optional[int] = None,
    device: Union[str, torch.device] = "cpu",
    batch_size: int = 16,
    max_images: Optional[int] = None,
    kid_subsets: int = 100,
    kid_subset_size: Optional[int] = None,
    seed: int = 0,
    cache_dir: Optional[PathLike] = None,
) -> Dict[str, Any]:
    """FID and KID (mean, std over ``kid_subsets`` random subsets) between the images of two
    folders (every decodable image file, in name order; the first ``max_images`` of each).

    Args:
        size: resize to ``size × size`` (bicubic) before the protocol's own resize to 299;
            ``None`` keeps each image's own size.
        kid_subset_size: rows per KID subset (default: 1000, or the smaller folder's count).
        cache_dir: keep each folder's features on disk here (keyed by files, sizes, times).

    Raises:
        metrics.EvalExtraMissingError: the Inception weights are not installed.
        FileNotFoundError: a folder does not exist. ValueError: fewer than 2 images.
    """
    metrics.inception_weights_path()  # fail before reading any image
    folders = [Path(dir_a), Path(dir_b)]
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder")
    feats = []
    for folder in folders:
        f = real_features(folder.parent, folder.name, size, max_images=max_images, device=device,
                          batch_size=batch_size, cache_dir=cache_dir)
        if len(f) < 2:
            raise ValueError(f"{folder} has {len(f)} image(s); FID needs at least 2 (a covariance)")
        feats.append(f)
    subset = kid_subset_size or metrics.default_kid_subset_size(len(feats[0]), len(feats[1]))
    kid_mean, kid_std = metrics.kernel_inception_distance(feats[0], feats[1], kid_subsets, subset, seed)
    return {
        "fid": metrics.fid_from_features(feats[0], feats[1]),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "num_a": len(feats[0]),
        "num_b": len(feats[1]),
        "kid_subsets": kid_subsets,
        "kid_subset_size": subset,
        "size": size,
    }


def add_command(sub: "argparse._SubParsersAction") -> None:
    """``qs-attn fid DIR_A DIR_B``."""
    p = sub.add_parser("fid", help="FID and KID between two image folders")
    p.add_argument("dir_a")
    p.add_argument("dir_b")
    p.add_argument("--size", type=int, default=None, help="resize to size x size first (default: native size)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-images", type=int, default=None, help="only the first N images per folder")
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--kid-subset-size", type=int, default=None)
    p.add_argument("--cache-dir", default=None, help="cache each folder's features on disk here")
    p.add_argument("--json", default=None, help="also write the scores as JSON here")


def run_command(args: argparse.Namespace) -> int:
    try:
        scores = folder_distance(args.dir_a, args.dir_b, size=args.size, device=args.device,
                                 batch_size=args.batch_size, max_images=args.max_images,
                                 kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size,
                                 cache_dir=args.cache_dir)
    except metrics.EvalExtraMissingError as e:
        print(f"qs-attn: error: {e}", file=sys.stderr)
        return 2
    print(f"FID {scores['fid']:.4f}  KID {scores['kid_mean']:.6f} ± {scores['kid_std']:.6f}  "
          f"({scores['num_a']} vs {scores['num_b']} images)")
    if args.json:
        Path(args.json).write_text(json.dumps(scores, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
