"""The ops registered with ``torch.library``, used when ``torch.compile`` traces them.

Eagerly, the public functions call the Rust ops directly (their autograd nodes are the C++
bridge). Under ``torch.compile`` they dispatch to these custom ops instead, which the compiler
sees as opaque nodes with known output shapes (the fake implementations), so a module using
them compiles with ``fullgraph=True``. Each differentiable op has a companion ``*_backward``
op; it recomputes the forward through the Rust op on detached inputs and applies the Rust
analytic backward (``torch.autograd.grad``), trading a second forward for a backward that the
compiler can also treat as one opaque node.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import List, Tuple

import torch
from torch import Tensor

from . import _native

__all__: List[str] = []


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


class _autograd_inside_op:
    """Custom-op implementations run below the autograd dispatch key (the autograd key is in
    the thread's excluded set), so nothing they compute would record a graph. The backward ops
    recompute their forward with autograd, so they lift that exclusion for their duration."""

    def __enter__(self):
        self.key = torch._C.DispatchKey.AutogradFunctionality
        self.was_excluded = torch._C._dispatch_tls_is_dispatch_key_excluded(self.key)
        torch._C._dispatch_tls_set_dispatch_key_excluded(self.key, False)
        self.grad_mode = torch.enable_grad()
        self.grad_mode.__enter__()

    def __exit__(self, *exc):
        self.grad_mode.__exit__(*exc)
        torch._C._dispatch_tls_set_dispatch_key_excluded(self.key, self.was_excluded)


def _leaf(t: Tensor, needed: bool) -> Tensor:
    return t.detach().requires_grad_(needed)


def _grads(out: Tensor, grad: Tensor, inputs: List[Tensor]) -> List[Tensor]:
    """d out / d inputs · grad, with zeros where an input does not require grad."""
    wanted = [t for t in inputs if t.requires_grad]
    got = iter(torch.autograd.grad(out, wanted, grad, allow_unused=True) if wanted else [])
    result = []
    for t in inputs:
        g = next(got) if t.requires_grad else None
        result.append(torch.zeros_like(t) if g is None else g)
    return result


# ---- PatchNCE --------------------------------------------------------------------------------

@torch.library.custom_op("qs_attn::patch_nce_loss", mutates_args=())
def patch_nce_loss(q: Tensor, k: Tensor, tau: float, num_images: int, reduction: str, detach_keys: bool) -> Tensor:
    with torch.no_grad():
        return _native.patch_nce_loss(q, k, tau, num_images, reduction, detach_keys)


@patch_nce_loss.register_fake
def _(q, k, tau, num_images, reduction, detach_keys):
    return q.new_empty(() if reduction == "mean" else (q.shape[0],), dtype=_compute_dtype(q))


@torch.library.custom_op("qs_attn::patch_nce_loss_backward", mutates_args=())
def patch_nce_loss_backward(q: Tensor, k: Tensor, grad: Tensor, tau: float, num_images: int, reduction: str,
                            detach_keys: bool) -> Tuple[Tensor, Tensor]:
    with _autograd_inside_op():
        q_, k_ = _leaf(q, True), _leaf(k, not detach_keys)
        out = _native.patch_nce_loss(q_, k_, tau, num_images, reduction, detach_keys)
        gq, gk = _grads(out, grad, [q_, k_])
    return gq.contiguous(), gk.contiguous()


@patch_nce_loss_backward.register_fake
def _(q, k, grad, tau, num_images, reduction, detach_keys):
    return torch.empty_like(q), torch.empty_like(k)


def _nce_setup(ctx, inputs, output):
    q, k, *params = inputs
    ctx.save_for_backward(q, k)
    ctx.params = params


def _nce_backward(ctx, grad):
    q, k = ctx.saved_tensors
    tau, num_images, reduction, detach_keys = ctx.params
    gq, gk = torch.ops.qs_attn.patch_nce_loss_backward(q, k, grad, tau, num_images, reduction, detach_keys)
    return gq, (None if detach_keys else gk), None, None, None, None


patch_nce_loss.register_autograd(_nce_backward, setup_context=_nce_setup)


# ---- QS-Attn selection and routing -----------------------------------------------------------

@torch.library.custom_op("qs_attn::select_indices", mutates_args=())
def select_indices(feat: Tensor, num_patches: int, mode: str, window: int, local_layout: str) -> Tensor:
    with torch.no_grad():
        return _native.qs_select(feat, num_patches, mode, window, local_layout, True)[0]


@select_indices.register_fake
def _(feat, num_patches, mode, window, local_layout):
    return feat.new_empty((feat.shape[0], num_patches), dtype=torch.int64)


def _route(source: Tensor, indices: Tensor, values: Tensor, mode: str, window: int, local_layout: str) -> Tensor:
    """Routes `values` with the attention of `source` at `indices` through the Rust ops."""
    b, c, h, w = source.shape
    if mode == "local":  # the window attention (and, deterministically, the same indices)
        indices, flat, local_attn, _, _ = _native.qs_select(source, indices.shape[1], mode, window, local_layout, False)
    else:
        flat, local_attn = source.flatten(2).transpose(1, 2), None
    sel = SimpleNamespace(indices=indices, source=flat, local_attn=local_attn, mode=mode, window=window,
                          local_layout=local_layout, height=h, width=w)
    return _native.qs_cross_route(values, sel) if mode == "cross" else _native.qs_route(values, sel)


@torch.library.custom_op("qs_attn::route", mutates_args=())
def route(source: Tensor, indices: Tensor, values: Tensor, mode: str, window: int, local_layout: str) -> Tensor:
    with torch.no_grad():
        return _route(source, indices, values, mode, window, local_layout).contiguous()


@route.register_fake
def _(source, indices, values, mode, window, local_layout):
    return values.new_empty((values.shape[0], indices.shape[1], values.shape[1]))


@torch.library.custom_op("qs_attn::route_backward", mutates_args=())
def route_backward(source: Tensor, indices: Tensor, values: Tensor, grad: Tensor, mode: str, window: int,
                   local_layout: str, source_needs_grad: bool, values_need_grad: bool) -> Tuple[Tensor, Tensor]:
    with _autograd_inside_op():
        s_, v_ = _leaf(source, source_needs_grad), _leaf(values, values_need_grad)
        out = _route(s_, indices, v_, mode, window, local_layout)
        gs, gv = _grads(out, grad, [s_, v_])
    return gs.contiguous(), gv.contiguous()  # the layout the fake implementation promises


@route_backward.register_fake
def _(source, indices, values, grad, mode, window, local_layout, source_needs_grad, values_need_grad):
    return torch.empty_like(source), torch.empty_like(values)


def _route_setup(ctx, inputs, output):
    source, indices, values, *params = inputs
    ctx.save_for_backward(source, indices, values)
    ctx.params = params


def _route_backward(ctx, grad):
    source, indices, values = ctx.saved_tensors
    need_source, _, need_values = ctx.needs_input_grad[:3]
    gs, gv = torch.ops.qs_attn.route_backward(source, indices, values, grad, *ctx.params, need_source, need_values)
    return (gs if need_source else None), None, (gv if need_values else None), None, None, None


route.register_autograd(_route_backward, setup_context=_route_setup)
