"""Offline evaluation of a translation model on a dataset's test split: FID and KID against the
real target-domain test images and, where a ground-truth counterpart exists (same file name in
the target split), L1 and SSIM. The metrics and the exact protocol are in
:mod:`qs_attn.metrics` and ``docs/evaluation.md``.

- :func:`evaluate_generator` — any callable mapping an ``N×3×H×W`` batch in [−1, 1] to its
  translation (for evaluations inside a training loop); returns a flat dict of numbers.
- :func:`evaluate` — a checkpoint file or a run folder (``latest`` and ``best``); returns an
  :class:`EvaluationReport` (table, JSON).

The real images' Inception features are cached in memory per (data folder, split, size, image
count, device) — keyed also on the files' names, sizes and modification times — and, given
``cache_dir``, on disk, so repeated evaluations featurise only the translations.
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from . import _native
from . import metrics
from ._ops import check_choice
from .datasets import bundled_dataset
from .models import load_generator

__all__ = ["EvaluationReport", "evaluate", "evaluate_generator", "real_features"]

PathLike = Union[str, Path]
Size = Union[int, str, None]
#: Bumped whenever a protocol change alters features (invalidates disk caches).
PROTOCOL_VERSION = 1
# the (source, target) test folders of each direction
_SPLITS = {"AtoB": ("testA", "testB"), "BtoA": ("testB", "testA")}
_CHECKPOINTS = ("latest", "best")


def protocol(num_subsets: int, subset_size: Optional[int]) -> Dict[str, Any]:
    """The evaluation protocol in words and numbers (stored in every report)."""
    return {
        "version": PROTOCOL_VERSION,
        "inception": f"{metrics.FID_HELPER_REQUIREMENT} default_1.pt (TF FID Inception-v3, 2048-d pool features)",
        "pixels": "8-bit: translations truncated as the PNG writer stores them, real images exact",
        "resize": "TF1 bilinear (align_corners=False, no half-pixel centres) to 299x299 in float",
        "input_range": "v/128 - 1 in [-1, 127/128]",
        "fid": "float64 means and unbiased covariances; tr sqrt via symmetric eigendecomposition",
        "kid": {"kernel": "(x.y/2048 + 1)^3", "estimator": "unbiased MMD^2", "subsets": num_subsets,
                "subset_size": subset_size if subset_size is not None else "min(1000, min(n1, n2) // 2)"},
        "l1": "mean |translation - ground truth| on 8-bit images scaled to [0, 1]",
        "ssim": "Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, data range 1, valid positions, mean over channels",
    }


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def _split_files(data: Path, split: str, max_images: Optional[int]) -> List[Path]:
    folder = data / split
    if not folder.is_dir():
        raise FileNotFoundError(f"{data} has no {split}/ folder (the test split to evaluate on)")
    files = [Path(p) for p in _native.image_files(str(folder))]
    if max_images is not None:
        if max_images < 2:
            raise ValueError(f"max_images must be at least 2 (FID needs a covariance), got {max_images}")
        files = files[:max_images]
    return files


def _load_batches(files: Sequence[Path], size: Optional[int], batch_size: int) -> Iterator[Tuple[List[Path], torch.Tensor]]:
    """Consecutive files as ``N×3×H×W`` batches in [−1, 1] (at most ``batch_size``; a batch
    ends early where the image shape changes, e.g. at native sizes)."""
    paths: List[Path] = []
    images: List[torch.Tensor] = []
    for path in files:
        image = _native.load_image(str(path), size)
        if images and (len(images) == batch_size or image.shape != images[0].shape):
            yield paths, torch.cat(images)
            paths, images = [], []
        paths.append(path)
        images.append(image)
    if images:
        yield paths, torch.cat(images)


def _files_signature(files: Sequence[Path]) -> List[Tuple[str, int, int]]:
    out = []
    for f in files:
        st = f.stat()
        out.append((f.name, st.st_size, st.st_mtime_ns))
    return out


_REAL_FEATURES: Dict[str, torch.Tensor] = {}


def real_features(
    data: PathLike,
    split: str = "testB",
    size: Optional[int] = None,
    *,
    max_images: Optional[int] = None,
    device: Union[str, torch.device] = "cpu",
    batch_size: int = 16,
    cache_dir: Optional[PathLike] = None,
) -> torch.Tensor:
    """Inception features (``n×2048``, float32) of the real images in ``data/split``, loaded
    as for translation (``size × size`` bicubic, or native size when ``size`` is None), cached
    in memory and, with ``cache_dir``, in ``cache_dir/real_features_<key>.pt``."""
    data = Path(data).resolve()
    files = _split_files(data, split, max_images)
    key_fields = {
        "protocol": PROTOCOL_VERSION, "data": str(data), "split": split, "size": size,
        "device": torch.device(device).type, "files": _files_signature(files),
    }
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:24]
    if key in _REAL_FEATURES:
        return _REAL_FEATURES[key]
    disk = Path(cache_dir) / f"real_features_{key}.pt" if cache_dir is not None else None
    if disk is not None and disk.is_file():
        stored = torch.load(disk, map_location="cpu", weights_only=True)
        if stored.get("key") == key:
            _REAL_FEATURES[key] = stored["features"]
            return stored["features"]
    extractor = metrics.inception_features(device)
    feats = torch.cat([extractor(metrics.to_8bit(batch, "round")) for _, batch in _load_batches(files, size, batch_size)])
    _REAL_FEATURES[key] = feats
    if disk is not None:
        disk.parent.mkdir(parents=True, exist_ok=True)
        partial = disk.with_suffix(".tmp")
        torch.save({"key": key, "features": feats}, partial)
        partial.replace(disk)
    return feats


# ---------------------------------------------------------------------------------------------
# Evaluation of a generator callable
# ---------------------------------------------------------------------------------------------


def _resolve_size(generator: Callable, size: Size) -> Optional[int]:
    if size == "crop":
        crop = getattr(generator, "crop_size", None)
        return int(crop) if crop else None
    if size is None or isinstance(size, int):
        return size
    raise ValueError(f"size is 'crop', an int or None, got {size!r}")


def _input_device(generator: Callable, default: Union[str, torch.device]) -> torch.device:
    """Where the generator wants its input: its ``device`` attribute, else the device of its
    first parameter (a ``torch.nn.Module``), else ``default``."""
    found = getattr(generator, "device", None)
    if found is None and isinstance(generator, torch.nn.Module):
        found = next((p.device for p in generator.parameters()), None)
    return torch.device(found if found is not None else default)


def evaluate_generator(
    generator: Callable[[torch.Tensor], torch.Tensor],
    data: Optional[PathLike] = None,
    *,
    direction: str = "AtoB",
    size: Size = "crop",
    max_images: Optional[int] = None,
    batch_size: int = 16,
    device: Union[str, torch.device] = "cpu",
    kid_subsets: int = 100,
    kid_subset_size: Optional[int] = None,
    seed: int = 0,
    cache_dir: Optional[PathLike] = None,
) -> Dict[str, Any]:
    """Translates a dataset's test split with ``generator`` and scores the translations.

    Args:
        generator: maps an ``N×3×H×W`` float32 batch in [−1, 1] to its translation (same
            layout and range), e.g. a :class:`qs_attn.Generator`. Batches are sent to
            ``generator.device`` when it has one, else to the device of its first parameter
            (a ``torch.nn.Module``), else to ``device``. Called under ``torch.no_grad()`` and
            in whatever train/eval mode it is in (as the reference's test script does).
        data: a folder with ``testA/`` and ``testB/`` (default: :func:`qs_attn.bundled_dataset`).
        direction: ``"AtoB"`` translates ``testA`` and compares with ``testB``; ``"BtoA"`` the
            reverse.
        size: ``"crop"`` (default): images resized (bicubic) to ``generator.crop_size`` when it
            has one, else native size; an int: ``size × size``; ``None``: native size (rounded
            to multiples of 4). Real target images are loaded the same way.
        max_images: use only the first ``max_images`` files (sorted) of each split (default:
            all — the protocol; smaller numbers are for quick checks and give higher FID).
        batch_size: images per generator call and per Inception call.
        device: where the Inception network runs (and the generator inputs, see above).
        kid_subsets, kid_subset_size, seed: KID subsets (see
            :func:`qs_attn.metrics.kernel_inception_distance`).
        cache_dir: also cache the real images' features on disk here (e.g. the run folder).

    Returns:
        ``fid``, ``kid_mean``, ``kid_std`` (floats); ``l1``, ``ssim`` (means over the pairs,
        None without pairs); ``num_images`` (translations), ``num_real``, ``num_pairs``
        (translations with a same-named ground truth of the same shape), ``kid_subsets``,
        ``kid_subset_size``, ``size`` (int or None), ``direction``, ``seconds``.

    Raises:
        metrics.EvalExtraMissingError: the Inception weights are not installed.
    """
    start = time.perf_counter()
    check_choice("direction", direction)
    metrics.inception_weights_path()  # fail early, before translating anything
    if data is None:
        data = bundled_dataset()
    data = Path(data)
    source_split, target_split = _SPLITS[direction]
    sources = _split_files(data, source_split, max_images)
    size = _resolve_size(generator, size)
    truth = {p.stem: p for p in _split_files(data, target_split, None)}
    reals = real_features(data, target_split, size, max_images=max_images, device=device,
                          batch_size=batch_size, cache_dir=cache_dir)

    gen_device = _input_device(generator, device)
    extractor = metrics.inception_features(device)
    fake_feats, l1s, ssims = [], [], []
    mismatched = 0
    with torch.no_grad():
        for paths, batch in _load_batches(sources, size, batch_size):
            fake = metrics.to_8bit(generator(batch.to(gen_device)).cpu(), "truncate")
            fake_feats.append(extractor(fake))
            for path, image in zip(paths, fake):
                if path.stem not in truth:
                    continue
                real = metrics.to_8bit(_native.load_image(str(truth[path.stem]), size), "round")
                if real.shape[1:] != image.shape:
                    mismatched += 1
                    continue
                pair = image[None].double() / 255.0, real.double() / 255.0
                l1s.append(float(metrics.l1_error(*pair)[0]))
                ssims.append(float(metrics.ssim(*pair)[0]))
    if mismatched:
        warnings.warn(f"{mismatched} ground-truth images have another size than their translation; "
                      "left out of L1/SSIM (evaluate at a fixed size)")
    fakes = torch.cat(fake_feats)
    subset = kid_subset_size or metrics.default_kid_subset_size(len(fakes), len(reals))
    kid_mean, kid_std = metrics.kernel_inception_distance(fakes, reals, kid_subsets, subset, seed)
    return {
        "fid": metrics.fid_from_features(fakes, reals),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "l1": sum(l1s) / len(l1s) if l1s else None,
        "ssim": sum(ssims) / len(ssims) if ssims else None,
        "num_images": len(fakes),
        "num_real": len(reals),
        "num_pairs": len(l1s),
        "kid_subsets": kid_subsets,
        "kid_subset_size": subset,
        "size": size,
        "direction": direction,
        "seconds": time.perf_counter() - start,
    }


# ---------------------------------------------------------------------------------------------
# Checkpoints and run folders
# ---------------------------------------------------------------------------------------------


@dataclass
class EvaluationReport:
    """Scores of one or more checkpoints on one dataset.

    ``results`` maps a label (``"latest"``, ``"best"``, or the file's stem) to the dict of
    :func:`evaluate_generator` plus ``checkpoint`` (path) and ``iteration`` (training
    iterations, None for a ``.pth``). ``report["latest"]["fid"]`` reads one number.
    """

    data: str
    results: Dict[str, Dict[str, Any]]
    protocol: Dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, label: str) -> Dict[str, Any]:
        return self.results[label]

    def to_dict(self) -> Dict[str, Any]:
        return {"data": self.data, "protocol": self.protocol, "results": self.results}

    def to_json(self, path: PathLike) -> Path:
        """Writes :meth:`to_dict` as indented JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def table(self) -> str:
        """A plain-text table, one row per checkpoint (KID in units of 10⁻³)."""
        header = ("checkpoint", "iter", "FID", "KID x1e3", "L1", "SSIM", "images")
        rows = [header]
        for label, r in self.results.items():
            rows.append((
                label,
                "-" if r.get("iteration") is None else str(r["iteration"]),
                f"{r['fid']:.2f}",
                f"{r['kid_mean'] * 1e3:.2f} ± {r['kid_std'] * 1e3:.2f}",
                "-" if r["l1"] is None else f"{r['l1']:.4f}",
                "-" if r["ssim"] is None else f"{r['ssim']:.4f}",
                f"{r['num_images']} vs {r['num_real']} real, {r['num_pairs']} pairs",
            ))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


def _checkpoints(target: Path) -> Dict[str, Path]:
    """Label → checkpoint file for a checkpoint file or a run folder."""
    if target.is_dir():
        found = {label: target / f"{label}.safetensors" for label in _CHECKPOINTS}
        found = {label: path for label, path in found.items() if path.is_file()}
        if "latest" not in found:
            raise FileNotFoundError(f"run folder {target} has no latest.safetensors")
        return found
    if not target.is_file():
        raise FileNotFoundError(target)
    return {target.stem: target}


def _checkpoint_info(path: Path) -> Dict[str, Any]:
    """``iteration``, ``dataroot`` and ``direction`` recorded in one of our checkpoints (empty
    for a ``.pth`` state dict)."""
    if path.suffix != ".safetensors":
        return {}
    meta = _native.read_checkpoint_metadata(str(path))
    config = json.loads(meta.get("config", "{}"))
    iteration = meta.get("total_iters")
    return {
        "iteration": int(iteration) if iteration is not None else None,
        "dataroot": config.get("dataroot"),
        "direction": config.get("direction"),
    }


def _default_data(infos: Sequence[Dict[str, Any]]) -> Path:
    """The training run's dataset when it is still there with a test split, else the bundled set."""
    for info in infos:
        root = info.get("dataroot")
        if root and all((Path(root) / split).is_dir() for split in _SPLITS["AtoB"]):
            return Path(root)
    return bundled_dataset()


def evaluate(
    target: PathLike,
    data: Optional[PathLike] = None,
    *,
    json_path: Optional[PathLike] = None,
    device: str = "cpu",
    direction: Optional[str] = None,
    size: Size = "crop",
    max_images: Optional[int] = None,
    batch_size: int = 16,
    kid_subsets: int = 100,
    kid_subset_size: Optional[int] = None,
    seed: int = 0,
    cache_dir: Optional[PathLike] = None,
    verbose: bool = True,
) -> EvaluationReport:
    """Evaluates a checkpoint or a run on a test split (see :func:`evaluate_generator`).

    Args:
        target: one of our checkpoints (``.safetensors``), a reference ``latest_net_G.pth``,
            or a run folder: its ``latest.safetensors`` and, when present, ``best.safetensors``
            (both reported).
        data: a folder with ``testA/`` and ``testB/``; default: the run's training ``dataroot``
            when it still exists with both test folders, else the bundled emoji set.
        json_path: also write the report there as JSON.
        direction: default: the checkpoint's training ``direction`` (``"AtoB"`` for a ``.pth``).
        verbose: print the table.

    Other arguments as for :func:`evaluate_generator`; the default protocol translates the whole
    test split at the training crop size.
    """
    metrics.inception_weights_path()  # fail early when the eval extra is missing
    found = _checkpoints(Path(target))
    infos = {label: _checkpoint_info(path) for label, path in found.items()}
    data = Path(data) if data is not None else _default_data(list(infos.values()))
    results: Dict[str, Dict[str, Any]] = {}
    for label, path in found.items():
        generator = load_generator(path, device)
        scores = evaluate_generator(
            generator, data, direction=direction or infos[label].get("direction") or "AtoB", size=size,
            max_images=max_images, batch_size=batch_size, device=device, kid_subsets=kid_subsets,
            kid_subset_size=kid_subset_size, seed=seed, cache_dir=cache_dir,
        )
        results[label] = dict(scores, checkpoint=str(path), iteration=infos[label].get("iteration"))
    report = EvaluationReport(str(data), results, protocol(kid_subsets, kid_subset_size))
    if json_path is not None:
        report.to_json(json_path)
    if verbose:
        print(f"data: {data}")
        print(report.table())
    return report
