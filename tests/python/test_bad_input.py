"""Invalid inputs raise a Python exception whose message names the problem; the
interpreter survives (each test finishes with a valid call)."""

import pytest
import torch

import qs_attn
import reference as ref

ERR = (ValueError, TypeError, RuntimeError, IndexError)


def _feat(B=2, C=3, H=4, W=4, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (0.7 * torch.randn(B, C, H, W, generator=g, dtype=torch.float64)).to(dtype)


def _valid_calls():
    """A valid call of every op, run after each failure: the process is still healthy."""
    f = _feat()
    sel = qs_attn.qs_select(f, 4, mode="global")
    assert tuple(qs_attn.qs_route(f, sel).shape) == (2, 4, 3)
    q = ref.l2norm(torch.randn(8, 5))
    assert torch.isfinite(qs_attn.patch_nce_loss(q, q.clone(), num_images=2))


def _raises(fn, pattern):
    with pytest.raises(ERR, match=pattern):
        fn()
    _valid_calls()


# ----------------------------------------------------------------------------- rank

def test_select_3d_feat():
    f = _feat()[0]
    _raises(lambda: qs_attn.qs_select(f, 4, mode="global"), r"(?i)(dim|rank|4-?d|shape|B, ?C, ?H, ?W)")


def test_entropy_3d_feat():
    f = _feat()[0]
    _raises(lambda: qs_attn.qs_entropy(f, mode="global"), r"(?i)(dim|rank|4-?d|shape|B, ?C, ?H, ?W)")


def test_route_3d_feat():
    f = _feat()
    sel = qs_attn.qs_select(f, 4, mode="global")
    _raises(lambda: qs_attn.qs_route(f[0], sel), r"(?i)(dim|rank|4-?d|shape|B, ?C, ?H, ?W)")


def test_nce_3d_q():
    q = torch.randn(2, 4, 5)
    _raises(lambda: qs_attn.patch_nce_loss(q, q.clone()), r"(?i)(dim|rank|2-?d|shape)")


# ----------------------------------------------------------------------------- selection vs target

@pytest.mark.parametrize("mode", ["global", "local", "local_global", "cross"])
def test_route_target_spatial_mismatch(mode):
    f = _feat(H=4, W=4)
    sel = qs_attn.qs_select(f, 4, mode=mode, window=3)
    other = _feat(H=4, W=5)
    fn = qs_attn.qs_cross_route if mode == "cross" else qs_attn.qs_route
    _raises(lambda: fn(other, sel), r"(?i:shape|size|height|width|spatial|match|positions|map)|\bH\b|\bW\b")


@pytest.mark.parametrize("mode", ["global", "local", "local_global", "cross"])
def test_route_target_same_p_different_hw(mode):
    """Same number of positions (16) but a 2×8 map instead of 4×4: the raster indices mean
    different pixels, so the selection does not apply (QSSelection records height/width)."""
    f = _feat(H=4, W=4)
    sel = qs_attn.qs_select(f, 4, mode=mode, window=3)
    other = _feat(H=2, W=8)
    fn = qs_attn.qs_cross_route if mode == "cross" else qs_attn.qs_route
    _raises(lambda: fn(other, sel), r"(?i:shape|size|height|width|spatial|match|positions|map)|\bH\b|\bW\b")


@pytest.mark.parametrize("mode", ["global", "local", "local_global", "cross"])
def test_route_target_batch_mismatch(mode):
    f = _feat(B=2)
    sel = qs_attn.qs_select(f, 4, mode=mode, window=3)
    other = _feat(B=3)
    fn = qs_attn.qs_cross_route if mode == "cross" else qs_attn.qs_route
    _raises(lambda: fn(other, sel), r"(?i)(batch|shape|size|match|images)")


@pytest.mark.parametrize("mode", ["global", "local_global"])
def test_route_target_channel_mismatch_is_fine_or_named(mode):
    """Target with a different channel count: global routing is well defined (A_QS·X_tgt),
    so either it works with C_tgt output channels or it raises naming channels."""
    f = _feat(C=3)
    sel = qs_attn.qs_select(f, 4, mode=mode, window=3)
    other = _feat(C=5)
    try:
        out = qs_attn.qs_route(other, sel)
    except ERR as e:
        assert any(w in str(e).lower() for w in ("channel", "shape", "match")), str(e)
    else:
        assert tuple(out.shape) == (2, 4, 5)
        torch.testing.assert_close(out, torch.bmm(sel.attn, ref.flatten(other)))
    _valid_calls()


# ----------------------------------------------------------------------------- sizes / params

@pytest.mark.parametrize("mode", ["global", "local", "local_global", "cross"])
def test_n_greater_than_p(mode):
    f = _feat(H=4, W=4)
    _raises(lambda: qs_attn.qs_select(f, 17, mode=mode, window=3),
            r"(?i:num_patches|patches|positions|exceed|greater|larger|too many)|\bN\b|\bP\b")


@pytest.mark.parametrize("mode", ["local", "local_global"])
@pytest.mark.parametrize("window", [4, 0, -1])
def test_bad_window(mode, window):
    f = _feat()
    _raises(lambda: qs_attn.qs_select(f, 4, mode=mode, window=window), r"(?i)(window|odd|kernel)")


def test_even_window_entropy():
    f = _feat()
    _raises(lambda: qs_attn.qs_entropy(f, mode="local", window=6), r"(?i)(window|odd|kernel)")


def test_nonpositive_num_patches():
    f = _feat()
    _raises(lambda: qs_attn.qs_select(f, 0, mode="global"), r"(?i:num_patches|patches|positive|at least)|\bN\b|> ?0")


# ----------------------------------------------------------------------------- dtype

def test_select_integer_dtype():
    f = torch.randint(0, 5, (1, 3, 4, 4))
    _raises(lambda: qs_attn.qs_select(f, 4, mode="global"), r"(?i)(dtype|float|integer|type|Long)")


def test_entropy_integer_dtype():
    f = torch.randint(0, 5, (1, 3, 4, 4))
    _raises(lambda: qs_attn.qs_entropy(f, mode="local", window=3), r"(?i)(dtype|float|integer|type|Long)")


def test_route_integer_dtype():
    f = _feat()
    sel = qs_attn.qs_select(f, 4, mode="global")
    _raises(lambda: qs_attn.qs_route(torch.ones(2, 3, 4, 4, dtype=torch.int32), sel),
            r"(?i)(dtype|float|integer|type|Int)")


def test_nce_integer_dtype():
    q = torch.ones(4, 5, dtype=torch.int64)
    _raises(lambda: qs_attn.patch_nce_loss(q, q.clone()), r"(?i)(dtype|float|integer|type|Long)")


# ----------------------------------------------------------------------------- PatchNCE shapes / args

def test_nce_rows_not_divisible():
    q = torch.randn(8, 5)
    _raises(lambda: qs_attn.patch_nce_loss(q, q.clone(), num_images=3),
            r"(?i)(divisib|num_images|multiple|rows|images)")


def test_nce_qk_shape_mismatch():
    q = torch.randn(8, 5)
    k = torch.randn(8, 6)
    _raises(lambda: qs_attn.patch_nce_loss(q, k), r"(?i)(shape|match|same|size)")
    k2 = torch.randn(6, 5)
    _raises(lambda: qs_attn.patch_nce_loss(q, k2), r"(?i)(shape|match|same|size)")


def test_nce_bad_reduction():
    q = torch.randn(8, 5)
    _raises(lambda: qs_attn.patch_nce_loss(q, q.clone(), reduction="sum_of_squares"),
            r"(?i)(reduction|mean|none)")


def test_nce_nonpositive_tau():
    q = torch.randn(8, 5)
    _raises(lambda: qs_attn.patch_nce_loss(q, q.clone(), tau=0.0), r"(?i)(tau|temperature|positive)")


# ----------------------------------------------------------------------------- strings

def test_unknown_mode_select():
    f = _feat()
    _raises(lambda: qs_attn.qs_select(f, 4, mode="glob"), r"(?i)(mode|glob)")


def test_unknown_mode_entropy():
    f = _feat()
    _raises(lambda: qs_attn.qs_entropy(f, mode="local_global_x"), r"(?i)(mode|local_global_x)")


def test_unknown_local_layout():
    f = _feat()
    _raises(lambda: qs_attn.qs_select(f, 4, mode="local", window=3, local_layout="sideways"),
            r"(?i)(layout|sideways)")


def test_cross_route_needs_cross_selection():
    """qs_cross_route with a non-cross selection: must not silently compute garbage —
    either an error naming the mode, or the documented cross formula."""
    f = _feat()
    sel = qs_attn.qs_select(f, 4, mode="local", window=3)
    try:
        qs_attn.qs_cross_route(f, sel)
    except ERR as e:
        assert "mode" in str(e).lower() or "cross" in str(e).lower(), str(e)
    _valid_calls()


# ----------------------------------------------------------------------------- devices

def _other_device_tensor(shape):
    if torch.cuda.is_available():
        return torch.randn(*shape, device="cuda")
    return torch.empty(*shape, device="meta")


def test_nce_mixed_devices():
    q = torch.randn(8, 5)
    k = _other_device_tensor((8, 5))
    _raises(lambda: qs_attn.patch_nce_loss(q, k), r"(?i)(device|meta|cuda|cpu)")


def test_route_mixed_devices():
    f = _feat()
    sel = qs_attn.qs_select(f, 4, mode="global")
    other = _other_device_tensor((2, 3, 4, 4))
    _raises(lambda: qs_attn.qs_route(other, sel), r"(?i)(device|meta|cuda|cpu)")


def test_cross_route_mixed_devices():
    f = _feat()
    sel = qs_attn.qs_select(f, 4, mode="cross")
    other = _other_device_tensor((2, 3, 4, 4))
    _raises(lambda: qs_attn.qs_cross_route(other, sel), r"(?i)(device|meta|cuda|cpu)")


def test_meta_input_select_does_not_crash():
    """A meta tensor alone is not a CPU/CUDA tensor: either a clean error or a meta result,
    never a crash."""
    f = torch.empty(2, 3, 4, 4, device="meta")
    try:
        qs_attn.qs_select(f, 4, mode="global")
    except ERR:
        pass
    _valid_calls()
