"""The functional API over the Rust ops (see ``src/ops`` for the maths of each forward/backward)."""
from __future__ import annotations

from typing import Optional

import torch

from . import _library, _native

#: The allowed values of every named option (option → names), from the Rust enums.
OPTION_CHOICES = _native.OPTION_CHOICES


def _check_tensor(name: str, value) -> None:
    """An ordinary dense tensor: the ops read strided memory, so sparse (COO, CSR, ...), nested
    and MKL-DNN tensors are refused here, before they reach the Rust side."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.is_nested:
        raise TypeError(f"{name} is a nested tensor; the ops take dense tensors (torch.strided layout)")
    if value.layout != torch.strided:
        raise TypeError(f"{name} has layout {value.layout}; the ops take dense tensors (torch.strided): "
                        f"convert with .to_dense()")
    if value.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be a CPU or CUDA tensor, got device {value.device}")


def check_choice(option: str, value, choices: Optional[str] = None) -> None:
    """Raises ``ValueError`` unless ``value`` is one of ``OPTION_CHOICES[choices or option]``."""
    allowed = OPTION_CHOICES[choices or option]
    if value not in allowed:
        raise ValueError(f"{option} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def patch_nce_loss(
    feat_q: torch.Tensor,
    feat_k: torch.Tensor,
    tau: float = 0.07,
    num_images: Optional[int] = None,
    reduction: str = "mean",
    detach_keys: bool = True,
) -> torch.Tensor:
    """PatchNCE loss (CUT / QS-Attn, docs/algorithm.md §9).

    Args:
        feat_q: query rows, ``(B*M, D)``: M rows per image stacked image after image,
            L2-normalised by the caller (e.g. the output of :class:`qs_attn.nn.PatchSampleF`
            for the translated image).
        feat_k: key rows, same shape (from the source image); row ``r`` of ``feat_q`` and
            row ``r`` of ``feat_k`` are the positive pair, the other key rows **of the same image**
            are the negatives.
        tau: temperature (``nce_T``), default 0.07.
        num_images: B, the number of images the rows belong to (default 1). ``B*M`` must be
            divisible by it. (The reference used the configured batch size here, docs/algorithm.md Q3.)
        reduction: ``"mean"`` (scalar) or ``"none"`` (one loss per row, ``(B*M,)``).
        detach_keys: keys get no gradient (the reference's behaviour); ``False`` keeps it.

    Returns:
        The loss, float32 for half/bfloat16/float32 inputs, float64 for float64 inputs.

    The negatives' diagonal (a key against its own query) is set to -10 before the
    temperature, as in the reference. Backward is analytic (from the saved softmax).
    """
    _check_tensor("feat_q", feat_q)
    _check_tensor("feat_k", feat_k)
    check_choice("reduction", reduction)
    num_images = 1 if num_images is None else int(num_images)
    if torch.compiler.is_compiling():
        return _library.patch_nce_loss(feat_q, feat_k, float(tau), num_images, reduction, bool(detach_keys))
    return _native.patch_nce_loss(feat_q, feat_k, float(tau), num_images, reduction, bool(detach_keys))


def qs_entropy(
    feat: torch.Tensor, mode: str = "global", window: int = 7, local_layout: str = "geometric"
) -> torch.Tensor:
    """Row entropies of the QS-Attn attention, ``(B, H*W)`` in raster order (no gradient).

    ``mode="global"``: entropy of each row of ``softmax(X Xᵀ)`` (X = the ``H*W x C`` features of
    an image, raw dot products), computed in row blocks without a ``P x P`` matrix.
    ``mode="local"``: entropy over the ``window x window`` slots of each position (zero-padded
    border slots take part with logit 0), keys per ``local_layout``. Low entropy = selected first.
    """
    _check_tensor("feat", feat)
    check_choice("mode", mode, "entropy_mode")
    check_choice("local_layout", local_layout)
    return _native.qs_entropy(feat, mode, int(window), local_layout)


class QSSelection:
    """The queries selected on the source features, and their attention.

    Attributes:
        indices: ``(B, N)`` int64 raster positions ``h*W + w``, lowest entropy first (ties to
            the lower index), per image.
        attn: the reduced attention, differentiable w.r.t. the source features:
            ``(B, N, H*W)`` rows of ``softmax(X Xᵀ)`` for ``global``, ``local_global`` and
            ``cross``; ``(B, N, window**2)`` window weights for ``local``. For the global modes it
            is computed on first access: routing does not need it (it recomputes attention in
            blocks, so a selection holds no ``N x H*W`` matrix).
        mode, window, local_layout: how it was made.
        height, width: the source map's spatial size.
        source: the ``(B, H*W, C)`` source features (a view of the map, detached when made with
            ``detach_attn``); ``source_map``: the same as the ``(B, C, H, W)`` map.
    """

    __slots__ = ("indices", "source", "source_map", "local_attn", "mode", "window", "local_layout", "height",
                 "width", "_attn")

    def __init__(self, indices, source_map, local_attn, mode, window, local_layout, height, width):
        self.indices = indices
        self.source_map = source_map
        self.source = source_map.flatten(2).transpose(1, 2)
        self.local_attn = local_attn
        self.mode = mode
        self.window = window
        self.local_layout = local_layout
        self.height = height
        self.width = width
        self._attn = None

    @property
    def attn(self) -> torch.Tensor:
        """The reduced attention (computed on first access; eager mode only)."""
        if self._attn is None:
            self._attn = _native.qs_attention(self)
        return self._attn

    def __repr__(self) -> str:
        b, n = self.indices.shape
        return (f"QSSelection(mode={self.mode!r}, images={b}, queries={n}, map={self.height}x{self.width}, "
                f"window={self.window}, local_layout={self.local_layout!r})")


def qs_select(
    feat: torch.Tensor,
    num_patches: int = 256,
    mode: str = "global",
    window: int = 7,
    local_layout: str = "geometric",
    detach_attn: bool = False,
) -> QSSelection:
    """Selects the ``num_patches`` lowest-entropy queries per image on the source features.

    Args:
        feat: source features ``(B, C, H, W)`` (e.g. a generator tap on the real image).
        num_patches: N, at most ``H*W``.
        mode: ``"global"`` (paper default), ``"local"``, ``"local_global"``, or ``"cross"``
            (our extension: selection as global, query branch by cross-domain attention, see
            :func:`qs_cross_route`).
        window: odd window size of the local modes (the paper uses 7).
        local_layout: ``"geometric"`` (true windows, docs/algorithm.md §8.2) or ``"reference"`` (the
            authors' scrambled unfold reading, docs/algorithm.md §8.3, to reproduce their released models).
        detach_attn: cut the gradient through the attention (ablation; default keeps it, so
            the query branch reaches the source features through the attention).

    Returns:
        A :class:`QSSelection`. Route features with :func:`qs_route`.
    """
    _check_tensor("feat", feat)
    check_choice("mode", mode, "qs_mode")
    check_choice("local_layout", local_layout)
    source_map = feat.detach() if detach_attn else feat
    if torch.compiler.is_compiling():
        indices = _library.select_indices(feat, int(num_patches), mode, int(window), local_layout)
        return QSSelection(indices, source_map, None, mode, int(window), local_layout, feat.shape[2], feat.shape[3])
    indices, _, local_attn, height, width = _native.qs_select(
        feat, int(num_patches), mode, int(window), local_layout, bool(detach_attn))
    return QSSelection(indices, source_map, local_attn, mode, int(window), local_layout, height, width)


def _check_selection(selection) -> None:
    if not isinstance(selection, QSSelection):
        raise TypeError(f"selection must be a QSSelection from qs_select, got {type(selection).__name__}")


def qs_route(feat: torch.Tensor, selection: QSSelection) -> torch.Tensor:
    """Routes features with a selection's attention: ``(B, C, H, W)`` → ``(B, N, C)``.

    Global, local_global and cross: ``attn @ X`` with X the flattened ``feat`` (computed in
    blocks of queries, the attention recomputed in backward instead of stored). Local: the
    attention-weighted sum over each selected position's window (per the selection's layout).
    Use it on the source features (keys) and, except in ``cross`` mode, on the translated
    features (queries) with the same selection. Flatten with ``.flatten(0, 1)`` for
    :func:`patch_nce_loss`.
    """
    _check_tensor("feat", feat)
    _check_selection(selection)
    if torch.compiler.is_compiling():
        mode = "local" if selection.mode == "local" else "global"
        return _library.route(selection.source_map, selection.indices, feat, mode, selection.window,
                              selection.local_layout)
    return _native.qs_route(feat, selection)


def qs_cross_route(feat_tgt: torch.Tensor, selection: QSSelection) -> torch.Tensor:
    """Cross-domain query branch (``mode="cross"``, our extension): the selected source
    positions attend over the translated features, ``softmax(X_src[sel] X_tgtᵀ) X_tgt``,
    ``(B, N, C)``. Equals :func:`qs_route` in ``global`` mode when ``feat_tgt`` is the source.
    """
    _check_tensor("feat_tgt", feat_tgt)
    _check_selection(selection)
    if torch.compiler.is_compiling():
        if selection.mode != "cross":
            raise ValueError(f"qs_cross_route needs a selection made with mode 'cross', got {selection.mode!r}")
        return _library.route(selection.source_map, selection.indices, feat_tgt, "cross", selection.window,
                              selection.local_layout)
    return _native.qs_cross_route(feat_tgt, selection)


def sample_patch_ids(
    num_positions: int,
    num_patches: int,
    num_images: int = 1,
    per_image: bool = False,
    generator: Optional[torch.Generator] = None,
    device=None,
) -> torch.Tensor:
    """Random patch positions for the CUT slots (docs/algorithm.md §7.2).

    Returns the first ``min(num_patches, num_positions)`` entries of a uniform random
    permutation of ``range(num_positions)``: shape ``(N,)`` shared by the batch (the
    reference), or ``(num_images, N)`` with ``per_image=True``. The seed is drawn from
    ``generator`` (or torch's global RNG), so ``torch.manual_seed`` makes it reproducible.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    ids = _native.PatchSampler(seed).sample(int(num_positions), int(num_patches), int(num_images), bool(per_image))
    return ids if device is None else ids.to(device)
