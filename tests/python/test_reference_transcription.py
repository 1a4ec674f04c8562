"""Validates the oracle (reference.py) against the numbers (§15) and index formulas (§8.3) of
docs/algorithm.md. Does not need qs_attn."""

import math

import pytest
import torch

import reference as ref


def test_flatten_raster():
    f = torch.arange(2 * 3 * 4 * 5, dtype=torch.float64).reshape(2, 3, 4, 5)
    X = ref.flatten(f)
    assert X.shape == (2, 20, 3)
    for b in range(2):
        for c in range(3):
            for h in range(4):
                for w in range(5):
                    assert X[b, h * 5 + w, c] == f[b, c, h, w]


# ----------------------------------------------------------------------------- T3

T3_ENT_B0 = [2.771527, 2.735202, 2.653264, 2.538711, 2.746446, 2.672732, 2.563512, 2.755762,
             2.690772, 2.587488, 2.763081, 2.707269, 2.610520, 2.768350, 2.722113, 2.632486]
T3_ORDER_B0 = [3, 6, 9, 12, 15, 2, 5, 8, 11, 14, 1, 4, 7, 10, 13, 0]
T3_ORDER_B1 = [0, 13, 10, 7, 4, 1, 14, 11, 8, 5, 2, 15, 12, 9, 6, 3]


def test_t3_reference():
    f = ref.t3_map(torch.float32)
    s_b0 = [0.1, 0.6, 1.1, 1.6, 0.5, 1.0, 1.5, 0.4, 0.9, 1.4, 0.3, 0.8, 1.3, 0.2, 0.7, 1.2]
    u = torch.tensor([1.0, 2.0, 2.0]) / 3
    torch.testing.assert_close(ref.flatten(f)[0], torch.tensor(s_b0)[:, None] * u, atol=1e-6, rtol=0)
    ent = ref.global_entropy(ref.flatten(f))
    torch.testing.assert_close(ent[0], torch.tensor(T3_ENT_B0), atol=2e-6, rtol=0)
    order = torch.sort(ent, dim=-1, stable=True).indices
    assert order[0].tolist() == T3_ORDER_B0
    assert order[1].tolist() == T3_ORDER_B1
    s = ref.select(f, 4, "global")
    assert s.attn.shape == (2, 4, 16)
    v = ref.route(f, s)
    assert v.flatten(0, 1).shape == (8, 3)
    assert s.indices[0, 0].item() == 3
    torch.testing.assert_close(v[0, 0], 1.157717 * u, atol=2e-6, rtol=0)
    torch.testing.assert_close(ref.l2norm(v[0, 0]), u, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- T4


def test_t4_reference():
    f = ref.sin_map(2, 3, 4, 4)
    ent = ref.global_entropy(ref.flatten(f))
    sel = ref.stable_select(ent, 4)
    assert sel[0].tolist() == [0, 15, 1, 14]
    assert sel[1].tolist() == [15, 0, 14, 1]
    torch.testing.assert_close(ent[0, sel[0]], torch.tensor([1.84726, 2.01803, 2.24613, 2.24964]),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(ent[1, sel[1]], torch.tensor([1.54824, 1.98218, 2.03371, 2.12235]),
                               atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- T5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_t5_reference(dtype):
    f = torch.tensor([20.0, 1.0, -1.0, 0.0], dtype=dtype).reshape(1, 1, 2, 2)
    ent = ref.global_entropy(ref.flatten(f))[0]
    assert torch.isfinite(ent).all()
    if dtype == torch.float32:
        assert ent[0].item() == 0.0
    # fp32: the authors' float32 value (T5); fp64: the exact entropy of softmax(20, 1, -1, 0)
    e1 = 1.636e-7 if dtype == torch.float32 else ref.exact_entropy([20.0, 1.0, -1.0, 0.0])
    torch.testing.assert_close(ent[1], torch.tensor(e1, dtype=dtype), atol=1e-9, rtol=0)
    torch.testing.assert_close(ent[2:], torch.tensor([0.8323957, 1.3862944], dtype=dtype),
                               atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- T6


def _eye_rows(M, D=256):
    return torch.eye(D)[:M].clone()


def test_t6_reference():
    tau = 0.07
    for M, fp32_val in [(256, 1.58878e-4), (4, 1.79e-6)]:
        Q = _eye_rows(M)
        loss = ref.patch_nce(Q, Q.clone())
        exact = math.log(1 + (M - 1) * math.exp(-1 / tau) + math.exp(-11 / tau))
        assert torch.allclose(loss, torch.full((M,), fp32_val), atol=1e-6, rtol=0)
        assert abs(exact - fp32_val) < 1e-6
    for M, val in [(4, 1.3862944), (256, 5.5451775)]:
        v = torch.zeros(M, 256)
        v[:, 7] = 1.0
        loss = ref.patch_nce(v, v.clone())
        torch.testing.assert_close(loss, torch.full((M,), val), atol=1e-5, rtol=1e-6)
        assert abs(math.log(M + math.exp(-11 / tau)) - val) < 1e-6
    Q = torch.eye(256)
    K = torch.roll(torch.eye(256), shifts=-1, dims=0)  # K_i = e_{i+1}
    assert K[0, 1] == 1 and K[255, 0] == 1
    loss = ref.patch_nce(Q, K)
    torch.testing.assert_close(loss, torch.full((256,), 14.2858736), atol=1e-4, rtol=1e-6)
    # two identical images, 4 rows each: negatives never cross images
    Q2 = torch.cat([_eye_rows(4), _eye_rows(4)])
    loss2 = ref.patch_nce(Q2, Q2.clone(), num_images=2)
    torch.testing.assert_close(loss2, ref.patch_nce(_eye_rows(4), _eye_rows(4)).repeat(2))
    assert torch.allclose(loss2, torch.full((8,), 1.79e-6), atol=1e-6, rtol=0)
    # with a single "image" of 8 rows the duplicate rows would be negatives: ≈ ln 2
    crossing = ref.patch_nce(Q2, Q2.clone(), num_images=1)
    assert (crossing > 0.6).all()


# ----------------------------------------------------------------------------- T8


@pytest.mark.parametrize("layout", ["geometric", "reference"])
def test_t8_reference(layout):
    f = torch.ones(1, 1, 8, 8)
    ent = ref.local_entropy(f, 7, layout)[0]
    expected = torch.zeros(64)
    for h in range(8):
        for w in range(8):
            nh = sum(1 for d in range(-3, 4) if 0 <= h + d < 8)
            nw = sum(1 for d in range(-3, 4) if 0 <= w + d < 8)
            expected[h * 8 + w] = ref.local_border_entropy(nh * nw)
    torch.testing.assert_close(ent, expected, atol=2e-6, rtol=0)
    oracle_vals = {16: 3.768608, 20: 3.771101, 24: 3.779502, 28: 3.792109, 35: 3.820906,
                 42: 3.854948, 49: 3.891820}
    for n, v in oracle_vals.items():
        assert abs(ref.local_border_entropy(n) - v) < 1e-6
    lowest = torch.sort(ent, stable=True).indices[:4]
    assert set(lowest.tolist()) == {0, 7, 56, 63}


# ------------------------------------------------------------- T9 / docs/algorithm.md §8.3


def test_unfold_layout_is_channel_major():
    f = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    for k in (3, 7):
        U = ref.unfold(f, k)
        Nb = ref.geometric_neighbours(f, k)  # (B, P, k², C)
        for c in range(3):
            for t in range(k * k):
                torch.testing.assert_close(U[:, c * k * k + t, :], Nb[:, :, t, c])


def test_geometric_neighbour_slot_order():
    f = torch.arange(1 * 1 * 5 * 6, dtype=torch.float64).reshape(1, 1, 5, 6) + 1
    Nb = ref.geometric_neighbours(f, 3)
    # position (2, 3): l = 15; slot t = (dy+1)*3 + (dx+1)
    l = 2 * 6 + 3
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            assert Nb[0, l, (dy + 1) * 3 + (dx + 1), 0] == f[0, 0, 2 + dy, 3 + dx]
    # corner (0, 0): out-of-map slots are zero
    assert Nb[0, 0, 0, 0] == 0 and Nb[0, 0, 4, 0] == f[0, 0, 0, 0]


def test_reference_equals_geometric_for_c1():
    f = torch.randn(2, 1, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(ref.local_reference_attn(f, 3), ref.local_geometric_attn(f, 3))


T9_GEO_B0 = [63, 56, 31, 24, 62, 16, 5, 57]
T9_GEO_B1 = [62, 55, 63, 8, 61, 2, 1, 9]
T9_GEO_ENT_B0 = [2.49389, 2.67646, 2.71007, 2.72671, 2.74489, 2.76281, 2.76637, 2.80389]
T9_REF_B0 = [60, 59, 1, 2, 53, 54, 15, 61]
T9_REF_B1 = [7, 56, 57, 6, 58, 14, 39, 24]
T9_REF_ENT_B0 = [2.90314, 2.91594, 2.93741, 2.93752, 2.94338, 2.95580, 2.96067, 2.96079]


def test_t9_reference():
    f = ref.sin_map(2, 3, 8, 8)
    eg = ref.local_geometric_entropy(f, 7)
    sg = ref.stable_select(eg, 8)
    assert sg[0].tolist() == T9_GEO_B0
    assert sg[1].tolist() == T9_GEO_B1
    torch.testing.assert_close(eg[0, sg[0]], torch.tensor(T9_GEO_ENT_B0), atol=1e-5, rtol=0)
    er = ref.local_reference_entropy(f, 7)
    sr = ref.stable_select(er, 8)
    assert set(sr[0].tolist()) == set(T9_REF_B0)
    assert set(sr[1].tolist()) == set(T9_REF_B1)
    torch.testing.assert_close(er[0, sr[0]], torch.tensor(T9_REF_ENT_B0), atol=1e-5, rtol=0)
    torch.testing.assert_close(er[0, T9_REF_B0], torch.tensor(T9_REF_ENT_B0), atol=1.5e-4, rtol=0)
    s = ref.select(f, 8, "local", 7, "geometric")
    v = ref.route(f, s)
    assert s.indices[0, 0] == 63
    torch.testing.assert_close(v[0, 0], torch.tensor([0.936874, 0.743747, -0.538970]),
                               atol=2e-6, rtol=0)


@pytest.mark.parametrize("shape", [(1, 4, 5, 5), (2, 4, 5, 6), (1, 8, 6, 6), (2, 3, 8, 8)])
def test_reference_route_nc_identity(shape):
    B, C, H, W = shape
    k = 7
    f = torch.randn(*shape, dtype=torch.float64)
    sel, A = ref.local_reference_select(f, C, k)  # N = C
    out = ref.local_reference_route(A, sel, f, k)
    Nb = ref.geometric_neighbours(f, k)  # (B, P, k², C)
    expect = torch.zeros(B, C, C, dtype=torch.float64)
    for b in range(B):
        for r in range(C):
            for c in range(C):
                expect[b, r, c] = (A[b, r, :] * Nb[b, sel[b, c], :, r]).sum()
    torch.testing.assert_close(out, expect)


@pytest.mark.parametrize("shape,N", [((2, 6, 5, 5), 3), ((1, 3, 4, 5), 5), ((3, 2, 4, 4), 16)])
def test_reference_route_general_formula(shape, N):
    f = torch.randn(*shape, dtype=torch.float64)
    sel, A = ref.local_reference_select(f, N, 3)
    torch.testing.assert_close(ref.local_reference_route(A, sel, f, 3),
                               ref.local_reference_route_formula(A, sel, f, 3))


def test_t10_reference():
    f = ref.sin_map(2, 3, 8, 8)
    for layout, expected in [("reference", (T9_REF_B0, T9_REF_B1)),
                             ("geometric", (T9_GEO_B0, T9_GEO_B1))]:
        s = ref.select(f, 8, "local_global", 7, layout)
        assert s.attn.shape == (2, 8, 64)
        torch.testing.assert_close(s.attn.sum(-1), torch.ones(2, 8))
        assert set(s.indices[0].tolist()) == set(expected[0])
        assert set(s.indices[1].tolist()) == set(expected[1])
        A = ref.global_attn(ref.flatten(f))
        torch.testing.assert_close(s.attn, ref.gather_rows(A, s.indices))


def test_t11_reference():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(1, 4, 4, 4, generator=g).requires_grad_()
    tgt = torch.randn(1, 4, 4, 4, generator=g).requires_grad_()
    for detach in (False, True):
        s = ref.select(src, 4, "global", detach_attn=detach)
        k = ref.l2norm(ref.route(src, s).flatten(0, 1))
        q = ref.l2norm(ref.route(tgt, s).flatten(0, 1))
        loss = ref.patch_nce(q, k, reduction="mean")
        gs, gt = torch.autograd.grad(loss, [src, tgt], allow_unused=True)
        assert gt is not None and gt.abs().max() > 0
        if detach:
            assert gs is None
        else:
            assert gs is not None and gs.abs().max() > 0


def test_reference_patch_sample_f_param_count():
    feats = [torch.zeros(1, c, 1, 1) for c in (3, 128, 256, 256, 256)]
    m = ref.PatchSampleF()
    m.create_mlp(feats)
    assert sum(p.numel() for p in m.parameters()) == 560384
    keys = set(m.state_dict().keys())
    assert keys == {f"mlp_{s}.{i}.{n}" for s in range(5) for i in (0, 2) for n in ("weight", "bias")}


def test_tie_free_helper():
    f = ref.tie_free_feat((2, 4, 5, 6), 7, [ref.entropy_fn("global")], dtype=torch.float32)
    ref.assert_tie_free(ref.global_entropy(ref.flatten(f.double())), 7, 2e-5)
