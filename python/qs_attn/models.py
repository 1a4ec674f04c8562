"""Trained generators for inference, and weights moving both ways between our checkpoints and
the authors' ``latest_net_G.pth`` / ``_D`` / ``_F`` state dicts (same key names)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Union

import torch

from . import _native

__all__ = ["Generator", "load_generator", "translate", "import_pth", "export_pth", "checkpoint_state_dicts"]

_NETS = ("G", "D", "F")


def checkpoint_state_dicts(path: Union[str, Path]) -> Dict[str, Dict[str, torch.Tensor]]:
    """The ``G``, ``D`` and ``F`` state dicts (reference key names) stored in one of our
    checkpoints, plus ``"config"`` (the run's options)."""
    tensors, meta = _native.read_checkpoint(str(path))
    out: Dict[str, dict] = {net: {} for net in _NETS}
    for key, tensor in tensors.items():
        net, _, name = key.partition(".")
        if net in out:
            out[net][name] = tensor
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


class Generator:
    """A ResNet generator (Rust) usable on torch tensors: ``G(x)`` for an ``N×3×H×W`` tensor in
    [−1, 1] with H, W divisible by 4; ``state_dict()`` / ``load_state_dict()`` with the
    reference's key names; ``.to(device)``; ``.eval()`` / ``.train()`` (no-ops: the default
    generator has no dropout or batch statistics)."""

    def __init__(self, ngf: int = 64, n_blocks: int = 9, no_antialias: bool = False,
                 no_antialias_up: bool = False, device: str = "cpu", crop_size: int = 256):
        self._net = _native.Generator(ngf, n_blocks, no_antialias, no_antialias_up, str(device))
        #: The training crop size: images are resized to it for translation (spec §12.1).
        self.crop_size = crop_size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
        return self._net.forward(x)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return dict(self._net.state_dict())

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> "Generator":
        state = {k.removeprefix("module."): v for k, v in state.items()}  # DataParallel prefix
        self._net.load_state_dict({k: v.to(torch.float32) for k, v in state.items()})
        return self

    def to(self, device) -> "Generator":
        self._net.to(str(torch.device(device)))
        return self

    @property
    def device(self) -> torch.device:
        return torch.device(self._net.device)

    def eval(self) -> "Generator":
        return self

    def train(self, mode: bool = True) -> "Generator":
        return self

    def parameters(self) -> Iterable[torch.Tensor]:
        return (t for k, t in self.state_dict().items() if not k.endswith(".filt"))


def load_generator(path: Union[str, Path], device: str = "cpu") -> Generator:
    """A generator from one of our checkpoints (``*.safetensors``) or from a reference
    ``latest_net_G.pth`` (a PyTorch state dict)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    crop_size = 256  # the reference's default, for its .pth files
    if path.suffix == ".safetensors":
        states = checkpoint_state_dicts(path)
        state, crop_size = states["G"], int(states["config"].get("crop_size", crop_size))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{path} does not hold a state dict")
        state = {k.removeprefix("module."): v for k, v in state.items()}
    g = Generator(**_generator_shape(state), crop_size=crop_size)
    g.load_state_dict(state)
    return g.to(device)


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
    from one of our checkpoints."""
    states = checkpoint_state_dicts(checkpoint)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for net in _NETS:
        if states[net]:
            target = out_dir / f"{prefix}_net_{net}.pth"
            torch.save({k: v.clone() for k, v in states[net].items()}, target)
            written.append(target)
    return written
