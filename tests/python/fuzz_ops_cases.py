"""The ops' contract under property-based fuzzing (hypothesis), run by test_fuzz_ops.py in a
child interpreter so that an abort or a segfault fails the test instead of ending pytest.

For any input — shapes (empty dimensions included), dtypes, layouts (sparse COO/CSR, nested,
MKL-DNN, channels-last and transposed views), devices (the meta device included), sizes
(negative, zero, 2**40) and values (NaN, ±inf, huge, zeros) — each op either returns a correct
result or raises an ordinary ``Exception``. A ``PanicException`` (a ``BaseException``) is not
caught and fails the case. "Correct" is checked against the plain-PyTorch transcription in
``reference.py`` whenever the inputs are valid and finite.

Bounded for CI: a fixed number of examples per property (``QS_FUZZ_EXAMPLES``, default 120),
no per-example deadline, derandomized (the same examples on every run) and no example database.
"""
import os

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import qs_attn
import reference as ref

FUZZ = settings(max_examples=int(os.environ.get("QS_FUZZ_EXAMPLES", "120")), deadline=None, derandomize=True,
                database=None, suppress_health_check=list(HealthCheck), print_blob=True)

FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
DTYPES = FLOATS + (torch.int64, torch.uint8, torch.bool, torch.complex64)
LAYOUTS = ("strided", "strided", "strided", "channels_last", "transposed", "sparse_coo", "sparse_csr", "nested",
           "mkldnn")
VALUES = ("normal", "normal", "normal", "nan", "inf", "-inf", "huge", "zero")
SIZES = (-(2**40), -1, 0, 1, 2, 3, 7, 16, 2**31, 2**40)


@st.composite
def tensors(draw, rank):
    """A tensor of roughly `rank` dimensions, in any dtype, layout, device and values."""
    r = draw(st.sampled_from((rank,) * 4 + (max(rank - 1, 0), rank + 1, 0)))
    shape = [draw(st.sampled_from((0, 1, 2, 3, 4, 5))) for _ in range(r)]
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    t = torch.randn(shape, generator=gen, dtype=torch.float64)
    values = draw(st.sampled_from(VALUES))
    if values == "zero":
        t = torch.zeros_like(t)
    elif values == "huge":
        t = t * 1e30
    elif values != "normal" and t.numel():
        t.view(-1)[draw(st.integers(0, t.numel() - 1))] = {"nan": float("nan"), "inf": float("inf"),
                                                          "-inf": float("-inf")}[values]
    t = t.to(draw(st.sampled_from(DTYPES)))
    layout = draw(st.sampled_from(LAYOUTS))
    meta = draw(st.sampled_from(("cpu",) * 5 + ("meta",))) == "meta"
    try:
        if layout == "channels_last":
            t = t.contiguous(memory_format=torch.channels_last)
        elif layout == "transposed":
            t = t.transpose(0, -1) if t.dim() >= 2 else t
        elif layout == "sparse_coo":
            t = t.to_sparse()
        elif layout == "sparse_csr":
            t = t.to_sparse_csr()
        elif layout == "nested":
            t = torch.nested.nested_tensor(list(t.unbind(0)))
        elif layout == "mkldnn":
            t = t.to_mkldnn()
        if meta:
            t = t.to("meta")
    except Exception:  # a layout or device this tensor cannot take: draw another
        assume(False)
    return t


def valid(t, rank):
    """A dense finite floating-point CPU tensor of the rank an op expects."""
    return (t.device.type == "cpu" and t.layout == torch.strided and not t.is_nested and t.dtype in FLOATS
            and t.dim() == rank and bool(torch.isfinite(t).all()))


def contract(call):
    """The result, or None when the op raised an ordinary Exception (BaseExceptions propagate)."""
    try:
        return call()
    except Exception:
        return None


def close(actual, expected, what):
    torch.testing.assert_close(actual.double(), expected.double(), rtol=2e-3, atol=2e-3,
                               msg=lambda m: f"{what}: {m}")


@FUZZ
@given(q=tensors(2), k=tensors(2), tau=st.sampled_from((0.07, 1.0, 0.0, -1.0, float("nan"), float("inf"), 1e-30)),
       num_images=st.sampled_from(SIZES + (None,)), reduction=st.sampled_from(("mean", "none")),
       same=st.booleans())
def test_patch_nce_loss(q, k, tau, num_images, reduction, same):
    if same and q.layout == torch.strided and not q.is_nested:
        k = q.detach().clone().flip(0) if q.dim() else q  # mostly same-shape pairs
    out = contract(lambda: qs_attn.patch_nce_loss(q, k, tau=tau, num_images=num_images, reduction=reduction))
    n = 1 if num_images is None else num_images
    if out is None or not (valid(q, 2) and valid(k, 2) and q.shape == k.shape):
        return
    assert q.shape[0] % n == 0 and tau > 0, "accepted inputs the op cannot handle"
    expected = ref.patch_nce(q.double(), k.double(), tau, n, reduction)
    if torch.isfinite(expected).all():
        close(out, expected, "patch_nce_loss")


@FUZZ
@given(feat=tensors(4), mode=st.sampled_from(("global", "local")), window=st.sampled_from((1, 3, 7, 0, -1, 2, 2**31)),
       layout=st.sampled_from(("geometric", "reference")))
def test_qs_entropy(feat, mode, window, layout):
    out = contract(lambda: qs_attn.qs_entropy(feat, mode, window=window, local_layout=layout))
    if out is None or not valid(feat, 4) or feat.abs().max() > 1e3:
        return
    close(out, ref.entropy(feat.double(), mode, window, layout), "qs_entropy")


@FUZZ
@given(feat=tensors(4), other=tensors(4), num_patches=st.sampled_from(SIZES),
       mode=st.sampled_from(("global", "local", "local_global", "cross")), window=st.sampled_from((3, 7, 1, 0, -1, 2)),
       layout=st.sampled_from(("geometric", "reference")))
def test_qs_select_and_route(feat, other, num_patches, mode, window, layout):
    sel = contract(lambda: qs_attn.qs_select(feat, num_patches, mode, window=window, local_layout=layout))
    if sel is None:
        return
    routed = contract(lambda: qs_attn.qs_route(other, sel))
    crossed = contract(lambda: qs_attn.qs_cross_route(other, sel))
    attn = contract(lambda: sel.attn)
    if not valid(feat, 4) or feat.abs().max() > 1e3 or min(feat.shape) == 0:
        return
    B, C, H, W = feat.shape
    assert 1 <= num_patches <= H * W and sel.indices.shape == (B, num_patches)
    X = ref.flatten(feat.double())
    by_local = mode in ("local", "local_global")
    ent = ref.local_entropy(feat.double(), window, layout) if by_local else ref.global_entropy(X)
    # the selected positions have the N lowest entropies (robust to near-ties)
    close(ent.gather(1, sel.indices).sort(1).values, ent.sort(1).values[:, :num_patches], "selected entropies")
    full = ref.local_attn(feat.double(), window, layout) if mode == "local" else ref.global_attn(X)
    expected_attn = ref.gather_rows(full, sel.indices)
    if attn is not None:
        close(attn, expected_attn, "attention")
    if valid(other, 4) and other.shape == feat.shape and other.abs().max() <= 1e3:
        if mode != "cross" and routed is not None:
            s = ref.RefSelection(mode, sel.indices, expected_attn, window, layout, H, W, source=X)
            close(routed, ref.route(other.double(), s), "qs_route")
        if mode == "cross" and crossed is not None:
            s = ref.RefSelection(mode, sel.indices, None, window, layout, H, W, source=X)
            close(crossed, ref.cross_route(other.double(), s), "qs_cross_route")


@FUZZ
@given(positions=st.sampled_from(SIZES + (2**62,)), patches=st.sampled_from(SIZES),
       images=st.sampled_from((-1, 0, 1, 2, 3, 2**20, 2**40)), per_image=st.booleans(), seed=st.integers(0, 2**62))
def test_patch_ids(positions, patches, images, per_image, seed):
    ids = contract(lambda: qs_attn._native.PatchSampler(seed).sample(positions, patches, images, per_image))
    if ids is None:
        return
    n = min(positions, patches)
    assert ids.shape == ((images, n) if per_image else (n,)) and ids.dtype == torch.int64
    rows = ids.view(-1, n)
    assert int(rows.min()) >= 0 and int(rows.max()) < positions
    assert all(len(set(r.tolist())) == n for r in rows)


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q", "-p", "no:cacheprovider", "-W", "ignore::UserWarning"]))
