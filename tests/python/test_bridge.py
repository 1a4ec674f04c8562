"""The Rust custom-autograd bridge as PyTorch sees it: real graph nodes, saved-tensor version
checks, first-order-only gradients that fail loudly when differentiated twice, no graph under
no_grad, errors as Python exceptions, and backward on another thread."""

import threading

import pytest
import torch

import qs_attn


def _rows(seed, rows=8, dim=16, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(rows, dim, generator=g, dtype=dtype), dim=1)


def test_output_is_a_node_of_the_torch_graph():
    q = _rows(0).requires_grad_()
    loss = qs_attn.patch_nce_loss(q, _rows(1))
    assert loss.grad_fn is not None
    assert loss.requires_grad
    # An ordinary torch op downstream and upstream: gradients flow through both.
    w = torch.randn(16, 16, dtype=torch.float64, requires_grad=True)
    loss2 = qs_attn.patch_nce_loss(q @ w, _rows(1)) * 2.0
    loss2.backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


def test_no_graph_under_no_grad():
    q = _rows(0).requires_grad_()
    with torch.no_grad():
        loss = qs_attn.patch_nce_loss(q, _rows(1))
    assert loss.grad_fn is None and not loss.requires_grad


def test_in_place_change_of_a_saved_input_is_detected():
    q = _rows(0).requires_grad_()
    x = q * 1.0  # a non-leaf saved by the op
    loss = qs_attn.patch_nce_loss(x, _rows(1))
    with torch.no_grad():
        x.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_second_order_gradient_raises_instead_of_being_wrong():
    q = _rows(0).requires_grad_()
    loss = qs_attn.patch_nce_loss(q, _rows(1))
    (grad,) = torch.autograd.grad(loss, q, create_graph=True)
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        grad.sum().backward()


def test_qs_gradients_accumulate_like_any_torch_graph():
    g = torch.Generator().manual_seed(2)
    src = (0.3 * torch.randn(2, 4, 5, 5, generator=g, dtype=torch.float64)).requires_grad_()
    sel = qs_attn.qs_select(src, 6)
    out = qs_attn.qs_route(src, sel).sum()
    out.backward(retain_graph=True)
    first = src.grad.clone()
    out.backward()  # retain_graph: the saved tensors are still there; gradients add up
    torch.testing.assert_close(src.grad, 2 * first)


def test_backward_on_another_thread():
    q = _rows(0).requires_grad_()
    loss = qs_attn.patch_nce_loss(q, _rows(1))
    errors = []

    def run():
        try:
            loss.backward()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert not errors and q.grad is not None


def test_errors_inside_ops_are_python_exceptions():
    with pytest.raises(ValueError, match="cannot be split into 3 images"):
        qs_attn.patch_nce_loss(_rows(0), _rows(1), num_images=3)
    # the interpreter is fine afterwards
    assert torch.isfinite(qs_attn.patch_nce_loss(_rows(0), _rows(1)))
