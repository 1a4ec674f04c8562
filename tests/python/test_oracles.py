"""The oracles T3, T4, T5, T6, T8, T9, T10, T11 of docs/algorithm.md §15 against qs_attn (T7 =
GAN losses: not part of this package). Expected numbers are those of the document; identity
checks use reference.py's geometric neighbours."""

import math

import pytest
import torch

import qs_attn
import reference as ref
from _util import no_grad_reached

# ----------------------------------------------------------------------------- T3

T3_ENT_B0 = [2.771527, 2.735202, 2.653264, 2.538711, 2.746446, 2.672732, 2.563512, 2.755762,
             2.690772, 2.587488, 2.763081, 2.707269, 2.610520, 2.768350, 2.722113, 2.632486]
T3_ORDER_B0 = [3, 6, 9, 12, 15, 2, 5, 8, 11, 14, 1, 4, 7, 10, 13, 0]
T3_ORDER_B1 = [0, 13, 10, 7, 4, 1, 14, 11, 8, 5, 2, 15, 12, 9, 6, 3]


def test_t3_global_entropy_ordering():
    f = ref.t3_map(torch.float32)
    ent = qs_attn.qs_entropy(f, mode="global")
    assert ent.shape == (2, 16)
    torch.testing.assert_close(ent[0], torch.tensor(T3_ENT_B0), atol=1e-6, rtol=1e-5)
    full = qs_attn.qs_select(f, 16, mode="global")
    assert full.indices[0].tolist() == T3_ORDER_B0
    assert full.indices[1].tolist() == T3_ORDER_B1
    sel = qs_attn.qs_select(f, 4, mode="global")
    assert sel.indices.tolist() == [T3_ORDER_B0[:4], T3_ORDER_B1[:4]]
    assert tuple(sel.attn.shape) == (2, 4, 16)
    v = qs_attn.qs_route(f, sel)
    assert tuple(v.shape) == (2, 4, 3)
    assert v.flatten(0, 1).shape == (8, 3)
    u = torch.tensor([1.0, 2.0, 2.0]) / 3
    torch.testing.assert_close(v[0, 0], 1.157717 * u, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.tensor([0.385906, 0.771812, 0.771812]), v[0, 0],
                               atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ref.l2norm(v[0, 0]), u, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- T4


def test_t4_generic_global():
    f = ref.sin_map(2, 3, 4, 4)
    ent = qs_attn.qs_entropy(f, mode="global")
    sel = qs_attn.qs_select(f, 4, mode="global")
    assert sel.indices[0].tolist() == [0, 15, 1, 14]
    assert sel.indices[1].tolist() == [15, 0, 14, 1]
    torch.testing.assert_close(ent[0, [0, 15, 1, 14]],
                               torch.tensor([1.84726, 2.01803, 2.24613, 2.24964]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent[1, [15, 0, 14, 1]],
                               torch.tensor([1.54824, 1.98218, 2.03371, 2.12235]), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- T5


def test_t5_log_zero_fp32():
    f = torch.tensor([20.0, 1.0, -1.0, 0.0]).reshape(1, 1, 2, 2)
    ent = qs_attn.qs_entropy(f, mode="global")[0]
    assert torch.isfinite(ent).all(), ent
    assert ent[0].item() == 0.0, "row 0 softmax is one-hot in fp32: entropy must be exactly 0"
    torch.testing.assert_close(ent[1], torch.tensor(1.636e-7), atol=1e-9, rtol=0)
    torch.testing.assert_close(ent[2:], torch.tensor([0.8323957, 1.3862944]), atol=1e-6, rtol=1e-5)
    # no NaN in selection, attention, routing or its gradient
    x = f.clone().requires_grad_()
    sel = qs_attn.qs_select(x, 4, mode="global")
    assert sel.indices[0, 0].item() == 0  # lowest entropy (0.0) first
    assert sel.indices[0].tolist() == [0, 1, 2, 3]
    assert torch.isfinite(sel.attn).all()
    out = qs_attn.qs_route(x, sel)
    assert torch.isfinite(out).all()
    g, = torch.autograd.grad(out.sum() + sel.attn.pow(2).sum(), [x])
    assert torch.isfinite(g).all()


def test_t5_log_zero_fp64():
    f = torch.tensor([20.0, 1.0, -1.0, 0.0], dtype=torch.float64).reshape(1, 1, 2, 2)
    ent = qs_attn.qs_entropy(f, mode="global")[0]
    assert torch.isfinite(ent).all()
    exact = [ref.exact_entropy([20.0 * v for v in (20.0, 1.0, -1.0, 0.0)]),
             ref.exact_entropy([20.0, 1.0, -1.0, 0.0]),
             ref.exact_entropy([-20.0, -1.0, 1.0, 0.0]),
             math.log(4.0)]
    torch.testing.assert_close(ent, torch.tensor(exact, dtype=torch.float64), atol=1e-12, rtol=1e-9)


def test_t5_local_log_zero():
    # local mode with a one-hot window row: also no NaN
    f = torch.zeros(1, 1, 3, 3)
    f[0, 0, 1, 1] = 30.0
    for layout in ("geometric", "reference"):
        ent = qs_attn.qs_entropy(f, mode="local", window=3, local_layout=layout)
        assert torch.isfinite(ent).all()
        assert ent[0, 4].item() == 0.0


# ----------------------------------------------------------------------------- T6


def _eye_rows(M, D=256):
    return torch.eye(D)[:M].clone()


@pytest.mark.parametrize("M,fp32_val", [(256, 1.58878e-4), (4, 1.79e-6)])
def test_t6_orthonormal(M, fp32_val):
    Q = _eye_rows(M)
    loss = qs_attn.patch_nce_loss(Q, Q.clone(), tau=0.07, reduction="none")
    assert loss.shape == (M,)
    exact = math.log(1 + (M - 1) * math.exp(-1 / 0.07) + math.exp(-11 / 0.07))
    torch.testing.assert_close(loss, torch.full((M,), fp32_val), atol=1e-6, rtol=0)
    torch.testing.assert_close(loss, torch.full((M,), exact), atol=1e-6, rtol=0)
    mean = qs_attn.patch_nce_loss(Q, Q.clone(), tau=0.07)
    torch.testing.assert_close(mean, loss.mean())


@pytest.mark.parametrize("M,val", [(4, 1.3862944), (256, 5.5451775)])
def test_t6_identical_rows(M, val):
    v = torch.zeros(M, 256)
    v[:, 3] = 1.0
    loss = qs_attn.patch_nce_loss(v, v.clone(), reduction="none")
    torch.testing.assert_close(loss, torch.full((M,), val), atol=1e-5, rtol=1e-6)


def test_t6_cyclic_shift():
    Q = torch.eye(256)
    K = torch.roll(torch.eye(256), shifts=-1, dims=0)  # K_i = e_{(i+1) mod M}
    loss = qs_attn.patch_nce_loss(Q, K, reduction="none")
    torch.testing.assert_close(loss, torch.full((256,), 14.2858736), atol=1e-4, rtol=1e-6)


def test_t6_no_crossing_between_images():
    one = _eye_rows(4)
    Q = torch.cat([one, one])
    loss = qs_attn.patch_nce_loss(Q, Q.clone(), num_images=2, reduction="none")
    single = qs_attn.patch_nce_loss(one, one.clone(), reduction="none")
    assert loss.shape == (8,)
    torch.testing.assert_close(loss, single.repeat(2))
    torch.testing.assert_close(loss, torch.full((8,), 1.79e-6), atol=1e-6, rtol=0)
    # control: treated as ONE image of 8 rows the duplicates become negatives (≈ ln 2)
    crossing = qs_attn.patch_nce_loss(Q, Q.clone(), num_images=1, reduction="none")
    assert (crossing > 0.6).all()


def test_t6_averaging():
    one = _eye_rows(4)
    Q = torch.cat([one, one])
    per = [qs_attn.patch_nce_loss(Q, Q.clone(), num_images=2) for _ in range(5)]
    L = sum(per) / 5
    torch.testing.assert_close(L, torch.tensor(1.79e-6), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- T8


@pytest.mark.parametrize("layout", ["geometric", "reference"])
def test_t8_border_effect(layout):
    f = torch.ones(1, 1, 8, 8)
    ent = qs_attn.qs_entropy(f, mode="local", window=7, local_layout=layout)[0]
    expected = torch.zeros(64)
    for h in range(8):
        for w in range(8):
            nh = sum(1 for d in range(-3, 4) if 0 <= h + d < 8)
            nw = sum(1 for d in range(-3, 4) if 0 <= w + d < 8)
            expected[h * 8 + w] = ref.local_border_entropy(nh * nw)
    # docs/algorithm.md §15 tolerance: 1e-5 relative (atol: the printed digits)
    torch.testing.assert_close(ent, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ent[[0, 7, 56, 63]], torch.full((4,), 3.768608), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ent[3 * 8 + 3], torch.tensor(3.891820), atol=1e-6, rtol=1e-5)
    sel = qs_attn.qs_select(f, 4, mode="local", window=7, local_layout=layout)
    assert set(sel.indices[0].tolist()) == {0, 7, 56, 63}


# ----------------------------------------------------------------------------- T9

T9_GEO_B0 = [63, 56, 31, 24, 62, 16, 5, 57]
T9_GEO_B1 = [62, 55, 63, 8, 61, 2, 1, 9]
T9_GEO_ENT_B0 = [2.49389, 2.67646, 2.71007, 2.72671, 2.74489, 2.76281, 2.76637, 2.80389]
T9_REF_B0 = [60, 59, 1, 2, 53, 54, 15, 61]
T9_REF_B1 = [7, 56, 57, 6, 58, 14, 39, 24]
T9_REF_ENT_B0 = [2.90314, 2.91594, 2.93741, 2.93752, 2.94338, 2.95580, 2.96067, 2.96079]


def test_t9_geometric():
    f = ref.sin_map(2, 3, 8, 8)
    ent = qs_attn.qs_entropy(f, mode="local", window=7, local_layout="geometric")
    sel = qs_attn.qs_select(f, 8, mode="local", window=7, local_layout="geometric")
    assert sel.indices[0].tolist() == T9_GEO_B0
    assert sel.indices[1].tolist() == T9_GEO_B1
    torch.testing.assert_close(ent[0, T9_GEO_B0], torch.tensor(T9_GEO_ENT_B0), atol=1e-5, rtol=1e-5)
    assert tuple(sel.attn.shape) == (2, 8, 49)
    v = qs_attn.qs_route(f, sel)
    torch.testing.assert_close(v[0, 0], torch.tensor([0.936874, 0.743747, -0.538970]),
                               atol=1e-6, rtol=1e-5)


def test_t9_reference_selection():
    f = ref.sin_map(2, 3, 8, 8)
    ent = qs_attn.qs_entropy(f, mode="local", window=7, local_layout="reference")
    sel = qs_attn.qs_select(f, 8, mode="local", window=7, local_layout="reference")
    assert set(sel.indices[0].tolist()) == set(T9_REF_B0)
    assert set(sel.indices[1].tolist()) == set(T9_REF_B1)
    # sorted values are tie-order independent
    torch.testing.assert_close(ent[0, sel.indices[0]], torch.tensor(T9_REF_ENT_B0), atol=1e-5, rtol=1e-5)
    # per index, allowing the documented near-ties (pairs within 1.2e-4) to swap
    torch.testing.assert_close(ent[0, T9_REF_B0], torch.tensor(T9_REF_ENT_B0), atol=1.5e-4, rtol=0)
    # pairs as sets: (60, 59) (1, 2) (53, 54) (15, 61) in this order of pairs
    got = sel.indices[0].tolist()
    assert got[:2] == [60, 59] and set(got[2:4]) == {1, 2} and got[4:6] == [53, 54] \
        and set(got[6:8]) == {15, 61}, got


def _nc_identity_expected(f, sel_idx, attn, k):
    B, C = f.shape[:2]
    Nb = ref.geometric_neighbours(f, k)  # (B, P, k², C)
    exp = torch.zeros(B, C, C, dtype=f.dtype)
    for b in range(B):
        for r in range(C):
            for c in range(C):
                exp[b, r, c] = (attn[b, r, :] * Nb[b, sel_idx[b, c], :, r]).sum()
    return exp


def test_t9_reference_routing_nc_identity():
    f = ref.sin_map(2, 3, 8, 8)
    sel = qs_attn.qs_select(f, 3, mode="local", window=7, local_layout="reference")
    out = qs_attn.qs_route(f, sel)
    exp = _nc_identity_expected(f, sel.indices, sel.attn.detach(), 7)
    torch.testing.assert_close(out, exp, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(1, 4, 5, 5), (2, 4, 5, 6), (1, 8, 6, 6)])
def test_reference_routing_nc_identity_random(shape):
    C = shape[1]
    f = ref.tie_free_feat(shape, C, [ref.entropy_fn("local", 7, "reference")], torch.float64)
    sel = qs_attn.qs_select(f, C, mode="local", window=7, local_layout="reference")
    out = qs_attn.qs_route(f, sel)
    exp = _nc_identity_expected(f, sel.indices, sel.attn, 7)
    torch.testing.assert_close(out, exp, atol=1e-10, rtol=1e-10)


def test_reference_routing_general_formula():
    f = ref.tie_free_feat((2, 6, 5, 5), 3, [ref.entropy_fn("local", 7, "reference")], torch.float64)
    sel = qs_attn.qs_select(f, 3, mode="local", window=7, local_layout="reference")
    out = qs_attn.qs_route(f, sel)
    exp = ref.local_reference_route_formula(sel.attn, sel.indices, f, 7)
    torch.testing.assert_close(out, exp, atol=1e-10, rtol=1e-10)


# ----------------------------------------------------------------------------- T10


@pytest.mark.parametrize("layout,b0,b1", [("reference", T9_REF_B0, T9_REF_B1),
                                          ("geometric", T9_GEO_B0, T9_GEO_B1)])
def test_t10_local_global(layout, b0, b1):
    f = ref.sin_map(2, 3, 8, 8)
    sel = qs_attn.qs_select(f, 8, mode="local_global", window=7, local_layout=layout)
    assert tuple(sel.attn.shape) == (2, 8, 64)
    torch.testing.assert_close(sel.attn.sum(-1), torch.ones(2, 8), atol=1e-6, rtol=0)
    assert set(sel.indices[0].tolist()) == set(b0)
    assert set(sel.indices[1].tolist()) == set(b1)
    A = ref.global_attn(ref.flatten(f))
    torch.testing.assert_close(sel.attn, ref.gather_rows(A, sel.indices), atol=1e-6, rtol=1e-5)
    v = qs_attn.qs_route(f, sel)
    torch.testing.assert_close(v, torch.bmm(sel.attn, ref.flatten(f)), atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- T11


def test_t11_gradient_flow():
    g = torch.Generator().manual_seed(0)
    src0 = torch.randn(1, 4, 4, 4, generator=g)
    tgt0 = torch.randn(1, 4, 4, 4, generator=g)
    for detach in (False, True):
        src = src0.clone().requires_grad_()
        tgt = tgt0.clone().requires_grad_()
        sel = qs_attn.qs_select(src, 4, mode="global", detach_attn=detach)
        k = ref.l2norm(qs_attn.qs_route(src, sel).flatten(0, 1))
        q = ref.l2norm(qs_attn.qs_route(tgt, sel).flatten(0, 1))
        loss = qs_attn.patch_nce_loss(q, k)  # keys detached by default
        gs, gt = torch.autograd.grad(loss, [src, tgt], allow_unused=True)
        assert gt is not None and gt.abs().max() > 0, "target map must get gradient"
        if detach:
            assert no_grad_reached(gs), "A_QS detached: source must get no gradient"
        else:
            assert gs is not None and gs.abs().max() > 0, \
                "source map must get gradient via A_QS in the query branch"


# ------------------------------------------------------------ docs/algorithm.md Q5 / Q6 ties


@pytest.mark.parametrize("scale", [6.0, 8.0])
@pytest.mark.parametrize("mode,window,layout", [("global", 7, "geometric"),
                                                ("local", 3, "geometric"),
                                                ("local", 7, "reference"),
                                                ("local_global", 3, "geometric"),
                                                ("cross", 7, "geometric")])
def test_zero_entropy_ties_fp32(scale, mode, window, layout):
    """Large unscaled features: many rows have entropy exactly 0 in fp32 (docs/algorithm.md Q5).
    The set of zero rows must be the reference formula's (Q6: no epsilon, φ(0) = 0, no flush of
    tiny products), and ties go to the lower raster index (stable sort)."""
    g = torch.Generator().manual_seed(0)
    f = scale * torch.randn(2, 16, 8, 8, generator=g)
    emode = "global" if mode in ("global", "cross") else "local"
    exp = ref.entropy(f, emode, window, layout)
    got = qs_attn.qs_entropy(f, mode=emode, window=window, local_layout=layout)
    assert torch.equal(got == 0, exp == 0), "zero-entropy rows differ from the reference formula"
    n_zero = int((exp == 0).sum(1).min())
    assert n_zero >= 2
    sel = qs_attn.qs_select(f, n_zero, mode=mode, window=window, local_layout=layout)
    expected = ref.stable_select(exp, n_zero)
    for b in range(2):
        zeros = torch.nonzero(exp[b] == 0).flatten()[:n_zero]
        assert expected[b].tolist() == zeros.tolist()
    assert torch.equal(sel.indices, expected), (sel.indices, expected)
