"""``torch.nn.Module``s over tensors that Rust owns: the built-in networks seen from PyTorch.

The module registers the Rust network's own tensors (not copies) under the reference's
``state_dict`` keys, so ``parameters()`` feed any PyTorch optimiser, ``load_state_dict`` writes
into the Rust network, gradients of a PyTorch loss land where the Rust code reads them, and
``.to(device)`` / ``.double()`` move the shared tensors in place. Parameters are plain tensors
flagged ``_is_param`` (which ``isinstance(t, nn.Parameter)`` honours): wrapping them in new
``nn.Parameter`` objects would give PyTorch tensors that Rust never sees.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable

import torch
from torch import nn

__all__ = ["SharedTensorModule"]


def _module_order(name: str):
    """Sort key giving the order PyTorch modules list their state: numbered submodules in
    numeric order, a module's weight before its bias."""
    *path, leaf = name.split(".")
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in path], {"weight": 0, "bias": 1}.get(leaf, 2)


class SharedTensorModule(nn.Module):
    """Registers ``state`` (name → tensor, dotted reference keys) as parameters (names in
    ``trainable``) and buffers, creating empty submodules along the dotted paths."""

    def __init__(self, state: Dict[str, torch.Tensor], trainable: Iterable[str]):
        super().__init__()
        self._share(state, trainable)

    def _share(self, state: Dict[str, torch.Tensor], trainable: Iterable[str]) -> None:
        """Registers ``state`` (a module may do it later, once its tensors exist)."""
        trainable = set(trainable)
        for name, tensor in sorted(state.items(), key=lambda item: _module_order(item[0])):
            owner, leaf = self._owner(name)
            if name in trainable:
                tensor._is_param = True
                owner.register_parameter(leaf, tensor)
            else:
                owner.register_buffer(leaf, tensor)

    def _owner(self, name: str):
        *path, leaf = name.split(".")
        owner: nn.Module = self
        for part in path:
            if part not in owner._modules:
                owner.add_module(part, nn.Module())
            owner = owner._modules[part]
        return owner, leaf

    def _apply(self, fn: Callable, recurse: bool = True):
        # nn.Module moves parameters in place (``param.data = ...``) but replaces buffers by new
        # tensors; move the shared buffers in place too, so Rust keeps seeing them.
        shared = dict(self.named_buffers())
        super()._apply(fn, recurse)
        for name, tensor in shared.items():
            owner, leaf = self._owner(name)
            moved = owner._buffers[leaf]
            if moved is not tensor:
                tensor.data = moved
                owner._buffers[leaf] = tensor
        return self

    @property
    def device(self) -> torch.device:
        return next(iter(self.state_dict(keep_vars=True).values())).device
