"""qs_attn: QS-Attn (Hu et al., CVPR 2022) and PatchNCE as fast Rust/libtorch ops.

The ops take and return ordinary ``torch.Tensor`` objects and join PyTorch's autograd graph
(custom backward passes implemented in Rust). Devices and dtypes follow the inputs; half and
bfloat16 inputs are computed in float32.

Functional API::

    loss = qs_attn.patch_nce_loss(q, k, tau=0.07, num_images=B)
    sel = qs_attn.qs_select(feat_src, num_patches=256, mode="global")
    keys = qs_attn.qs_route(feat_src, sel)        # B x N x C
    queries = qs_attn.qs_route(feat_tgt, sel)     # same attention, translated features

Modules: :class:`qs_attn.nn.PatchNCELoss`, :class:`qs_attn.nn.PatchSampleF`.
"""
# torch must be imported before the extension: it loads libtorch and registers torch.Tensor.
import torch  # noqa: F401

from . import _native  # noqa: F401
from ._ops import (
    QSSelection,
    patch_nce_loss,
    qs_cross_route,
    qs_entropy,
    qs_route,
    qs_select,
    sample_patch_ids,
)
from ._native import PatchSampler
from . import nn

__version__ = "0.1.0"

__all__ = [
    "PatchSampler",
    "QSSelection",
    "nn",
    "patch_nce_loss",
    "qs_cross_route",
    "qs_entropy",
    "qs_route",
    "qs_select",
    "sample_patch_ids",
]
