"""The ops on CUDA against the float64 CPU oracle (reference.py): values and gradients of every
input, every mode, batch > 1, at a training-like size; half/bfloat16 inputs compute in float32.
Runs where a GPU is present (the lent GPU machine); CI has none, so it is skipped there."""

import pytest
import torch

import qs_attn
import reference as ref

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CONFIGS = [("global", "geometric"), ("cross", "geometric"), ("local", "geometric"),
           ("local", "reference"), ("local_global", "reference")]


def _nce_inputs(keys, queries):
    return (torch.nn.functional.normalize(queries.flatten(0, 1), dim=1),
            torch.nn.functional.normalize(keys.flatten(0, 1), dim=1))


def ours(src, tgt, n, mode, layout):
    sel = qs_attn.qs_select(src, n, mode, 7, layout)
    keys = qs_attn.qs_route(src, sel)
    queries = qs_attn.qs_cross_route(tgt, sel) if mode == "cross" else qs_attn.qs_route(tgt, sel)
    loss = qs_attn.patch_nce_loss(*_nce_inputs(keys, queries), num_images=src.shape[0], reduction="none")
    return sel.indices, sel.attn, keys, queries, loss


def oracle(src, tgt, n, mode, layout):
    sel = ref.select(src, n, mode, 7, layout)
    keys = ref.route(src, sel)
    queries = ref.cross_route(tgt, sel) if mode == "cross" else ref.route(tgt, sel)
    loss = ref.patch_nce(*_nce_inputs(keys, queries), num_images=src.shape[0])
    return sel.indices, sel.attn, keys, queries, loss


@pytest.mark.parametrize("mode,layout", CONFIGS)
def test_cuda_matches_cpu_float64_oracle(mode, layout):
    b, c, h, w, n = 2, 32, 16, 16, 32
    src64 = ref.tie_free_feat((b, c, h, w), n, [ref.entropy_fn(mode, 7, layout)], dtype=torch.float64,
                              scale=0.3, min_gap=1e-5, seed=3)
    tgt64 = 0.3 * torch.randn(b, c, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    weights = torch.randn(b * n, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    s_ref, t_ref = src64.clone().requires_grad_(), tgt64.clone().requires_grad_()
    idx_ref, attn_ref, keys_ref, queries_ref, loss_ref = oracle(s_ref, t_ref, n, mode, layout)
    (loss_ref * weights).sum().backward()

    s, t = (src64.float().cuda().requires_grad_(), tgt64.float().cuda().requires_grad_())
    idx, attn, keys, queries, loss = ours(s, t, n, mode, layout)
    assert idx.is_cuda and attn.is_cuda and loss.is_cuda
    (loss * weights.float().cuda()).sum().backward()

    assert torch.equal(idx.cpu(), idx_ref)
    tol = dict(atol=1e-4, rtol=1e-4)  # fp32 (and TF32-free) arithmetic vs an fp64 oracle
    torch.testing.assert_close(attn.cpu().double(), attn_ref, **tol)
    torch.testing.assert_close(keys.cpu().double(), keys_ref, **tol)
    torch.testing.assert_close(queries.cpu().double(), queries_ref, **tol)
    torch.testing.assert_close(loss.cpu().double(), loss_ref, **tol)
    torch.testing.assert_close(s.grad.cpu().double(), s_ref.grad, **tol)
    torch.testing.assert_close(t.grad.cpu().double(), t_ref.grad, **tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_low_precision_inputs_compute_in_float32(dtype):
    torch.manual_seed(0)
    src = (0.3 * torch.randn(2, 32, 16, 16, device="cuda")).to(dtype).requires_grad_()
    tgt = (0.3 * torch.randn(2, 32, 16, 16, device="cuda")).to(dtype).requires_grad_()
    sel = qs_attn.qs_select(src, 64, "global")
    assert sel.attn.dtype == torch.float32
    queries = qs_attn.qs_route(tgt, sel)
    assert queries.dtype == dtype
    keys = qs_attn.qs_route(src, sel)
    q = torch.nn.functional.normalize(queries.flatten(0, 1).float(), dim=1).to(dtype)
    k = torch.nn.functional.normalize(keys.flatten(0, 1).float(), dim=1).to(dtype)
    loss = qs_attn.patch_nce_loss(q, k, num_images=2)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert src.grad.dtype == dtype and tgt.grad.dtype == dtype
    assert torch.isfinite(src.grad.float()).all() and torch.isfinite(tgt.grad.float()).all()
    # Same selection as the float32 computation on the same (rounded) values.
    sel32 = qs_attn.qs_select(src.detach().float(), 64, "global")
    assert torch.equal(sel.indices, sel32.indices)
    torch.testing.assert_close(sel.attn, sel32.attn, atol=1e-6, rtol=1e-5)


def test_cuda_and_cpu_inputs_mixed_raise():
    src = torch.randn(1, 4, 4, 4, device="cuda")
    sel = qs_attn.qs_select(src, 4)
    with pytest.raises(ValueError, match="same device"):
        qs_attn.qs_route(torch.randn(1, 4, 4, 4), sel)
    with pytest.raises(ValueError, match="same device"):
        qs_attn.patch_nce_loss(torch.randn(4, 8, device="cuda"), torch.randn(4, 8))


def _qs_nce_step(srcs, tgts, mode):
    """Forward and backward of the method's QS + PatchNCE term on each (source, translation)
    pair; gradients accumulate into the maps' ``.grad``."""
    loss = 0.0
    for src, tgt in zip(srcs, tgts):
        sel = qs_attn.qs_select(src, 64, mode, 7, "reference")
        keys, queries = qs_attn.qs_route(src, sel), qs_attn.qs_route(tgt, sel)
        loss = loss + qs_attn.patch_nce_loss(*_nce_inputs(keys, queries), num_images=src.shape[0])
    loss.backward()
    return loss


@pytest.mark.parametrize("mode", ["global", "local"])
def test_qs_step_replays_in_a_cuda_graph(mode):
    """The ops launch no host synchronisation and no pageable copy, so a whole fwd + bwd step
    can be captured once and replayed on new values (what removes the per-kernel launch cost
    on a GPU); the replay equals eager execution."""
    torch.manual_seed(0)
    maps = lambda: [torch.randn(2, 32, 16, 16, device="cuda", requires_grad=True) for _ in range(2)]  # noqa: E731
    srcs, tgts = maps(), maps()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch.cuda.graph requires
        for _ in range(3):
            _qs_nce_step(srcs, tgts, mode)
    torch.cuda.current_stream().wait_stream(side)
    for m in srcs + tgts:
        m.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = _qs_nce_step(srcs, tgts, mode)
    for trial in range(2):
        new = [torch.randn_like(m) for m in srcs + tgts]
        with torch.no_grad():
            for m, v in zip(srcs + tgts, new):
                m.copy_(v)
                m.grad.zero_()
        graph.replay()
        fresh = [v.clone().requires_grad_() for v in new]
        eager_loss = _qs_nce_step(fresh[:2], fresh[2:], mode)
        torch.testing.assert_close(static_loss, eager_loss, rtol=1e-5, atol=1e-6)
        for m, e in zip(srcs + tgts, fresh):
            torch.testing.assert_close(m.grad, e.grad, rtol=1e-5, atol=1e-6)
