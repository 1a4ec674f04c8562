"""qs_attn.nn.PatchSampleF vs the reference PatchSampleF (reference.py, docs/algorithm.md §7):
same MLP weights (reference state_dict loaded into ours), generator-like taps but tiny, injected
random ids for slots 0–2, source call then target call with the source call's ids/attention.
Outputs, MLP gradients and feature-map gradients must agree."""


import pytest
import torch
import torch.nn as nn

import qs_attn
import reference as ref
from _util import close, weights_like

B = 2
N = 16
NC = 32
TAPS = [(3, 22, 22), (8, 16, 16), (16, 8, 8), (16, 4, 4), (16, 4, 4)]

# (our mode, our local_layout, reference-module mode)
MODES = [("global", "reference"), ("local", "reference"), ("local_global", "reference"),
         ("local", "geometric"), ("local_global", "geometric")]


def _sel_entropy_fn(mode, layout):
    if mode == "global":
        return ref.entropy_fn("global")
    return ref.entropy_fn("local", 7, layout)


def make_feats(mode, layout, qs_slots=(3, 4), seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    src, tgt = [], []
    for s, (C, H, W) in enumerate(TAPS):
        if s in qs_slots and mode != "none":
            f = ref.tie_free_feat((B, C, H, W), N, [_sel_entropy_fn(mode, layout)], dtype=dtype,
                                  scale=0.5, min_gap=2e-5, seed=100 * s + seed)
        else:
            f = (0.5 * torch.randn(B, C, H, W, generator=g, dtype=torch.float64)).to(dtype)
        src.append(f)
        tgt.append((0.5 * torch.randn(B, C, H, W, generator=g, dtype=torch.float64)).to(dtype))
    return src, tgt


def make_ids(qs_slots=(3, 4), seed=0, mode="global"):
    g = torch.Generator().manual_seed(10_000 + seed)
    ids = []
    for s, (C, H, W) in enumerate(TAPS):
        if s in qs_slots and mode != "none":
            ids.append(None)
        else:
            ids.append(torch.randperm(H * W, generator=g)[:N])
    return ids


def make_modules(mode, layout, feats, qs_slots=None, use_mlp=True):
    refm = ref.PatchSampleF(mode=mode, use_mlp=use_mlp, nc=NC, local_layout=layout, window=7,
                            qs_slots=qs_slots)
    ours = qs_attn.nn.PatchSampleF(mode=mode, use_mlp=use_mlp, nc=NC, local_layout=layout,
                                   window=7, qs_slots=qs_slots)
    assert isinstance(ours, nn.Module)
    if use_mlp:
        refm.create_mlp(feats)
        g = torch.Generator().manual_seed(77)
        with torch.no_grad():
            for name, p in refm.named_parameters():
                scale = 0.3 if name.endswith("weight") else 0.1
                p.copy_(scale * torch.randn(p.shape, generator=g))
        ours.create_mlp(feats)
        ours.load_state_dict(refm.state_dict())
    return refm, ours


def leafs(ts):
    return [t.detach().clone().requires_grad_(True) for t in ts]


def run_both(mode, layout, qs_slots=None, qs_set=(3, 4), use_mlp=True, seed=0):
    src0, tgt0 = make_feats(mode, layout, qs_set, seed)
    ids_in = make_ids(qs_set, seed, mode)
    refm, ours = make_modules(mode, layout, src0, qs_slots, use_mlp)
    res = {}
    for name, mod in (("ours", ours), ("ref", refm)):
        src, tgt = leafs(src0), leafs(tgt0)
        k, ids, mats = mod(src, num_patches=N, patch_ids=list(ids_in))
        q, ids_t, _ = mod(tgt, num_patches=N, patch_ids=ids, attn_mats=mats)
        res[name] = dict(src=src, tgt=tgt, k=k, q=q, ids=ids, mod=mod)
    return res, ids_in, qs_set


def _check(res, ids_in, qs_set, mode):
    o, r = res["ours"], res["ref"]
    assert len(o["k"]) == len(o["q"]) == len(o["ids"]) == len(TAPS)
    for s in range(len(TAPS)):
        qs = s in qs_set and mode != "none"
        assert tuple(o["k"][s].shape) == tuple(r["k"][s].shape), s
        close(o["k"][s], r["k"][s], msg=f"slot {s} source call (K)")
        close(o["q"][s], r["q"][s], msg=f"slot {s} target call (Q)")
        if qs:
            assert torch.equal(torch.as_tensor(o["ids"][s]), r["ids"][s]), f"slot {s} selection"
        else:
            assert torch.equal(torch.as_tensor(o["ids"][s]).flatten(), ids_in[s]), f"slot {s} ids"
    # gradients: PatchNCE per slot + a term on the keys so the key branch is exercised too
    def total(d):
        L = 0
        for s in range(len(TAPS)):
            L = L + ref.patch_nce(d["q"][s], d["k"][s], num_images=B, reduction="mean")
            L = L + (d["k"][s] * weights_like(d["k"][s], 40 + s)).sum() * 0.1
        return L

    Lo, Lr = total(o), total(r)
    close(Lo.detach(), Lr.detach(), msg="loss")
    Lo.backward()
    Lr.backward()
    rp = dict(r["mod"].named_parameters())
    op = dict(o["mod"].named_parameters())
    assert set(op) == set(rp)
    for n in rp:
        assert op[n].grad is not None, n
        close(op[n].grad, rp[n].grad, msg=f"grad {n}")
    for s in range(len(TAPS)):
        close(o["src"][s].grad, r["src"][s].grad, msg=f"grad source map {s}")
        close(o["tgt"][s].grad, r["tgt"][s].grad, msg=f"grad target map {s}")


@pytest.mark.parametrize("mode,layout", MODES)
def test_patch_sample_f_vs_reference(mode, layout):
    res, ids_in, qs_set = run_both(mode, layout)
    _check(res, ids_in, qs_set, mode)


def test_patch_sample_f_batch_one_local_reference():
    # B = 1 with N = C = 16 is the only B = 1 case the authors' code runs; ours must match it
    global B
    old = B
    B = 1
    try:
        res, ids_in, qs_set = run_both("local", "reference", seed=3)
        _check(res, ids_in, qs_set, "local")
    finally:
        B = old


def test_patch_sample_f_mode_none_is_cut():
    res, ids_in, qs_set = run_both("none", "reference", qs_set=())
    _check(res, ids_in, (), "none")


def test_patch_sample_f_explicit_qs_slots():
    res, ids_in, qs_set = run_both("global", "reference", qs_slots=[4], qs_set=(4,))
    _check(res, ids_in, (4,), "global")


def test_patch_sample_f_no_mlp():
    res, ids_in, qs_set = run_both("global", "reference", use_mlp=False)
    o, r = res["ours"], res["ref"]
    for s, (C, H, W) in enumerate(TAPS):
        assert tuple(o["k"][s].shape) == (B * N, C)
        close(o["k"][s], r["k"][s])
        close(o["q"][s], r["q"][s])
    assert len(list(o["mod"].parameters())) == 0


def test_patch_sample_f_random_ids_drawn():
    """Without patch_ids: random slots draw distinct ids in range; the features are exactly
    the reference's for those ids."""
    src0, tgt0 = make_feats("global", "reference")
    refm, ours = make_modules("global", "reference", src0)
    k, ids, mats = ours(src0, num_patches=N)
    for s, (C, H, W) in enumerate(TAPS[:3]):
        i = torch.as_tensor(ids[s]).flatten()
        assert i.numel() == N
        assert i.dtype == torch.int64
        assert len(set(i.tolist())) == N
        assert 0 <= int(i.min()) and int(i.max()) < H * W
    rk, _, _ = refm(src0, num_patches=N, patch_ids=[torch.as_tensor(ids[s]).flatten() for s in range(3)]
                    + [None, None])
    for s in range(5):
        close(k[s], rk[s], msg=f"slot {s}")
    # the L2 normalisation (rows of norm 1 up to the 1e-7 epsilon)
    for s in range(5):
        torch.testing.assert_close(k[s].norm(dim=1), torch.ones(B * N), atol=1e-5, rtol=0)


def test_patch_sample_f_num_patches_larger_than_random_slot():
    """Random slots take min(N, P) ids (docs/algorithm.md §7.2)."""
    feats = [0.5 * torch.randn(B, 3, 3, 3), 0.5 * torch.randn(B, 4, 4, 4)]
    ours = qs_attn.nn.PatchSampleF(mode="none", use_mlp=False)
    k, ids, _ = ours(feats, num_patches=12)
    assert tuple(k[0].shape) == (B * 9, 3)
    assert torch.as_tensor(ids[0]).numel() == 9
    assert tuple(k[1].shape) == (B * 12, 4)


def test_patch_sample_f_lazy_build_and_init():
    feats = [torch.randn(1, c, 2, 2) for c in (3, 16, 48)]
    nc = 64
    ours = qs_attn.nn.PatchSampleF(mode="none", nc=nc)
    assert not any(k.startswith("mlp_") for k in ours.state_dict())
    ours(feats, num_patches=2)
    keys = {f"mlp_{s}.{i}.{n}" for s in range(3) for i in (0, 2) for n in ("weight", "bias")}
    assert set(ours.state_dict().keys()) == keys
    sd = ours.state_dict()
    for s, c in enumerate((3, 16, 48)):
        assert tuple(sd[f"mlp_{s}.0.weight"].shape) == (nc, c)
        assert tuple(sd[f"mlp_{s}.2.weight"].shape) == (nc, nc)
        assert torch.all(sd[f"mlp_{s}.0.bias"] == 0) and torch.all(sd[f"mlp_{s}.2.bias"] == 0)
    # Xavier-normal, gain 0.02 (docs/algorithm.md §3.1): std = 0.02·sqrt(2/(fan_in+fan_out))
    for name, fan_in in (("mlp_2.0.weight", 48), ("mlp_2.2.weight", nc), ("mlp_1.2.weight", nc)):
        w = sd[name]
        expected = 0.02 * (2.0 / (fan_in + nc)) ** 0.5
        assert abs(w.std().item() / expected - 1) < 0.15, (name, w.std().item(), expected)
        assert abs(w.mean().item()) < 0.2 * expected


def test_patch_sample_f_param_count_default_taps():
    feats = [torch.zeros(1, c, 1, 1) for c in (3, 128, 256, 256, 256)]
    ours = qs_attn.nn.PatchSampleF()
    ours.create_mlp(feats)
    assert sum(p.numel() for p in ours.parameters()) == 560384  # docs/algorithm.md T1


def test_patch_sample_f_state_dict_roundtrip_from_reference():
    src0, _ = make_feats("global", "reference")
    refm, ours = make_modules("global", "reference", src0)
    sd = ours.state_dict()
    for k, v in refm.state_dict().items():
        assert torch.equal(sd[k], v), k
