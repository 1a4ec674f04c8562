"""The Rust trainer's training step against the plain-PyTorch transcription of
docs/algorithm.md §11.5 (reference_cut.py): same weights, same batch, injected patch ids;
every loss term and the gradients of G, D and F; then parameters after Adam steps."""

import json

import pytest
import torch

import qs_attn
import reference as ref
import reference_cut as rc
from qs_attn import _native

SIZE, NGF, NDF, N_BLOCKS, N = 32, 16, 16, 6, 16


def _models(mode, gan_mode="lsgan", nce_idt=True, seed=0):
    opt = rc.CUTOptions(num_patches=N, qs_mode=mode, local_layout="reference", gan_mode=gan_mode,
                        nce_idt=nce_idt, init_type="normal", init_gain=0.2)
    G, D, F = rc.build_models(opt, ngf=NGF, ndf=NDF, n_blocks=N_BLOCKS, image_size=(SIZE, SIZE), seed=seed)
    return opt, G, D, F


def _ours(opt, G, D, F):
    config = dict(dataroot="", name="step-test", mode=opt.qs_mode, local_layout=opt.local_layout,
                  gan_mode=opt.gan_mode, nce_idt=opt.nce_idt, num_patches=N, crop_size=SIZE, load_size=SIZE,
                  ngf=NGF, ndf=NDF, n_blocks=N_BLOCKS)
    trainer = _native.Trainer(json.dumps(config))
    for net, module in (("G", G), ("D", D), ("F", F)):
        trainer.load_state_dict(net, {k: v.detach().clone() for k, v in module.state_dict().items()})
    return trainer


def _batch(seed=1, b=2):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 3, SIZE, SIZE, generator=g) * 2 - 1, torch.rand(b, 3, SIZE, SIZE, generator=g) * 2 - 1)


def _ids(G, opt, seed):
    positions = rc.tap_positions(G, SIZE, SIZE, opt)
    return rc.draw_patch_ids(positions, opt, generator=torch.Generator().manual_seed(seed))


def _selection_tie_free(G, opt, real_A, real_B) -> bool:
    """The comparison is only meaningful when the QS selections cannot flip between two
    correct fp32 implementations: consecutive sorted entropies (float32, the reference's
    formula) among the first N + 1 are either exactly 0 (ties broken by index in both,
    docs/algorithm.md Q5: the rows of entropy exactly 0 are the same in both) or apart by more
    than 0.1 %."""
    if opt.qs_mode == "none":
        return True
    kind = "global" if opt.qs_mode in ("global", "cross") else "local"
    with torch.no_grad():
        fake = G(torch.cat([real_A, real_B]))
        for src in (real_A, real_B, fake):
            for s, f in enumerate(G(src, opt.nce_layers, encode_only=True)):
                if not rc.is_qs_slot(s, opt):
                    continue
                ent = torch.sort(ref.entropy(f.float(), kind, opt.window, opt.local_layout), dim=-1).values[:, : N + 1]
                lo, hi = ent[:, :-1], ent[:, 1:]
                if not bool((((lo == 0) & (hi == 0)) | (hi - lo > 1e-3 * hi.abs())).all()):
                    return False
    return True


def _tie_free_batch(G, opt, b=2):
    """The first seeded batch whose QS selections are tie-free (see above)."""
    for seed in range(100):
        real_A, real_B = _batch(seed, b)
        if _selection_tie_free(G, opt, real_A, real_B):
            return real_A, real_B
    raise RuntimeError("no tie-free batch found")


def _grad_scale(module) -> float:
    return max(float(p.grad.abs().max()) for p in module.parameters() if p.grad is not None)


def _assert_grad_close(ours, expected, scale, what, tol=1e-4):
    """Gradients agree to 1e-4 of the network's gradient scale (max |grad| over its
    parameters): fp32 sums over many terms differ in their last bits, and some gradients are
    mathematically zero (conv biases followed by instance norm) and hold only rounding noise,
    so elementwise relative errors are meaningless there."""
    err = float((ours - expected).abs().max())
    assert err <= tol * scale, f"{what}: max |diff| {err:.3e} > {tol:g} × {scale:.3e}"


@pytest.mark.parametrize("mode", ["global", "local", "local_global", "none"])
def test_one_step_losses_and_gradients_equal_the_transcription(mode):
    opt, G, D, F = _models(mode)
    trainer = _ours(opt, G, D, F)
    real_A, real_B = _tie_free_batch(G, opt)
    ids_x, ids_y = _ids(G, opt, 10), _ids(G, opt, 11)
    expected = rc.one_step(G, D, F, real_A, real_B, opt, ids_x, ids_y)
    got = trainer.step(real_A, real_B, update=False, ids_x=ids_x, ids_y=ids_y)
    for key in ("D", "D_fake", "D_real", "G_GAN", "NCE", "NCE_Y", "G"):
        assert got[key] == pytest.approx(float(expected[key]), rel=1e-4, abs=1e-6), key
    for net, module in (("G", G), ("D", D), ("F", F)):
        ours, scale = trainer.gradients(net), _grad_scale(module)
        for name, p in module.named_parameters():
            assert p.grad is not None, (net, name)
            _assert_grad_close(ours[name], p.grad, scale, f"{net}.{name}")


@pytest.mark.parametrize("gan_mode", ["vanilla", "nonsaturating", "wgangp"])
def test_one_step_other_gan_losses(gan_mode):
    opt, G, D, F = _models("global", gan_mode=gan_mode)
    trainer = _ours(opt, G, D, F)
    real_A, real_B = _tie_free_batch(G, opt)
    ids_x, ids_y = _ids(G, opt, 12), _ids(G, opt, 13)
    expected = rc.one_step(G, D, F, real_A, real_B, opt, ids_x, ids_y)
    got = trainer.step(real_A, real_B, update=False, ids_x=ids_x, ids_y=ids_y)
    for key in ("D", "G_GAN", "G"):
        assert got[key] == pytest.approx(float(expected[key]), rel=1e-4, abs=1e-6), key
    ours, scale = trainer.gradients("D"), _grad_scale(D)
    for name, p in D.named_parameters():
        _assert_grad_close(ours[name], p.grad, scale, f"D.{name}")


def test_reference_generator_state_dict_loads_and_translates_identically(tmp_path):
    """A generator saved by the authors' architecture (transcribed) as latest_net_G.pth."""
    G = rc.init_weights(rc.ResnetGenerator(ngf=16, n_blocks=6), "normal", 0.2)
    torch.save(G.state_dict(), tmp_path / "latest_net_G.pth")
    ours = qs_attn.load_generator(tmp_path / "latest_net_G.pth")
    x = torch.rand(2, 3, 48, 40) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ours(x), G(x), rtol=1e-4, atol=1e-5)
    assert ours.state_dict().keys() == G.state_dict().keys()


def test_adam_steps_match_torch_adam():
    opt, G, D, F = _models("global")
    initial = {net: {k: v.clone() for k, v in m.state_dict().items()} for net, m in (("G", G), ("D", D), ("F", F))}
    trainer = _ours(opt, G, D, F)
    optimizers = rc.make_optimizers(G, D, F, opt)
    noise_only = set()
    for k in range(3):
        real_A, real_B = _tie_free_batch(G, opt)
        ids_x, ids_y = _ids(G, opt, 30 + k), _ids(G, opt, 40 + k)
        rc.one_step(G, D, F, real_A, real_B, opt, ids_x, ids_y, optimizers=optimizers)
        trainer.step(real_A, real_B, update=True, ids_x=ids_x, ids_y=ids_y)
        # Adam divides by the gradient's own size, so a gradient that is only rounding noise
        # (mathematically zero: biases followed by instance norm) gives lr-sized random steps
        # in both implementations; such parameters are not comparable.
        for net, module in (("G", G), ("D", D), ("F", F)):
            scale = _grad_scale(module)
            noise_only |= {(net, n) for n, p in module.named_parameters() if float(p.grad.abs().max()) < 1e-3 * scale}
    compared = 0
    for net, module in (("G", G), ("D", D), ("F", F)):
        ours = trainer.state_dict(net)
        for name, p in module.state_dict().items():
            if (net, name) in noise_only:
                continue
            # Elementwise within half an Adam step (lr = 2e-4: a wrong update rule moves most
            # elements by about lr), and on average to float32 precision.
            torch.testing.assert_close(ours[name], p, rtol=1e-4, atol=1e-4, msg=lambda m: f"{net}.{name}: {m}")
            assert float((ours[name].detach() - p.detach()).abs().mean()) < 1e-6, f"{net}.{name}"
            compared += 1
        assert any(not torch.equal(ours[n], v) for n, v in initial[net].items()), f"{net} did not move"
    # Only biases are noise-only (those of convs followed by instance norm); every weight,
    # and every filter buffer, was compared.
    assert all(name.endswith(".bias") for _, name in noise_only), sorted(noise_only)
    assert compared == sum(len(m.state_dict()) for m in (G, D, F)) - len(noise_only)


def test_batch_of_two_keeps_negatives_and_selection_per_image():
    """B = 2: the per-image mean of two B = 1 steps for the NCE terms (docs/algorithm.md Q2/Q3)."""
    opt, G, D, F = _models("global")
    trainer = _ours(opt, G, D, F)
    real_A, real_B = _batch(seed=5)
    ids = _ids(G, opt, 7)
    both = trainer.step(real_A, real_B, update=False, ids_x=ids, ids_y=ids)
    singles = [trainer.step(real_A[i:i + 1], real_B[i:i + 1], update=False, ids_x=ids, ids_y=ids) for i in range(2)]
    for key in ("NCE", "NCE_Y"):
        assert both[key] == pytest.approx((singles[0][key] + singles[1][key]) / 2, rel=1e-4)


@pytest.mark.parametrize("change, message", [
    (lambda a, b: (a, b[:, :, 2:, 2:]), r"a and b must have the same shape, got \[2, 3, 32, 32\] and \[2, 3, 30, 30\]"),
    (lambda a, b: (a, torch.cat([b, b])), r"a and b must have the same shape"),
    (lambda a, b: (a.long(), b), r"a must be a floating-point \(B, C, H, W\) batch of images, got .* of Int64"),
    (lambda a, b: (a, b[0]), r"b must be a floating-point \(B, C, H, W\) batch"),
    (lambda a, b: (a.to("meta"), b), r"a must be a CPU or CUDA tensor"),
])
def test_a_step_on_a_bad_pair_of_batches_is_a_clear_error(change, message):
    # (these reached a cat, an index or a device copy inside Rust and panicked, or trained
    # on integers)
    opt, G, D, F = _models("none")
    trainer = _ours(opt, G, D, F)
    with pytest.raises(ValueError, match=message):
        trainer.step(*change(*_batch()), update=False)
