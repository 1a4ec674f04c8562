"""Validates the CUT / QS-Attn network-and-step oracle (reference_cut.py) against the
numbers of docs/algorithm.md (§3, §3.1, §4, §5, §10, §11.3, §11.5, §15 T1/T2/T7/T12/T13).
Does not need qs_attn. Sizes are tiny except T1 (default widths, one 256² forward)."""

import math

import pytest
import torch
import torch.nn as nn

import reference as ref
import reference_cut as rc

SMALL = dict(ngf=8, ndf=8)


@pytest.fixture(scope="module")
def default_nets():
    torch.manual_seed(0)
    opt = rc.CUTOptions()
    G = rc.init_weights(rc.ResnetGenerator())
    D = rc.init_weights(rc.NLayerDiscriminator())
    F = rc.make_F(opt)
    return G, D, F


def _img(shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)


# ----------------------------------------------------------------------------- T1


def test_t1_param_counts(default_nets):
    G, D, F = default_nets
    assert rc.param_count(G) == 11_378_179
    assert rc.param_count(D) == 2_764_737
    assert rc.param_count(F) == 560_384


def test_t1_generator_keys(default_nets):
    G, _, _ = default_nets
    sd = G.state_dict()
    expected = set()
    for i in (1, 4, 8, 22, 26, 30):
        expected |= {f"model.{i}.weight", f"model.{i}.bias"}
    for i in (7, 11, 21, 25):
        expected.add(f"model.{i}.filt")
    for i in range(12, 21):
        for j in (1, 5):
            expected |= {f"model.{i}.conv_block.{j}.weight", f"model.{i}.conv_block.{j}.bias"}
    assert set(sd.keys()) == expected
    assert sd["model.7.filt"].shape == (128, 1, 3, 3)
    assert sd["model.11.filt"].shape == (256, 1, 3, 3)
    assert sd["model.21.filt"].shape == (256, 1, 4, 4)
    assert sd["model.25.filt"].shape == (128, 1, 4, 4)
    assert sd["model.1.weight"].shape == (64, 3, 7, 7)
    assert sd["model.30.weight"].shape == (3, 64, 7, 7)
    assert sd["model.12.conv_block.1.weight"].shape == (256, 256, 3, 3)
    # buffers are not parameters
    names = {n for n, _ in G.named_parameters()}
    assert not any(n.endswith("filt") for n in names)


def test_t1_discriminator_keys(default_nets):
    _, D, _ = default_nets
    sd = D.state_dict()
    expected = set()
    for i in (0, 3, 7, 11, 14):
        expected |= {f"model.{i}.weight", f"model.{i}.bias"}
    for i in (2, 6, 10):
        expected.add(f"model.{i}.filt")
    assert set(sd.keys()) == expected
    assert sd["model.0.weight"].shape == (64, 3, 4, 4)
    assert sd["model.11.weight"].shape == (512, 256, 4, 4)
    assert sd["model.14.weight"].shape == (1, 512, 4, 4)
    assert sd["model.10.filt"].shape == (256, 1, 3, 3)


def test_t1_netF_keys(default_nets):
    _, _, F = default_nets
    sd = F.state_dict()
    expected = set()
    for s in range(5):
        for j in (0, 2):
            expected |= {f"mlp_{s}.{j}.weight", f"mlp_{s}.{j}.bias"}
    assert set(sd.keys()) == expected
    for s, c in enumerate((3, 128, 256, 256, 256)):
        assert sd[f"mlp_{s}.0.weight"].shape == (256, c)
        assert sd[f"mlp_{s}.2.weight"].shape == (256, 256)


def test_t1_shapes_256(default_nets):
    G, D, _ = default_nets
    x = _img((1, 3, 256, 256), 1)
    with torch.no_grad():
        taps = G(x, [0, 4, 8, 12, 16], encode_only=True)
        assert [tuple(t.shape) for t in taps] == [
            (1, 3, 262, 262), (1, 128, 256, 256), (1, 256, 128, 128),
            (1, 256, 64, 64), (1, 256, 64, 64)]
        y = G(x)
        assert y.shape == (1, 3, 256, 256)
        assert float(y.abs().max()) <= 1.0  # tanh
        assert D(y).shape == (1, 1, 30, 30)
    # tap 0 is the reflection-padded input image itself
    torch.testing.assert_close(taps[0], nn.functional.pad(x, (3, 3, 3, 3), mode="reflect"),
                               atol=0, rtol=0)
    # docs/algorithm.md §6 positions for 256²
    assert [t.shape[2] * t.shape[3] for t in taps] == [68644, 65536, 16384, 4096, 4096]


def test_generator_index_table(default_nets):
    G, _, _ = default_nets
    m = G.model
    assert len(m) == 32

    def conv(i, cin, cout, k, pad):
        assert isinstance(m[i], nn.Conv2d), i
        assert (m[i].in_channels, m[i].out_channels) == (cin, cout), i
        assert m[i].kernel_size == (k, k) and m[i].stride == (1, 1), i
        assert m[i].padding == (pad, pad) and m[i].bias is not None, i

    def inorm(i, c):
        assert isinstance(m[i], nn.InstanceNorm2d) and m[i].num_features == c, i
        assert not m[i].affine and not m[i].track_running_stats and m[i].eps == 1e-5, i

    assert isinstance(m[0], nn.ReflectionPad2d) and m[0].padding == (3, 3, 3, 3)
    conv(1, 3, 64, 7, 0); inorm(2, 64); assert isinstance(m[3], nn.ReLU)
    conv(4, 64, 128, 3, 1); inorm(5, 128); assert isinstance(m[6], nn.ReLU)
    assert isinstance(m[7], rc.Downsample) and m[7].channels == 128
    conv(8, 128, 256, 3, 1); inorm(9, 256); assert isinstance(m[10], nn.ReLU)
    assert isinstance(m[11], rc.Downsample) and m[11].channels == 256
    for i in range(12, 21):
        assert isinstance(m[i], rc.ResnetBlock)
        cb = m[i].conv_block
        assert isinstance(cb[0], nn.ReflectionPad2d) and isinstance(cb[4], nn.ReflectionPad2d)
        assert isinstance(cb[1], nn.Conv2d) and cb[1].padding == (0, 0)
        assert isinstance(cb[2], nn.InstanceNorm2d) and isinstance(cb[3], nn.ReLU)
        assert isinstance(cb[5], nn.Conv2d) and isinstance(cb[6], nn.InstanceNorm2d)
        assert len(cb) == 7
    assert isinstance(m[21], rc.Upsample) and m[21].channels == 256
    conv(22, 256, 128, 3, 1); inorm(23, 128); assert isinstance(m[24], nn.ReLU)
    assert isinstance(m[25], rc.Upsample) and m[25].channels == 128
    conv(26, 128, 64, 3, 1); inorm(27, 64); assert isinstance(m[28], nn.ReLU)
    assert isinstance(m[29], nn.ReflectionPad2d) and m[29].padding == (3, 3, 3, 3)
    conv(30, 64, 3, 7, 0); assert isinstance(m[31], nn.Tanh)


def test_discriminator_index_table(default_nets):
    _, D, _ = default_nets
    m = D.model
    assert len(m) == 15
    for i, (cin, cout) in zip((0, 3, 7, 11, 14), ((3, 64), (64, 128), (128, 256), (256, 512), (512, 1))):
        assert isinstance(m[i], nn.Conv2d)
        assert (m[i].in_channels, m[i].out_channels) == (cin, cout)
        assert m[i].kernel_size == (4, 4) and m[i].stride == (1, 1) and m[i].padding == (1, 1)
        assert m[i].bias is not None
    for i in (1, 5, 9, 13):
        assert isinstance(m[i], nn.LeakyReLU) and m[i].negative_slope == 0.2
    for i in (4, 8, 12):
        assert isinstance(m[i], nn.InstanceNorm2d) and not m[i].affine
    for i, c in zip((2, 6, 10), (64, 128, 256)):
        assert isinstance(m[i], rc.Downsample) and m[i].channels == c


def test_encode_only_order_and_early_stop():
    torch.manual_seed(3)
    G = rc.init_weights(rc.ResnetGenerator(ngf=8, n_blocks=9))
    x = _img((1, 3, 32, 32), 2)
    called = []
    hooks = [G.model[i].register_forward_hook(lambda mod, a, o, i=i: called.append(i))
             for i in range(32)]
    with torch.no_grad():
        a = G(x, [0, 4, 8, 12, 16], encode_only=True)
        assert max(called) == 16 and called == list(range(17))
        called.clear()
        b = G(x, [16, 4], encode_only=True)  # list order, not model order
        assert max(called) == 16
        called.clear()
        fake, taps = G(x, [4, 12])  # CUT's (translation, taps) form
        assert called == list(range(32))
        called.clear()
        y = G(x)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(b[0], a[4], atol=0, rtol=0)
    torch.testing.assert_close(b[1], a[1], atol=0, rtol=0)
    torch.testing.assert_close(taps[0], a[1], atol=0, rtol=0)
    torch.testing.assert_close(fake, y, atol=0, rtol=0)
    # taps 4 / 8 are the pre-norm conv outputs
    with torch.no_grad():
        h = G.model[3](G.model[2](G.model[1](G.model[0](x))))
        torch.testing.assert_close(a[1], G.model[4](h), atol=0, rtol=0)


def test_resblock_is_residual():
    torch.manual_seed(4)
    blk = rc.init_weights(rc.ResnetBlock(6), "normal", 0.5)
    x = _img((2, 6, 5, 7), 3)
    with torch.no_grad():
        torch.testing.assert_close(blk(x), x + blk.conv_block(x), atol=0, rtol=0)
        # instance norm: biased variance over H·W per (b, c), eps 1e-5
        z = blk.conv_block[1](blk.conv_block[0](x))
        mu = z.mean(dim=(2, 3), keepdim=True)
        var = z.var(dim=(2, 3), unbiased=False, keepdim=True)
        torch.testing.assert_close(blk.conv_block[2](z), (z - mu) / torch.sqrt(var + 1e-5),
                                   atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- T2


def test_t2_down_up_values():
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    torch.testing.assert_close(rc.Downsample(1)(x), torch.tensor([[[[2.5, 4.0], [8.5, 10.0]]]]),
                               atol=1e-6, rtol=0)
    y = rc.Upsample(1)(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]))
    exp = torch.tensor([[1, 1.25, 1.75, 2], [1.5, 1.75, 2.25, 2.5],
                        [2.5, 2.75, 3.25, 3.5], [3, 3.25, 3.75, 4]])
    torch.testing.assert_close(y[0, 0], exp, atol=1e-6, rtol=0)
    up = rc.Upsample(3).filt
    assert up.shape == (3, 1, 4, 4)
    kexp = torch.tensor([1, 3, 3, 1, 3, 9, 9, 3, 3, 9, 9, 3, 1, 3, 3, 1], dtype=torch.float32) / 16
    for c in range(3):
        torch.testing.assert_close(up[c, 0].flatten(), kexp, atol=0, rtol=0)
    dn = rc.Downsample(2).filt
    assert dn.shape == (2, 1, 3, 3)
    torch.testing.assert_close(dn[1, 0].flatten(),
                               torch.tensor([1, 2, 1, 2, 4, 2, 1, 2, 1], dtype=torch.float32) / 16,
                               atol=0, rtol=0)
    assert list(rc.Downsample(2).parameters()) == [] and list(rc.Upsample(2).parameters()) == []


@pytest.mark.parametrize("h,w", [(4, 4), (5, 7), (2, 3), (8, 6)])
def test_down_up_sizes_and_depthwise(h, w):
    x = _img((2, 3, h, w), 5)
    d = rc.Downsample(3)(x)
    assert d.shape == (2, 3, (h - 1) // 2 + 1, (w - 1) // 2 + 1)
    u = rc.Upsample(3)(x)
    assert u.shape == (2, 3, 2 * h, 2 * w)
    # depthwise: channel c of the output depends only on channel c of the input
    x2 = x.clone()
    x2[:, 1] += 1.0
    torch.testing.assert_close(rc.Upsample(3)(x2)[:, 0], u[:, 0], atol=0, rtol=0)
    torch.testing.assert_close(rc.Downsample(3)(x2)[:, 2], d[:, 2], atol=0, rtol=0)
    # both kernels preserve constants (Up: 4 taps of the stride-2 phases sum to 1 each)
    c = torch.full((1, 3, h, w), 0.75)
    torch.testing.assert_close(rc.Downsample(3)(c), torch.full_like(d[:1], 0.75), atol=1e-6, rtol=0)
    torch.testing.assert_close(rc.Upsample(3)(c), torch.full_like(u[:1], 0.75), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- T7


def test_t7_gan_losses():
    pred = torch.tensor([[[[0.5, -1.0], [2.0, 0.0]]]])
    cases = {
        "lsgan": (1.5625, 1.3125),
        "vanilla": (0.6518534, 1.0268536),
        "wgangp": (-0.375, 0.375),
        "nonsaturating": (0.6518534, 1.0268536),
    }
    for mode, (real, fake) in cases.items():
        crit = rc.GANLoss(mode)
        lr, lf = crit(pred, True), crit(pred, False)
        if mode == "nonsaturating":
            assert lr.shape == (1,) and lf.shape == (1,)
        else:
            assert lr.dim() == 0 and lf.dim() == 0
        assert float(lr.mean()) == pytest.approx(real, rel=1e-6, abs=1e-7), mode
        assert float(lf.mean()) == pytest.approx(fake, rel=1e-6, abs=1e-7), mode
    # nonsaturating: one value per sample (mean over that sample's elements)
    p2 = torch.cat([pred, -pred], 0)
    v = rc.GANLoss("nonsaturating")(p2, True)
    assert v.shape == (2,)
    assert float(v[0]) == pytest.approx(0.6518534, rel=1e-6)
    assert float(v[1]) == pytest.approx(1.0268536, rel=1e-6)
    with pytest.raises(ValueError):
        rc.GANLoss("hinge")


# ----------------------------------------------------------------------------- T12


def test_t12_lr_multipliers():
    exp = {1: 1.0, 200: 1.0, 201: 0.99502488, 300: 0.50248756, 400: 0.00497512}
    for epoch, m in exp.items():
        assert rc.lr_multiplier_for_epoch(epoch) == pytest.approx(m, abs=1e-8)
        assert rc.lr_lambda(epoch - 1) == pytest.approx(m, abs=1e-8)
    assert rc.lr_lambda(200) == pytest.approx(200 / 201)
    assert rc.lr_lambda(399) == pytest.approx(1 / 201)
    # same as torch's LambdaLR driven once per epoch
    p = nn.Parameter(torch.zeros(1))
    o = torch.optim.Adam([p], lr=2e-4)
    sch = torch.optim.lr_scheduler.LambdaLR(o, lr_lambda=rc.lr_lambda)
    seen = {}
    for epoch in range(1, 401):
        seen[epoch] = o.param_groups[0]["lr"] / 2e-4
        o.step()
        sch.step()
    for epoch, m in exp.items():
        assert seen[epoch] == pytest.approx(m, abs=1e-8)


# ----------------------------------------------------------------------------- T13


def test_t13_init_statistics(default_nets):
    G, D, F = default_nets
    w = G.state_dict()["model.1.weight"]
    exp = 0.02 * math.sqrt(2.0 / (3 * 49 + 64 * 49))
    assert exp == pytest.approx(4.936e-4, rel=1e-3)
    assert abs(float(w.std()) - exp) / exp < 0.03
    assert abs(float(w.mean())) < 5 * exp / math.sqrt(w.numel())
    for net in (G, D, F):
        for name, t in net.state_dict().items():
            if name.endswith("bias"):
                assert bool((t == 0).all()), name
    # Xavier-normal std for other layers: conv k4 of D, Linear of F
    w = D.state_dict()["model.11.weight"]
    exp = 0.02 * math.sqrt(2.0 / (256 * 16 + 512 * 16))
    assert abs(float(w.std()) - exp) / exp < 0.03
    w = F.state_dict()["mlp_4.2.weight"]
    exp = 0.02 * math.sqrt(2.0 / 512)
    assert abs(float(w.std()) - exp) / exp < 0.03
    # buffers untouched by init_weights
    torch.testing.assert_close(G.state_dict()["model.7.filt"], rc.Downsample(128).filt, atol=0, rtol=0)
    torch.testing.assert_close(G.state_dict()["model.25.filt"], rc.Upsample(128).filt, atol=0, rtol=0)


def test_init_types():
    for t in ("normal", "xavier", "kaiming", "orthogonal"):
        torch.manual_seed(0)
        net = rc.init_weights(rc.NLayerDiscriminator(ndf=4), t, 0.02)
        assert all(bool((p == 0).all()) for n, p in net.named_parameters() if n.endswith("bias"))
    torch.manual_seed(0)
    net = rc.init_weights(nn.Sequential(nn.Conv2d(4, 8, 3), nn.Linear(5, 6)), "normal", 0.02)
    assert float(net[0].weight.detach().std()) == pytest.approx(0.02, rel=0.2)
    with pytest.raises(ValueError):
        rc.init_weights(rc.ResnetBlock(2), "bogus")


# ----------------------------------------------------------------------------- losses / step


def _setup(opt, seed=0, size=64, batch=1, ngf=8, ndf=8, dtype=torch.float32):
    G, D, F = rc.build_models(opt, ngf=ngf, ndf=ndf, image_size=(size, size), seed=seed, dtype=dtype)
    x = _img((batch, 3, size, size), 100 + seed, dtype)
    y = _img((batch, 3, size, size), 200 + seed, dtype)
    P = rc.tap_positions(G, size, size, opt)
    g = torch.Generator().manual_seed(300 + seed)
    ids_x = rc.draw_patch_ids(P, opt, g)
    ids_y = rc.draw_patch_ids(P, opt, g)
    return G, D, F, x, y, ids_x, ids_y


def _grads(net):
    return {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in net.named_parameters()}


def _nonzero(g):
    return g is not None and bool((g != 0).any()) and bool(torch.isfinite(g).all())


def test_draw_patch_ids_and_positions():
    opt = rc.CUTOptions(num_patches=64)
    G = rc.ResnetGenerator(ngf=8)
    P = rc.tap_positions(G, 64, 64, opt)
    assert P == [70 * 70, 64 * 64, 32 * 32, 16 * 16, 16 * 16]
    ids = rc.draw_patch_ids(P, opt, torch.Generator().manual_seed(0))
    assert ids[3] is None and ids[4] is None
    for s in range(3):
        assert ids[s].shape == (64,) and len(set(ids[s].tolist())) == 64
        assert int(ids[s].max()) < P[s]
    # num_patches > P: all positions
    ids = rc.draw_patch_ids([10, 20, 30, 5, 5], rc.CUTOptions(num_patches=16), None)
    assert ids[0].shape == (10,) and sorted(ids[0].tolist()) == list(range(10))
    assert all(t is not None for t in rc.draw_patch_ids([4] * 5, rc.CUTOptions(qs_mode="none"), None))


def test_e2e_one_step_global_64():
    """A T1-style (docs/algorithm.md §15) tiny end-to-end step: 1×3×64×64, global QS, N = 64
    (QS maps 16×16, P = 256 ≥ N), default widths."""
    opt = rc.CUTOptions(num_patches=64)
    G, D, F, x, y, ids_x, ids_y = _setup(opt, seed=1, ngf=64, ndf=64)
    out = rc.one_step(G, D, F, x, y, opt, ids_x, ids_y)
    for k in ("D", "D_fake", "D_real", "G_GAN", "NCE", "NCE_Y", "G"):
        assert out[k].dim() == 0 and bool(torch.isfinite(out[k])), k
    assert float(out["NCE"]) > 0 and float(out["NCE_Y"]) > 0
    assert len(out["NCE_slots"]) == 5 and len(out["NCE_Y_slots"]) == 5
    # totals (docs/algorithm.md §10, §9 last line)
    torch.testing.assert_close(out["D"], 0.5 * (out["D_fake"] + out["D_real"]))
    torch.testing.assert_close(out["NCE"], sum(out["NCE_slots"]) / 5)
    torch.testing.assert_close(out["NCE_Y"], sum(out["NCE_Y_slots"]) / 5)
    torch.testing.assert_close(out["G"], out["G_GAN"] + 0.5 * (out["NCE"] + out["NCE_Y"]))
    # every parameter of G, D and F has a finite, non-zero gradient
    for net in (G, D, F):
        for n, p in net.named_parameters():
            if n.endswith("bias") and isinstance(_owner(net, n), nn.Conv2d) and _before_norm(net, n):
                # a bias right before instance norm has (numerically) ~0 gradient
                assert p.grad is not None and bool(torch.isfinite(p.grad).all()), n
                continue
            assert _nonzero(p.grad), (type(net).__name__, n)
    # D's gradients are exactly those of L_D (nothing from the G step)
    gD = _grads(D)
    D.zero_grad(set_to_none=True)
    ld, _, _ = rc.compute_D_loss(G, D, x, y, out["fake_B"], opt.gan_mode)
    ld.backward()
    torch.testing.assert_close(ld.detach(), out["D"], atol=0, rtol=0)
    for n, p in D.named_parameters():
        torch.testing.assert_close(p.grad, gD[n], atol=0, rtol=0)
    assert all(p.requires_grad for p in D.parameters())
    # fake_B = G(x) (instance norm is per image) and idt_B = G(y)
    with torch.no_grad():
        torch.testing.assert_close(G(x), out["fake_B"], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(G(y), out["idt_B"], atol=1e-5, rtol=1e-4)


def _owner(net, pname):
    mod = net
    for part in pname.split(".")[:-1]:
        mod = getattr(mod, part) if not part.isdigit() else mod[int(part)]
    return mod


def _before_norm(net, pname):
    """True when the conv owning ``pname`` is directly followed by an InstanceNorm."""
    parts = pname.split(".")
    parent = net
    for part in parts[:-2]:
        parent = getattr(parent, part) if not part.isdigit() else parent[int(part)]
    if not isinstance(parent, nn.Sequential) or not parts[-2].isdigit():
        return False
    i = int(parts[-2])
    return i + 1 < len(parent) and isinstance(parent[i + 1], nn.InstanceNorm2d)


def test_d_step_detaches_fake():
    opt = rc.CUTOptions(num_patches=16)
    G, D, F, x, y, _, _ = _setup(opt, seed=2)
    fake_B, idt_B = rc.forward(G, x, y, opt)
    ld, lf, lr = rc.compute_D_loss(G, D, x, y, fake_B)
    ld.backward()
    assert all(p.grad is None for p in G.parameters())
    assert all(_nonzero(p.grad) for n, p in D.named_parameters() if not n.endswith("bias") or "model.14" in n or "model.0" in n)
    with torch.no_grad():
        torch.testing.assert_close(lf, (D(fake_B) ** 2).mean())
        torch.testing.assert_close(lr, ((D(y) - 1) ** 2).mean())


def test_g_step_freezes_d_but_flows_through_it():
    opt = rc.CUTOptions(num_patches=16, lambda_NCE=0.0)
    G, D, F, x, y, ids_x, ids_y = _setup(opt, seed=3)
    out = rc.one_step(G, D, F, x, y, opt, ids_x, ids_y)
    # λ_NCE = 0: G loss is the GAN term only, NCE terms skipped, F gets nothing
    assert float(out["NCE"]) == 0 and float(out["NCE_Y"]) == 0 and out["NCE_slots"] == []
    torch.testing.assert_close(out["G"], out["G_GAN"])
    assert all(p.grad is None for p in F.parameters())
    assert _nonzero(G.model[30].weight.grad) and _nonzero(G.model[1].weight.grad)
    assert rc.make_optimizers(G, D, F, opt)[2] is None


def _manual_nce(G, F, src, tgt, opt, ids):
    """Independent wiring of one L_NCE(src, tgt) for global QS: explicit gathers and MLP calls."""
    fk = G(src, list(opt.nce_layers), encode_only=True)
    fq = G(tgt, list(opt.nce_layers), encode_only=True)
    total = 0.0
    slots = []
    for s, (a, b) in enumerate(zip(fk, fq)):
        Xk, Xq = ref.flatten(a), ref.flatten(b)
        if s >= 3:
            sel, A = ref.global_select(Xk, opt.num_patches)
            zk, zq = torch.bmm(A, Xk), torch.bmm(A, Xq)
        else:
            zk, zq = Xk[:, ids[s]], Xq[:, ids[s]]
        mlp = getattr(F, f"mlp_{s}")
        k = ref.l2norm(mlp(zk.reshape(-1, zk.shape[-1])))
        q = ref.l2norm(mlp(zq.reshape(-1, zq.shape[-1])))
        t = ref.patch_nce(q, k, opt.nce_T, num_images=src.shape[0]).mean() * opt.lambda_NCE
        slots.append(t)
        total = total + t
    return total / len(fk), slots


def test_nce_wiring_matches_manual():
    opt = rc.CUTOptions(num_patches=32, lambda_NCE=2.0)
    G, D, F, x, y, ids_x, ids_y = _setup(opt, seed=4, size=32, batch=2, dtype=torch.float64)
    with torch.no_grad():
        fake_B, idt_B = rc.forward(G, x, y, opt)
        tot, det = rc.calculate_NCE_loss(G, F, x, fake_B, opt, ids_x, return_details=True)
        man, slots = _manual_nce(G, F, x, fake_B, opt, ids_x)
    torch.testing.assert_close(tot, man, atol=1e-12, rtol=1e-10)
    for a, b in zip(det["per_slot"], slots):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    # random slots reuse the injected ids (shared by the batch), QS slots select per image
    for s in range(3):
        assert torch.equal(det["ids"][s], ids_x[s])
        assert det["keys"][s].shape == (2 * 32, opt.netF_nc)
    for s in (3, 4):
        assert det["ids"][s].shape == (2, 32)
        assert det["attn"][s][1].shape == (2, 32, 8 * 8)


def test_nce_batch_is_per_image():
    """docs/algorithm.md Q3 / §9: with the actual batch, L_NCE on a batch of 2 = mean of the
    per-image terms (negatives never cross images; random ids shared; QS selection per image)."""
    opt = rc.CUTOptions(num_patches=32)
    G, D, F, x, y, ids_x, _ = _setup(opt, seed=5, size=32, batch=2, dtype=torch.float64)
    with torch.no_grad():
        fake_B, _ = rc.forward(G, x, y, opt)
        both = rc.calculate_NCE_loss(G, F, x, fake_B, opt, ids_x)
        one = [rc.calculate_NCE_loss(G, F, x[i:i + 1], fake_B[i:i + 1], opt, ids_x) for i in range(2)]
    torch.testing.assert_close(both, 0.5 * (one[0] + one[1]), atol=1e-10, rtol=1e-10)


def test_g_loss_terms_and_no_idt():
    opt = rc.CUTOptions(num_patches=16, lambda_GAN=0.5, nce_idt=False)
    G, D, F, x, y, ids_x, ids_y = _setup(opt, seed=6, size=32)
    fake_B, idt_B = rc.forward(G, x, y, opt)
    assert idt_B is None and fake_B.shape == x.shape
    out = rc.compute_G_loss(G, D, F, x, y, fake_B, None, opt, ids_x, ids_y)
    assert float(out["NCE_Y"]) == 0 and out["NCE_Y_slots"] == []
    with torch.no_grad():
        gan = ((D(fake_B) - 1) ** 2).mean() * 0.5
    torch.testing.assert_close(out["G_GAN"], gan)
    torch.testing.assert_close(out["G"], out["G_GAN"] + out["NCE"])
    opt0 = rc.CUTOptions(num_patches=16, lambda_GAN=0.0)
    out0 = rc.compute_G_loss(G, D, F, x, y, *rc.forward(G, x, y, opt0), opt0, ids_x, ids_y)
    assert float(out0["G_GAN"]) == 0
    torch.testing.assert_close(out0["G"], 0.5 * (out0["NCE"] + out0["NCE_Y"]))


@pytest.mark.parametrize("mode,layout", [("local", "reference"), ("local", "geometric"),
                                         ("local_global", "reference"), ("none", "reference")])
def test_one_step_other_modes(mode, layout):
    opt = rc.CUTOptions(num_patches=64, qs_mode=mode, local_layout=layout, netF_nc=32)
    G, D, F, x, y, ids_x, ids_y = _setup(opt, seed=7)
    out = rc.one_step(G, D, F, x, y, opt, ids_x, ids_y)
    for k in ("D", "G_GAN", "NCE", "NCE_Y", "G"):
        assert bool(torch.isfinite(out[k])), (mode, k)
    assert all(_nonzero(p.grad) for n, p in F.named_parameters() if n.endswith("weight"))


@pytest.mark.parametrize("gan_mode", ["vanilla", "nonsaturating", "wgangp"])
def test_one_step_gan_modes(gan_mode):
    opt = rc.CUTOptions(num_patches=16, gan_mode=gan_mode, netF_nc=32)
    G, D, F, x, y, ids_x, ids_y = _setup(opt, seed=8, size=32)
    out = rc.one_step(G, D, F, x, y, opt, ids_x, ids_y)
    crit = rc.GANLoss(gan_mode)
    with torch.no_grad():
        torch.testing.assert_close(out["D_fake"], crit(D(out["fake_B"]), False).mean())
        torch.testing.assert_close(out["G_GAN"], crit(D(out["fake_B"]), True).mean())


def test_adam_steps_reference_order():
    opt = rc.CUTOptions(num_patches=32, netF_nc=32)
    G, D, F, x, y, ids_x, ids_y = _setup(opt, seed=9)
    optims = rc.make_optimizers(G, D, F, opt)
    for o in optims:
        assert isinstance(o, torch.optim.Adam)
        assert o.defaults["lr"] == 2e-4 and o.defaults["betas"] == (0.5, 0.999)
        assert o.defaults["eps"] == 1e-8 and o.defaults["weight_decay"] == 0
    g0 = {n: p.detach().clone() for n, p in G.named_parameters()}
    f0 = {n: p.detach().clone() for n, p in F.named_parameters()}
    d_prev = {n: p.detach().clone() for n, p in D.named_parameters()}
    gen = torch.Generator().manual_seed(77)
    P = rc.tap_positions(G, 64, 64, opt)
    for k in range(2):
        if k:
            ids_x, ids_y = rc.draw_patch_ids(P, opt, gen), rc.draw_patch_ids(P, opt, gen)
        out = rc.one_step(G, D, F, x, y, opt, ids_x, ids_y, optimizers=optims)
        assert bool(torch.isfinite(out["G"]))
        # the G loss saw the just-updated D (D is not changed by the G/F step)
        with torch.no_grad():
            torch.testing.assert_close(out["G_GAN"], ((D(out["fake_B"]) - 1) ** 2).mean())
            assert any(not torch.equal(p, d_prev[n]) for n, p in D.named_parameters())
        d_prev = {n: p.detach().clone() for n, p in D.named_parameters()}
    assert any(not torch.equal(p, g0[n]) for n, p in G.named_parameters())
    assert all(not torch.equal(p, f0[n]) for n, p in F.named_parameters() if n.endswith("weight"))
    # first Adam step moves each weight by ≈ lr (|m̂/√v̂| = 1 per element)
    G2, D2, F2, *_ = _setup(opt, seed=9)
    optims2 = rc.make_optimizers(G2, D2, F2, opt)
    w_before = G2.model[30].weight.detach().clone()
    rc.one_step(G2, D2, F2, x, y, opt, *_setup_ids(G2, opt, 9), optimizers=optims2)
    delta = (G2.model[30].weight.detach() - w_before).abs()
    mask = G2.model[30].weight.grad.abs() > 1e-4
    assert int(mask.sum()) > 100
    torch.testing.assert_close(delta[mask], torch.full_like(delta[mask], 2e-4), atol=1e-6, rtol=1e-3)


def _setup_ids(G, opt, seed):
    P = rc.tap_positions(G, 64, 64, opt)
    g = torch.Generator().manual_seed(300 + seed)
    return rc.draw_patch_ids(P, opt, g), rc.draw_patch_ids(P, opt, g)
