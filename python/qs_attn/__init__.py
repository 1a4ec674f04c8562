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

Training and inference (Rust networks and loop)::

    result = qs_attn.train(name="emoji", mode="global", n_epochs=5, crop_size=64)
    G = qs_attn.load_generator(result.checkpoint)      # or a reference latest_net_G.pth
    y = G(x)                                           # x: N x 3 x H x W in [-1, 1]
"""
# torch must be imported before the extension: it loads libtorch and registers torch.Tensor.
import torch  # noqa: F401

# ... and be the release the extension was compiled against (a clear ImportError otherwise).
from ._version import GIT_COMMIT as __git_commit__, TORCH_VERSION as __torch_version__, __version__
from ._version import require_built_torch as _require_built_torch

_require_built_torch()

from . import _native  # noqa: F401,E402
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
from . import fid, metrics, nn
from .evaluate import EvaluationReport, evaluate, evaluate_generator
from .models import Discriminator, Generator, checkpoint_state_dicts, export_pth, import_pth, load_generator, translate
from .trainer import StepInfo, StopTraining, Trainer
from .datasets import bundled_dataset
from .train import TrainResult, plot_losses, resume, train

__all__ = [
    "Discriminator",
    "EvaluationReport",
    "Generator",
    "StepInfo",
    "StopTraining",
    "Trainer",
    "PatchSampler",
    "TrainResult",
    "bundled_dataset",
    "evaluate",
    "evaluate_generator",
    "fid",
    "metrics",
    "checkpoint_state_dicts",
    "export_pth",
    "import_pth",
    "load_generator",
    "plot_losses",
    "resume",
    "train",
    "translate",
    "QSSelection",
    "nn",
    "patch_nce_loss",
    "qs_cross_route",
    "qs_entropy",
    "qs_route",
    "qs_select",
    "sample_patch_ids",
]
