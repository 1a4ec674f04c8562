"""``torch.nn.Module`` wrappers: a drop-in replacement for the CUT / QS-Attn projector and the
PatchNCE loss."""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Union

import torch
from torch import nn

from ._ops import QSSelection, patch_nce_loss, qs_cross_route, qs_route, qs_select, sample_patch_ids

__all__ = ["PatchNCELoss", "PatchSampleF", "init_weights"]


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


def init_weights(module: nn.Module, init_type: str = "xavier", init_gain: float = 0.02) -> None:
    """The reference initialisation (spec §3.1) of every Conv/Linear weight, biases to 0.

    ``xavier``: Xavier-normal with gain ``init_gain`` (default); ``normal``: N(0, init_gain);
    ``kaiming``: Kaiming-normal (fan_in, a=0); ``orthogonal``: gain ``init_gain``.
    """
    inits = {
        "normal": lambda w: nn.init.normal_(w, 0.0, init_gain),
        "xavier": lambda w: nn.init.xavier_normal_(w, gain=init_gain),
        "kaiming": lambda w: nn.init.kaiming_normal_(w, a=0, mode="fan_in"),
        "orthogonal": lambda w: nn.init.orthogonal_(w, gain=init_gain),
    }
    if init_type not in inits:
        raise ValueError(f"init_type must be one of {', '.join(map(repr, inits))}, got {init_type!r}")
    for m in module.modules():
        name = type(m).__name__
        if ("Conv" in name or "Linear" in name) and getattr(m, "weight", None) is not None:
            inits[init_type](m.weight.data)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias.data)


def _l2norm(x: torch.Tensor) -> torch.Tensor:
    # The reference's normalisation: v / (‖v‖₂ + 1e-7), epsilon on the norm.
    return x / (x.pow(2).sum(-1, keepdim=True).sqrt() + 1e-7)


class PatchSampleF(nn.Module):
    """The CUT / QS-Attn patch sampler and projection head (spec §7, §8), on our ops.

    Same call as the reference's ``PatchSampleF``::

        feats_k, ids, attn_mats = netF(feat_src_list, num_patches, None, None)       # source call
        feats_q, _, _ = netF(feat_tgt_list, num_patches, ids, attn_mats)             # target call

    Args:
        mode: ``"global"`` | ``"local"`` | ``"local_global"`` | ``"cross"`` (QS-Attn slots) or
            ``"none"`` (CUT: every slot random).
        use_mlp: project with ``Linear(C, nc) → ReLU → Linear(nc, nc)`` per slot (``mlp_<s>``),
            created lazily on the first call (or eagerly with :meth:`create_mlp`).
        nc: projection width (``netF_nc``, 256).
        local_layout: ``"geometric"`` or ``"reference"`` (the authors' layout; use it to
            reproduce their released local / local_global models).
        window: local window size (odd; the paper uses 7).
        qs_slots: indices of the slots that use QS-Attn; ``None`` = every slot from index 3 on
            (the reference: with the default 5 taps, the last two).
        per_image_ids: draw random ids per image instead of sharing them across the batch.
        detach_attn: cut the gradient through the attention (ablation).
        init_type, init_gain: initialisation of the MLPs (spec §3.1).

    Returns of ``forward``: ``feats`` — per slot ``(B*N, nc)`` L2-normalised rows (``(B*N, C)``
    without MLP); ``ids`` — random slots: the ``(N,)`` (or ``(B, N)``) ids used, QS slots: the
    selected ``(B, N)`` indices; ``attn_mats`` — QS slots: the :class:`qs_attn.QSSelection`
    of the source call (pass it back for the target call), random slots: ``None``.
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
        super().__init__()
        if mode not in ("global", "local", "local_global", "cross", "none"):
            raise ValueError(f"mode must be 'global', 'local', 'local_global', 'cross' or 'none', got {mode!r}")
        self.mode = mode
        self.use_mlp = use_mlp
        self.nc = nc
        self.local_layout = local_layout
        self.window = window
        self.qs_slots = None if qs_slots is None else frozenset(int(s) for s in qs_slots)
        self.per_image_ids = per_image_ids
        self.detach_attn = detach_attn
        self.init_type = init_type
        self.init_gain = init_gain
        self.mlp_init = False

    def is_qs_slot(self, slot: int) -> bool:
        if self.mode == "none":
            return False
        return slot >= 3 if self.qs_slots is None else slot in self.qs_slots

    def create_mlp(self, feats: Sequence[Union[torch.Tensor, int]]) -> None:
        """Builds the per-slot MLPs from the feature maps (or their channel counts) and
        initialises them; call it before ``load_state_dict`` to load weights eagerly."""
        device, dtype = None, None
        for slot, feat in enumerate(feats):
            if isinstance(feat, torch.Tensor):
                channels, device, dtype = feat.shape[1], feat.device, feat.dtype
            else:
                channels = int(feat)
            mlp = nn.Sequential(nn.Linear(channels, self.nc), nn.ReLU(), nn.Linear(self.nc, self.nc))
            setattr(self, f"mlp_{slot}", mlp)
        init_weights(self, self.init_type, self.init_gain)
        if device is not None:
            self.to(device=device, dtype=dtype)
        self.mlp_init = True

    def forward(
        self,
        feats: Sequence[torch.Tensor],
        num_patches: int = 64,
        patch_ids: Optional[Sequence] = None,
        attn_mats: Optional[Sequence] = None,
    ):
        if num_patches < 1:
            raise ValueError(f"num_patches must be >= 1, got {num_patches}")
        if self.use_mlp and not self.mlp_init:
            self.create_mlp(feats)
        out_feats: List[torch.Tensor] = []
        out_ids: list = []
        out_attn: list = []
        for slot, feat in enumerate(feats):
            if feat.dim() != 4:
                raise ValueError(f"feature map {slot} must be (B, C, H, W), got shape {tuple(feat.shape)}")
            if self.is_qs_slot(slot):
                rows, ids, attn = self._qs_slot(feat, num_patches, None if attn_mats is None else attn_mats[slot])
            else:
                rows, ids = self._random_slot(feat, num_patches, None if patch_ids is None else patch_ids[slot])
                attn = None
            if self.use_mlp:
                rows = getattr(self, f"mlp_{slot}")(rows)
            out_feats.append(_l2norm(rows))
            out_ids.append(ids)
            out_attn.append(attn)
        return out_feats, out_ids, out_attn

    def _qs_slot(self, feat, num_patches, selection: Optional[QSSelection]):
        if selection is None:  # source call: select, then route the source (keys)
            selection = qs_select(feat, num_patches, self.mode, self.window, self.local_layout, self.detach_attn)
            routed = qs_route(feat, selection)
        elif self.mode == "cross":  # target call, cross-domain query branch
            routed = qs_cross_route(feat, selection)
        else:  # target call: the source's attention on the translated features (queries)
            routed = qs_route(feat, selection)
        return routed.flatten(0, 1), selection.indices, selection

    def _random_slot(self, feat, num_patches, ids):
        b, c, h, w = feat.shape
        flat = feat.permute(0, 2, 3, 1).reshape(b, h * w, c)
        if ids is None:
            ids = sample_patch_ids(h * w, num_patches, b, self.per_image_ids, device=feat.device)
        ids = torch.as_tensor(ids, device=feat.device, dtype=torch.long)
        if ids.dim() == 1:  # shared by the batch, as in the reference
            rows = flat[:, ids, :]
        else:
            rows = flat.gather(1, ids.unsqueeze(-1).expand(-1, -1, c))
        return rows.flatten(0, 1), ids

    def extra_repr(self) -> str:
        return (f"mode={self.mode!r}, use_mlp={self.use_mlp}, nc={self.nc}, local_layout={self.local_layout!r}, "
                f"window={self.window}")
