"""qs_attn ops vs the plain-PyTorch oracle (reference.py): forward values and gradients of
every input, fp32 and fp64, batch 1 and 3, N = P edge case, local windows 3 and 7 in both
layouts, local_global in both layouts, cross mode, detach_attn, PatchNCE."""

import itertools

import pytest
import torch
import torch.nn as nn

import qs_attn
import reference as ref
from _util import close, leaf, no_grad_reached, weights_like

DTYPES = [torch.float32, torch.float64]

# (mode, window, layout)
CONFIGS = [
    ("global", 7, "geometric"),
    ("cross", 7, "geometric"),
    ("local", 3, "geometric"),
    ("local", 7, "geometric"),
    ("local", 3, "reference"),
    ("local", 7, "reference"),
    ("local_global", 3, "geometric"),
    ("local_global", 7, "geometric"),
    ("local_global", 3, "reference"),
    ("local_global", 7, "reference"),
]

# (C, H, W, N): generic non-square map, and the N = P edge case
SHAPES = [(4, 5, 6, 7), (3, 4, 4, 16)]


def cfg_id(c):
    return f"{c[0]}-k{c[1]}-{c[2]}"


def make_inputs(B, C, H, W, N, mode, window, layout, dtype, seed=0):
    src = ref.tie_free_feat((B, C, H, W), N, [ref.entropy_fn(mode, window, layout)],
                            dtype=dtype, scale=0.7, min_gap=2e-5, seed=seed)
    g = torch.Generator().manual_seed(1000 + seed)
    tgt = (0.7 * torch.randn(B, C, H, W, generator=g, dtype=torch.float64)).to(dtype)
    return src, tgt


def ours_forward(src, tgt, N, mode, window, layout, detach_attn=False):
    sel = qs_attn.qs_select(src, N, mode=mode, window=window, local_layout=layout,
                            detach_attn=detach_attn)
    key = qs_attn.qs_route(src, sel)
    if mode == "cross":
        query = qs_attn.qs_cross_route(tgt, sel)
    else:
        query = qs_attn.qs_route(tgt, sel)
    return sel, key, query


def ref_forward(src, tgt, N, mode, window, layout, detach_attn=False):
    sel = ref.select(src, N, mode, window, layout, detach_attn=detach_attn)
    key = ref.route(src, sel)
    query = ref.cross_route(tgt, sel) if mode == "cross" else ref.route(tgt, sel)
    return sel, key, query


# ----------------------------------------------------------------------------- entropy


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp64"])
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("mode,window,layout", [("global", 7, "geometric"),
                                                ("local", 3, "geometric"),
                                                ("local", 7, "geometric"),
                                                ("local", 3, "reference"),
                                                ("local", 7, "reference")])
def test_entropy_vs_reference(dtype, B, mode, window, layout):
    g = torch.Generator().manual_seed(3)
    f = (0.7 * torch.randn(B, 4, 5, 6, generator=g, dtype=torch.float64)).to(dtype)
    got = qs_attn.qs_entropy(f, mode=mode, window=window, local_layout=layout)
    exp = ref.entropy(f, mode, window, layout)
    assert got.shape == (B, 30)
    close(got, exp, dtype, f"qs_entropy {mode}")


# ----------------------------------------------------------------------------- select / route


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp64"])
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("shape", SHAPES, ids=["5x6N7", "4x4N16"])
@pytest.mark.parametrize("config", CONFIGS, ids=cfg_id)
def test_select_route_vs_reference(dtype, B, shape, config):
    mode, window, layout = config
    C, H, W, N = shape
    P = H * W
    src0, tgt0 = make_inputs(B, C, H, W, N, mode, window, layout, dtype)

    src, tgt = leaf(src0), leaf(tgt0)
    rsrc, rtgt = leaf(src0), leaf(tgt0)
    sel, key, query = ours_forward(src, tgt, N, mode, window, layout)
    rsel, rkey, rquery = ref_forward(rsrc, rtgt, N, mode, window, layout)

    # selection
    assert sel.indices.dtype == torch.int64
    assert tuple(sel.indices.shape) == (B, N)
    assert torch.equal(sel.indices, rsel.indices), (sel.indices, rsel.indices)
    assert sel.mode == mode
    assert sel.height == H and sel.width == W
    if mode in ("local", "local_global"):
        assert sel.window == window
        assert sel.local_layout == layout
    # attention
    exp_attn_shape = (B, N, window * window) if mode == "local" else (B, N, P)
    assert tuple(sel.attn.shape) == exp_attn_shape
    close(sel.attn, rsel.attn, dtype, "attn")
    # routed values
    assert tuple(key.shape) == (B, N, C)
    close(key, rkey, dtype, "key branch qs_route(src)")
    assert tuple(query.shape) == (B, N, C)
    close(query, rquery, dtype, "query branch")

    # gradients of every input through attn, key and query
    wa, wk, wq = (weights_like(t, s) for t, s in ((rsel.attn, 1), (rkey, 2), (rquery, 3)))
    loss = (sel.attn * wa).sum() + (key * wk).sum() + (query * wq).sum()
    rloss = (rsel.attn * wa).sum() + (rkey * wk).sum() + (rquery * wq).sum()
    close(loss.detach(), rloss.detach(), dtype, "scalar")
    g_src, g_tgt = torch.autograd.grad(loss, [src, tgt])
    r_src, r_tgt = torch.autograd.grad(rloss, [rsrc, rtgt])
    close(g_src, r_src, dtype, "grad source")
    close(g_tgt, r_tgt, dtype, "grad target")


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp64"])
@pytest.mark.parametrize("config", CONFIGS, ids=cfg_id)
def test_query_branch_gradient_to_source(dtype, config):
    """docs/algorithm.md §8.5: the query branch gives gradient to the source through A_QS
    (default), and none at all with detach_attn=True (Q7). Target gradients match the oracle
    both ways."""
    mode, window, layout = config
    B, C, H, W, N = 2, 4, 5, 6, 7
    src0, tgt0 = make_inputs(B, C, H, W, N, mode, window, layout, dtype, seed=11)
    for detach in (False, True):
        src, tgt = leaf(src0), leaf(tgt0)
        rsrc, rtgt = leaf(src0), leaf(tgt0)
        sel, key, query = ours_forward(src, tgt, N, mode, window, layout, detach_attn=detach)
        rsel, rkey, rquery = ref_forward(rsrc, rtgt, N, mode, window, layout, detach_attn=detach)
        assert torch.equal(sel.indices, rsel.indices)
        close(query, rquery, dtype, "query")
        w = weights_like(rquery, 5)
        g_src, g_tgt = torch.autograd.grad((query * w).sum(), [src, tgt], allow_unused=True,
                                           retain_graph=True)
        r_src, r_tgt = torch.autograd.grad((rquery * w).sum(), [rsrc, rtgt], allow_unused=True,
                                           retain_graph=True)
        close(g_tgt, r_tgt, dtype, f"grad target (detach_attn={detach})")
        if detach:
            assert no_grad_reached(g_src), \
                f"detach_attn=True but the query branch gave gradient to the source ({mode})"
        else:
            assert g_src is not None and g_src.abs().max() > 0
            close(g_src, r_src, dtype, "grad source via query branch")
        # key branch with detach_attn: gradient only through the values
        wk = weights_like(rkey, 6)
        g_k, = torch.autograd.grad((key * wk).sum(), [src])
        r_k, = torch.autograd.grad((rkey * wk).sum(), [rsrc])
        close(g_k, r_k, dtype, f"grad source via key branch (detach_attn={detach})")


def test_detach_attn_attn_has_no_graph():
    src = leaf(ref.tie_free_feat((1, 3, 4, 4), 4, [ref.entropy_fn("global")], torch.float32))
    sel = qs_attn.qs_select(src, 4, mode="global", detach_attn=True)
    assert not sel.attn.requires_grad
    sel = qs_attn.qs_select(src, 4, mode="global")
    assert sel.attn.requires_grad


# ----------------------------------------------------------------------------- PatchNCE


def _nce_inputs(R, D, dtype, seed, normalise=True):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(R, D, generator=g, dtype=torch.float64)
    k = q + 0.5 * torch.randn(R, D, generator=g, dtype=torch.float64)
    if normalise:
        q, k = ref.l2norm(q), ref.l2norm(k)
    return q.to(dtype), k.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp64"])
@pytest.mark.parametrize("num_images,rows", [(None, 6), (1, 6), (3, 12), (2, 2)])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("detach_keys", [True, False])
@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_patch_nce_vs_reference(dtype, num_images, rows, reduction, detach_keys, tau):
    q0, k0 = _nce_inputs(rows, 5, dtype, seed=rows)
    q, k = leaf(q0), leaf(k0)
    rq, rk = leaf(q0), leaf(k0)
    out = qs_attn.patch_nce_loss(q, k, tau=tau, num_images=num_images, reduction=reduction,
                                 detach_keys=detach_keys)
    rout = ref.patch_nce(rq, rk, tau=tau, num_images=num_images, reduction=reduction,
                         detach_keys=detach_keys)
    assert out.shape == rout.shape
    close(out, rout, dtype, "loss")
    w = weights_like(rout, 7)
    gq, gk = torch.autograd.grad((out * w).sum(), [q, k], allow_unused=True)
    rgq, rgk = torch.autograd.grad((rout * w).sum(), [rq, rk], allow_unused=True)
    close(gq, rgq, dtype, "grad q")
    if detach_keys:
        assert no_grad_reached(gk), "detach_keys=True but k received gradient"
    else:
        assert gk is not None
        close(gk, rgk, dtype, "grad k")


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp64"])
def test_patch_nce_unnormalised_rows(dtype):
    q0, k0 = _nce_inputs(8, 3, dtype, seed=4, normalise=False)
    out = qs_attn.patch_nce_loss(q0, k0, num_images=2, reduction="none")
    close(out, ref.patch_nce(q0, k0, num_images=2), dtype)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("detach_keys", [True, False])
def test_patch_nce_module(reduction, detach_keys):
    q0, k0 = _nce_inputs(12, 5, torch.float32, seed=9)
    m = qs_attn.nn.PatchNCELoss(tau=0.1, reduction=reduction, detach_keys=detach_keys)
    assert isinstance(m, nn.Module)
    q, k = leaf(q0), leaf(k0)
    rq, rk = leaf(q0), leaf(k0)
    out = m(q, k, num_images=3)
    rout = ref.patch_nce(rq, rk, tau=0.1, num_images=3, reduction=reduction,
                         detach_keys=detach_keys)
    close(out, rout)
    (out.sum()).backward()
    (rout.sum()).backward()
    close(q.grad, rq.grad)
    if detach_keys:
        assert no_grad_reached(k.grad)
    else:
        close(k.grad, rk.grad)
    # defaults: tau 0.07, mean, detach keys, one image
    d = qs_attn.nn.PatchNCELoss()
    close(d(q0, k0), ref.patch_nce(q0, k0, reduction="mean"))


def test_patch_nce_default_arguments():
    q0, k0 = _nce_inputs(6, 4, torch.float64, seed=2)
    out = qs_attn.patch_nce_loss(q0, k0)
    assert out.dim() == 0
    close(out, ref.patch_nce(q0, k0, tau=0.07, num_images=1, reduction="mean"))


# ----------------------------------------------------------------------------- inside a torch graph


@pytest.mark.parametrize("mode,window,layout", [("global", 7, "geometric"),
                                                ("local", 3, "reference"),
                                                ("local", 3, "geometric"),
                                                ("local_global", 3, "reference"),
                                                ("cross", 7, "geometric")])
def test_ops_inside_torch_graph(mode, window, layout):
    """nn.Linear before the ops, an MLP after them: backward fills the Linears' grads exactly
    like the same graph built from the oracle."""
    B, C, H, W, N = 2, 4, 4, 5, 6
    dtype = torch.float64
    found = None
    for seed in range(200):
        torch.manual_seed(seed)
        pre = nn.Linear(C, C).to(dtype)
        g = torch.Generator().manual_seed(seed)
        xs = 0.7 * torch.randn(B, H * W, C, generator=g, dtype=dtype)
        xt = 0.7 * torch.randn(B, H * W, C, generator=g, dtype=dtype)
        with torch.no_grad():
            fs = pre(xs).transpose(1, 2).reshape(B, C, H, W)
        if (ref.sorted_gaps(ref.entropy_fn(mode, window, layout)(fs), N) > 1e-5).all():
            found = (pre, xs, xt)
            break
    assert found is not None
    pre, xs, xt = found
    post = nn.Linear(C, 8).to(dtype)
    import copy
    rpre, rpost = copy.deepcopy(pre), copy.deepcopy(post)

    def run(pre, post, use_ref):
        fs = pre(xs).transpose(1, 2).reshape(B, C, H, W)
        ft = pre(xt).transpose(1, 2).reshape(B, C, H, W)
        if use_ref:
            _, key, query = ref_forward(fs, ft, N, mode, window, layout)
            kq = ref.l2norm(post(key.flatten(0, 1)))
            qq = ref.l2norm(post(query.flatten(0, 1)))
            return ref.patch_nce(qq, kq, num_images=B, reduction="mean")
        _, key, query = ours_forward(fs, ft, N, mode, window, layout)
        kq = ref.l2norm(post(key.flatten(0, 1)))
        qq = ref.l2norm(post(query.flatten(0, 1)))
        return qs_attn.patch_nce_loss(qq, kq, num_images=B, reduction="mean")

    loss = run(pre, post, False)
    rloss = run(rpre, rpost, True)
    close(loss.detach(), rloss.detach(), dtype)
    loss.backward()
    rloss.backward()
    for (n, p), (_, rp) in itertools.chain(zip(pre.named_parameters(), rpre.named_parameters()),
                                           zip(post.named_parameters(), rpost.named_parameters())):
        assert p.grad is not None, n
        assert p.grad.abs().max() > 0, n
        close(p.grad, rp.grad, dtype, n)


# ----------------------------------------------------------------------------- memory layout


@pytest.mark.parametrize("config", [("global", 7, "geometric"), ("cross", 7, "geometric"),
                                    ("local", 3, "geometric"), ("local", 3, "reference"),
                                    ("local_global", 3, "reference")], ids=cfg_id)
def test_non_contiguous_inputs(config):
    """Channels-last / permuted views give the same results as contiguous tensors."""
    mode, window, layout = config
    B, C, H, W, N = 2, 4, 5, 6, 7
    src0, tgt0 = make_inputs(B, C, H, W, N, mode, window, layout, torch.float64, seed=21)
    src_nc = src0.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels-last strides
    tgt_nc = tgt0.transpose(2, 3).contiguous().transpose(2, 3)
    assert not src_nc.is_contiguous() and not tgt_nc.is_contiguous()
    sel, key, query = ours_forward(leaf(src_nc), leaf(tgt_nc), N, mode, window, layout)
    rsel, rkey, rquery = ref_forward(src0, tgt0, N, mode, window, layout)
    assert torch.equal(sel.indices, rsel.indices)
    close(sel.attn, rsel.attn, torch.float64, "attn")
    close(key, rkey, torch.float64, "key")
    close(query, rquery, torch.float64, "query")
    ent = qs_attn.qs_entropy(src_nc, mode="global" if mode in ("global", "cross") else "local",
                             window=window, local_layout=layout)
    close(ent, ref.entropy_fn(mode, window, layout)(src0), torch.float64, "entropy")


def test_patch_nce_non_contiguous():
    q0, k0 = _nce_inputs(12, 5, torch.float64, seed=8)
    q_nc = q0.t().contiguous().t()
    k_nc = k0.t().contiguous().t()
    assert not q_nc.is_contiguous()
    for red in ("mean", "none"):
        close(qs_attn.patch_nce_loss(q_nc, k_nc, num_images=3, reduction=red),
              ref.patch_nce(q0, k0, num_images=3, reduction=red), torch.float64)
    # a strided slice of rows
    big = torch.cat([q0, k0], dim=1)
    close(qs_attn.patch_nce_loss(big[:, :5], big[:, 5:], num_images=2, reduction="none"),
          ref.patch_nce(q0, k0, num_images=2), torch.float64)


# ----------------------------------------------------------------------------- larger maps


@pytest.mark.parametrize("mode,window,layout", [("global", 7, "geometric"),
                                                ("local", 7, "geometric"),
                                                ("local", 7, "reference"),
                                                ("local_global", 7, "reference")])
def test_large_map_entropy_and_selection(mode, window, layout):
    """A 30×35 map (P = 1050, C = 64, N = 256 as in training): big enough that an
    implementation working in row blocks needs several blocks, the last one partial."""
    B, C, H, W, N = 2, 64, 30, 35, 256
    src = ref.tie_free_feat((B, C, H, W), N, [ref.entropy_fn(mode, window, layout)],
                            dtype=torch.float64, scale=0.3, min_gap=1e-11, seed=0)
    emode = "global" if mode == "global" else "local"
    got = qs_attn.qs_entropy(src, mode=emode, window=window, local_layout=layout)
    exp = ref.entropy(src, emode, window, layout)
    close(got, exp, torch.float64, "entropy fp64")
    close(qs_attn.qs_entropy(src.float(), mode=emode, window=window, local_layout=layout),
          exp.float(), torch.float32, "entropy fp32")
    s1, s2 = leaf(src), leaf(src)
    sel = qs_attn.qs_select(s1, N, mode=mode, window=window, local_layout=layout)
    rsel = ref.select(s2, N, mode, window, layout)
    assert torch.equal(sel.indices, rsel.indices)
    close(sel.attn, rsel.attn, torch.float64, "attn")
    out, rout = qs_attn.qs_route(s1, sel), ref.route(s2, rsel)
    close(out, rout, torch.float64, "route")
    w = weights_like(rout, 12)
    g, = torch.autograd.grad((out * w).sum(), [s1])
    rg, = torch.autograd.grad((rout * w).sum(), [s2])
    close(g, rg, torch.float64, "grad source")
