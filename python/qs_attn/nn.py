"""``torch.nn.Module`` wrappers: a drop-in replacement for the CUT / QS-Attn projector (the Rust
projector the trainer uses) and the PatchNCE loss."""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Sequence, Union

import torch
from torch import nn

from . import _native
from ._ops import QSSelection, check_choice, patch_nce_loss
from ._shared_module import SharedTensorModule

__all__ = ["PatchNCELoss", "PatchSampleF"]


class PatchNCELoss(nn.Module):
    """PatchNCE loss as a module; see :func:`qs_attn.patch_nce_loss` for the shapes.

    ``forward(feat_q, feat_k, num_images=None)`` with ``(B*M, D)`` rows; ``num_images`` = B
    (default 1). Negatives come from the same image only.
    """

    def __init__(self, tau: float = 0.07, reduction: str = "mean", detach_keys: bool = True):
        super().__init__()
        self.tau = tau
        self.reduction = reduction
        self.detach_keys = detach_keys

    def forward(self, feat_q: torch.Tensor, feat_k: torch.Tensor, num_images: Optional[int] = None) -> torch.Tensor:
        return patch_nce_loss(feat_q, feat_k, self.tau, num_images, self.reduction, self.detach_keys)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, reduction={self.reduction!r}, detach_keys={self.detach_keys}"


class PatchSampleF(SharedTensorModule):
    """The CUT / QS-Attn patch sampler and projection head (docs/algorithm.md §7, §8): the
    Rust projector the trainer uses, as a module.

    Same call as the reference's ``PatchSampleF``::

        feats_k, ids, attn_mats = netF(feat_src_list, num_patches, None, None)       # source call
        feats_q, _, _ = netF(feat_tgt_list, num_patches, ids, attn_mats)             # target call

    Args:
        mode: a QS-Attn mode (``qs_attn._native.OPTION_CHOICES["mode"]``: ``"global"``,
            ``"local"``, ``"local_global"``, ``"cross"``) or ``"none"`` (CUT: every slot random).
        use_mlp: project with ``Linear(C, nc) → ReLU → Linear(nc, nc)`` per slot (``mlp_<s>``),
            created lazily on the first call (or eagerly with :meth:`create_mlp`).
        nc: projection width (``netF_nc``, 256).
        local_layout: ``"geometric"`` or ``"reference"`` (the authors' layout; use it to
            reproduce their released local / local_global models).
        window: local window size (odd; the paper uses 7).
        qs_slots: indices of the slots that use QS-Attn; ``None`` = the reference's (with the
            default 5 taps, the last two).
        per_image_ids: draw random ids per image instead of sharing them across the batch.
        detach_attn: cut the gradient through the attention (ablation).
        init_type, init_gain: initialisation of the MLPs (docs/algorithm.md §3.1, torch's
            global RNG).

    Returns of ``forward``: ``feats`` — per slot ``(B*N, nc)`` L2-normalised rows (``(B*N, C)``
    without MLP); ``ids`` — random slots: the ``(N,)`` (or ``(B, N)``) ids used, QS slots: the
    selected ``(B, N)`` indices; ``attn_mats`` — QS slots: the :class:`qs_attn.QSSelection`
    of the source call (pass it back for the target call), random slots: ``None``. Random ids
    are drawn from a seed taken from torch's global RNG when the projector is built.
    """

    def __init__(
        self,
        mode: str = "global",
        use_mlp: bool = True,
        nc: int = 256,
        local_layout: str = "geometric",
        window: int = 7,
        qs_slots: Optional[Iterable[int]] = None,
        per_image_ids: bool = False,
        detach_attn: bool = False,
        init_type: str = "xavier",
        init_gain: float = 0.02,
    ):
        super().__init__({}, ())
        check_choice("mode", mode)
        check_choice("local_layout", local_layout)
        check_choice("init_type", init_type)
        self.mode = mode
        self.use_mlp = use_mlp
        self.nc = nc
        self.local_layout = local_layout
        self.window = window
        self.qs_slots = None if qs_slots is None else sorted({int(s) for s in qs_slots})
        self.per_image_ids = per_image_ids
        self.detach_attn = detach_attn
        self.init_type = init_type
        self.init_gain = init_gain
        self._native = None

    @property
    def mlp_init(self) -> bool:
        """Whether the projector (and its MLPs) exists yet."""
        return self._native is not None

    def _build(self, channels: Sequence[int], weights: Optional[Dict[str, torch.Tensor]] = None) -> None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
        self._native = _native.Network.projector(
            [int(c) for c in channels], int(self.nc), bool(self.use_mlp), self.mode, self.qs_slots, int(self.window),
            self.local_layout, bool(self.per_image_ids), bool(self.detach_attn), seed, weights)
        if weights is None:
            self._native.init_weights(self.init_type, float(self.init_gain))
        self._share(self._native.state(), self._native.parameter_names())

    def create_mlp(self, feats: Sequence[Union[torch.Tensor, int]]) -> None:
        """Builds the projector (and the per-slot MLPs) from the feature maps or their channel
        counts, initialised; call it before ``load_state_dict`` to load weights eagerly.
        Given maps, the MLPs move to their device and dtype."""
        channels = [f.shape[1] if isinstance(f, torch.Tensor) else int(f) for f in feats]
        self._build(channels)
        tensors = [f for f in feats if isinstance(f, torch.Tensor)]
        if tensors:
            self.to(device=tensors[-1].device, dtype=tensors[-1].dtype)

    @classmethod
    def _of_trainer(cls, native, config: dict) -> "PatchSampleF":
        """The projector of a trainer: its own MLP tensors (shared), its options."""
        f = cls(mode=config["mode"], nc=int(config["netF_nc"]), local_layout=config["local_layout"],
                window=int(config["window"]), qs_slots=config.get("qs_slots"),
                per_image_ids=bool(config["per_image_ids"]))
        state = native.state_dict("F")
        slots = sorted({int(k.split(".")[0].removeprefix("mlp_")) for k in state})
        f._build([state[f"mlp_{s}.0.weight"].shape[1] for s in slots], weights=state)
        return f

    def forward(
        self,
        feats: Sequence[torch.Tensor],
        num_patches: int = 64,
        patch_ids: Optional[Sequence] = None,
        attn_mats: Optional[Sequence] = None,
    ):
        feats = list(feats)
        for slot, feat in enumerate(feats):
            if not isinstance(feat, torch.Tensor) or feat.dim() != 4:
                shape = tuple(feat.shape) if isinstance(feat, torch.Tensor) else type(feat).__name__
                raise ValueError(f"feature map {slot} must be (B, C, H, W), got {shape}")
        if self._native is None:
            self.create_mlp(feats)
        ids = None if patch_ids is None else [None if i is None else torch.as_tensor(i, dtype=torch.long)
                                              for i in patch_ids]
        if attn_mats is None:  # source call: sample (or select) and project
            rows, sampled = self._native.project_source(feats, int(num_patches), ids)
            out_ids, out_attn = [], []
            for feat, s in zip(feats, sampled):
                if isinstance(s, tuple):  # a QS slot: the selection's fields
                    indices, source, local_attn, height, width = s
                    sel = QSSelection(indices, source.transpose(1, 2).unflatten(2, (height, width)), local_attn,
                                      self.mode, int(self.window), self.local_layout, height, width)
                    out_ids.append(indices)
                    out_attn.append(sel)
                else:
                    out_ids.append(s)
                    out_attn.append(None)
            return rows, out_ids, out_attn
        # target call: the source call's selections (QS slots) and ids (random slots)
        samples = [a if a is not None else (None if ids is None else ids[s]) for s, a in enumerate(attn_mats)]
        rows = self._native.project_target(feats, int(num_patches), samples)
        return rows, list(patch_ids) if patch_ids is not None else [None] * len(feats), list(attn_mats)

    def extra_repr(self) -> str:
        return (f"mode={self.mode!r}, use_mlp={self.use_mlp}, nc={self.nc}, local_layout={self.local_layout!r}, "
                f"window={self.window}")
