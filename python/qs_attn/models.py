"""Trained generators for inference, and weights moving both ways between our checkpoints and
the authors' ``latest_net_G.pth`` / ``_D`` / ``_F`` state dicts (same key names)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from . import _ema, _native
from ._shared_module import SharedTensorModule

__all__ = ["Generator", "Discriminator", "load_generator", "translate", "import_pth", "export_pth", "checkpoint_state_dicts"]

_NETS = ("G", "D", "F")


def checkpoint_state_dicts(path: Union[str, Path]) -> Dict[str, Dict[str, torch.Tensor]]:
    """The ``G``, ``D`` and ``F`` state dicts (reference key names) stored in one of our
    checkpoints, plus ``"config"`` (the run's options) and, for a run with ``ema_decay``,
    ``"G_ema"`` (the averaged parameters of G)."""
    tensors, meta = _native.read_checkpoint(str(path))
    out: Dict[str, dict] = {net: {} for net in _NETS + (_ema.PREFIX,)}
    for key, tensor in tensors.items():
        net, _, name = key.partition(".")
        if net in out:
            out[net][name] = tensor
    if not out[_ema.PREFIX]:
        del out[_ema.PREFIX]
    out["config"] = json.loads(meta["config"]) if "config" in meta else {}
    return out


def _generator_shape(state: Dict[str, torch.Tensor]) -> dict:
    """ngf, number of residual blocks and resampling variant, read off a G state dict."""
    if "model.1.weight" not in state:
        raise ValueError("not a ResNet generator state dict (no 'model.1.weight')")
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"model\.(\d+)\.conv_block\.", k))}
    if not blocks:
        raise ValueError("not a ResNet generator state dict (no residual blocks)")
    filters = [int(k.split(".")[1]) for k in state if k.endswith(".filt")]
    return {
        "ngf": int(state["model.1.weight"].shape[0]),
        "n_blocks": len(blocks),
        "no_antialias": not any(i < min(blocks) for i in filters),
        "no_antialias_up": not any(i > max(blocks) for i in filters),
    }


def _check_images(x, module: nn.Module, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{what} expects an N×3×H×W tensor, got shape {tuple(x.shape)}")
    if x.device != module.device:
        raise ValueError(f"input is on {x.device} but the {what} is on {module.device}: move one with .to(device)")


class Generator(SharedTensorModule):
    """The ResNet generator (Rust) as a ``torch.nn.Module``.

    ``G(x)`` translates an ``N×3×H×W`` tensor in [−1, 1] (H, W divisible by 4); the
    reference's ``G(x, layers, encode_only=True)`` returns the outputs of the listed layers
    (the NCE taps) and ``G(x, layers)`` ``(translation, taps)``. ``parameters()``,
    ``state_dict()`` / ``load_state_dict()`` (the reference's key names), ``.to(device)``,
    ``.train()`` / ``.eval()`` (no effect on the default generator: no dropout, no batch
    statistics) behave as for any module; the parameters are the Rust network's own tensors,
    so a PyTorch optimiser trains it. New generators are initialised as the reference does
    (``init_type``, ``init_gain``; torch's global RNG).
    """

    def __init__(self, ngf: int = 64, n_blocks: int = 9, no_antialias: bool = False,
                 no_antialias_up: bool = False, device: str = "cpu", crop_size: int = 256,
                 init_type: str = "xavier", init_gain: float = 0.02):
        net = _native.Network.generator(ngf, n_blocks, no_antialias, no_antialias_up)
        net.init_weights(init_type, init_gain)
        super().__init__(net.state(), net.parameter_names())
        self._native = net
        #: The training crop size: images are resized to it for translation (docs/algorithm.md §12.1).
        self.crop_size = crop_size
        self.to(device)

    @classmethod
    def _of_trainer(cls, trainer: "_native.Trainer", crop_size: int) -> "Generator":
        """A view of a trainer's built-in generator (same tensors)."""
        g = cls.__new__(cls)
        SharedTensorModule.__init__(g, trainer.state_dict("G"), trainer.parameter_names("G"))
        g._native = _TrainerNet(trainer, "generator")
        g.crop_size = crop_size
        return g

    def forward(self, x: torch.Tensor, layers: Optional[Sequence[int]] = None, encode_only: bool = False):
        _check_images(x, self, "generator")
        if x.shape[2] % 4 or x.shape[3] % 4:
            raise ValueError(f"height and width must be divisible by 4, got {tuple(x.shape)}")
        return self._native.forward(x, None if layers is None else [int(i) for i in layers], encode_only)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        state = {k.removeprefix("module."): v for k, v in state_dict.items()}  # DataParallel prefix
        return super().load_state_dict(state, strict=strict)


class Discriminator(SharedTensorModule):
    """The PatchGAN discriminator (Rust) as a ``torch.nn.Module``: ``D(x)`` gives the patch
    logits of an ``N×3×H×W`` batch; parameters, ``state_dict`` keys and devices as for
    :class:`Generator`."""

    def __init__(self, ndf: int = 64, n_layers: int = 3, no_antialias: bool = False, device: str = "cpu",
                 init_type: str = "xavier", init_gain: float = 0.02):
        net = _native.Network.discriminator(ndf, n_layers, no_antialias)
        net.init_weights(init_type, init_gain)
        super().__init__(net.state(), net.parameter_names())
        self._native = net
        self.to(device)

    @classmethod
    def _of_trainer(cls, trainer: "_native.Trainer") -> "Discriminator":
        """A view of a trainer's built-in discriminator (same tensors)."""
        d = cls.__new__(cls)
        SharedTensorModule.__init__(d, trainer.state_dict("D"), trainer.parameter_names("D"))
        d._native = _TrainerNet(trainer, "discriminator")
        return d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_images(x, self, "discriminator")
        return self._native.forward(x)


class _TrainerNet:
    """Calls a trainer's network (``"generator"`` or ``"discriminator"``) like a standalone one."""

    def __init__(self, trainer: "_native.Trainer", which: str):
        self.trainer, self.which = trainer, which

    def forward(self, x, layers=None, encode_only=False):
        if self.which == "generator":
            return self.trainer.generator(x, layers, encode_only)
        return self.trainer.discriminator(x)


def load_generator(path: Union[str, Path], device: str = "cpu") -> Generator:
    """A generator from one of our checkpoints (``*.safetensors``) or from a reference
    ``latest_net_G.pth`` (a PyTorch state dict)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    crop_size = 256  # the reference's default, for its .pth files
    if path.suffix == ".safetensors":
        states = checkpoint_state_dicts(path)
        state, crop_size = _ema.generator_state(states), int(states["config"].get("crop_size", crop_size))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{path} does not hold a state dict")
        state = {k.removeprefix("module."): v for k, v in state.items()}
    g = Generator(**_generator_shape(state), crop_size=crop_size)
    g.load_state_dict(state)
    return g.to(device).eval()


def translate(generator: Union[Generator, str, Path], inputs, output_dir: Optional[Union[str, Path]] = None,
              size: Union[int, str, None] = "crop", device: str = "cpu"):
    """Translates a tensor batch, an image file, or a folder of images.

    Args:
        generator: a :class:`Generator` or a path for :func:`load_generator`.
        inputs: an ``N×3×H×W`` tensor in [−1, 1] (returns the translated tensor), or a file /
            folder path (writes PNGs named after the inputs into ``output_dir``, returns their
            paths).
        size: ``"crop"`` (default): images are resized to the generator's training
            ``crop_size`` (256 for a reference ``.pth``), as the reference does at test time;
            an int: resized to ``size × size``; ``None``: the native size (rounded to
            multiples of 4).
    """
    g = generator if isinstance(generator, Generator) else load_generator(generator, device)
    if size == "crop":
        size = g.crop_size
    if isinstance(inputs, torch.Tensor):
        with torch.no_grad():
            return g(inputs.to(g.device))
    src = Path(inputs)
    if src.is_dir():
        files = [Path(p) for p in _native.image_files(str(src))]
    elif src.is_file():
        files = [src]
    else:
        raise FileNotFoundError(src)
    if output_dir is None:
        raise ValueError("output_dir is required when translating files")
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: List[Path] = []
    with torch.no_grad():
        for f in files:
            x = _native.load_image(str(f), size).to(g.device)
            target = out_dir / (f.stem + ".png")
            _native.save_image(g(x).cpu(), str(target))
            written.append(target)
    return written


def import_pth(pth_files: Dict[str, Union[str, Path]], out: Union[str, Path], **options) -> Path:
    """Builds a training checkpoint of ours from the reference's ``.pth`` state dicts
    (``{"G": "latest_net_G.pth", "D": ..., "F": ...}``; D and F optional) so that training can
    continue from released weights. ``options`` are the run's training options (e.g. ``mode``,
    ``crop_size``); the optimiser state starts fresh."""
    trainer = _native.Trainer(json.dumps(dict(options, dataroot=str(options.get("dataroot", "")))))
    for net, path in pth_files.items():
        if net not in _NETS:
            raise ValueError(f"networks are 'G', 'D' and 'F', got {net!r}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k.removeprefix("module."): v.to(torch.float32) for k, v in state.items()}
        trainer.load_state_dict(net, state)
    trainer.save(str(out))
    return Path(out)


def export_pth(checkpoint: Union[str, Path], out_dir: Union[str, Path], prefix: str = "latest") -> List[Path]:
    """Writes ``<prefix>_net_G.pth`` / ``_D`` / ``_F`` (the reference's file and key names)
    from one of our checkpoints; G is the moving average of a run with ``ema_decay``."""
    states = checkpoint_state_dicts(checkpoint)
    states["G"] = _ema.generator_state(states)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for net in _NETS:
        if states[net]:
            target = out_dir / f"{prefix}_net_{net}.pth"
            torch.save({k: v.clone() for k, v in states[net].items()}, target)
            written.append(target)
    return written
