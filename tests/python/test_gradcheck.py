"""torch.autograd.gradcheck (float64) of every differentiable qs_attn op.

Inputs are tie-free (consecutive sorted entropies over the first N+1 positions differ by
> 1e-4), so the selection does not change under gradcheck's eps = 1e-6 perturbation."""

import pytest
import torch
from torch.autograd import gradcheck

import qs_attn
import reference as ref

D64 = torch.float64

# (mode, window, layout, (B, C, H, W), N)
SELECT_CASES = [
    ("global", 7, "geometric", (2, 3, 4, 4), 5),
    ("cross", 7, "geometric", (2, 3, 4, 4), 5),
    ("local", 3, "geometric", (2, 3, 5, 5), 5),
    ("local", 3, "reference", (2, 3, 5, 5), 5),
    ("local", 7, "geometric", (1, 3, 4, 4), 4),
    ("local", 7, "reference", (1, 3, 4, 4), 4),
    ("local_global", 3, "geometric", (2, 3, 4, 4), 5),
    ("local_global", 3, "reference", (2, 3, 4, 4), 5),
]


def _id(c):
    return f"{c[0]}-k{c[1]}-{c[2]}-B{c[3][0]}"


def _inputs(case, seed=0):
    mode, window, layout, shape, N = case
    src = ref.tie_free_feat(shape, N, [ref.entropy_fn(mode, window, layout)], dtype=D64,
                            scale=0.7, min_gap=1e-4, seed=seed)
    g = torch.Generator().manual_seed(500 + seed)
    tgt = 0.7 * torch.randn(*shape, generator=g, dtype=D64)
    return src.requires_grad_(), tgt.requires_grad_()


def _select(src, case):
    mode, window, layout, _, N = case
    return qs_attn.qs_select(src, N, mode=mode, window=window, local_layout=layout)


@pytest.mark.parametrize("case", SELECT_CASES, ids=_id)
def test_gradcheck_select_attn(case):
    src, _ = _inputs(case)
    assert gradcheck(lambda s: _select(s, case).attn, (src,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", SELECT_CASES, ids=_id)
def test_gradcheck_route_key_branch(case):
    src, _ = _inputs(case)
    assert gradcheck(lambda s: qs_attn.qs_route(s, _select(s, case)), (src,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", [c for c in SELECT_CASES if c[0] != "cross"], ids=_id)
def test_gradcheck_route_query_branch(case):
    src, tgt = _inputs(case)
    assert gradcheck(lambda s, t: qs_attn.qs_route(t, _select(s, case)), (src, tgt),
                     eps=1e-6, atol=1e-7)


def test_gradcheck_cross_route():
    case = ("cross", 7, "geometric", (2, 3, 4, 4), 5)
    src, tgt = _inputs(case)
    assert gradcheck(lambda s, t: qs_attn.qs_cross_route(t, _select(s, case)), (src, tgt),
                     eps=1e-6, atol=1e-7)


def test_gradcheck_cross_route_non_square_target():
    case = ("cross", 7, "geometric", (1, 3, 3, 5), 4)
    src, tgt = _inputs(case, seed=3)
    assert gradcheck(lambda s, t: qs_attn.qs_cross_route(t, _select(s, case)), (src, tgt),
                     eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("detach_keys", [True, False])
@pytest.mark.parametrize("num_images", [None, 2])
def test_gradcheck_patch_nce(reduction, detach_keys, num_images):
    g = torch.Generator().manual_seed(1)
    q = ref.l2norm(torch.randn(6, 5, generator=g, dtype=D64))
    k = ref.l2norm(q + 0.3 * torch.randn(6, 5, generator=g, dtype=D64))
    q.requires_grad_()
    if detach_keys:
        # keys are a constant of the loss' gradient: only q is checked
        fn = lambda qq: qs_attn.patch_nce_loss(qq, k, tau=0.07, num_images=num_images,
                                               reduction=reduction, detach_keys=True)
        assert gradcheck(fn, (q,), eps=1e-6, atol=1e-6)
    else:
        k.requires_grad_()
        fn = lambda qq, kk: qs_attn.patch_nce_loss(qq, kk, tau=0.07, num_images=num_images,
                                                   reduction=reduction, detach_keys=False)
        assert gradcheck(fn, (q, k), eps=1e-6, atol=1e-6)
