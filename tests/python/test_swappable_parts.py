"""User-written PyTorch parts inside the Rust trainer (issue: swappable components).

Per swap point: the trainer with the part replaced by an equivalent plain-PyTorch module or
callable (the transcriptions of docs/algorithm.md in reference.py / reference_cut.py, starting
from the same weights) gives the same losses, step after step, as the trainer with the built-in
part, and the Python module's parameters are updated by the trainer's optimiser exactly as the
built-in network's are."""
import copy
import json

import pytest
import torch

import qs_attn
import reference as ref
import reference_cut as rc
from qs_attn import _native
from tiny_run import TINY
from test_trainer_step import N, SIZE, _ids, _models, _ours, _selection_tie_free, _batch

STEPS = 2
LOSS_KEYS = ("D", "D_fake", "D_real", "G_GAN", "NCE", "NCE_Y", "G")


def _swapped(opt, G, D, F, parts):
    """A native trainer whose parts in ``parts`` are Python objects; the other networks get
    the weights of the transcriptions, as in ``_ours``."""
    config = dict(dataroot="", name="swap-test", mode=opt.qs_mode, local_layout=opt.local_layout,
                  gan_mode=opt.gan_mode, nce_idt=opt.nce_idt, num_patches=N, crop_size=SIZE, load_size=SIZE,
                  ngf=16, ndf=16, n_blocks=6)
    trainer = _native.Trainer(json.dumps(config), parts)
    for net, module in (("G", G), ("D", D), ("F", F)):
        if net not in parts:
            trainer.load_state_dict(net, {k: v.detach().clone() for k, v in module.state_dict().items()})
    return trainer


def _current_G(trainer, G_template):
    """The transcription generator holding the trainer's current G weights."""
    G = copy.deepcopy(G_template)
    G.load_state_dict({k: v.detach().clone() for k, v in trainer.state_dict("G").items()})
    return G


def _tie_free_batch_for(G, opt, start):
    for seed in range(start, start + 100):
        real_A, real_B = _batch(seed)
        if _selection_tie_free(G, opt, real_A, real_B):
            return real_A, real_B
    raise RuntimeError("no tie-free batch found")


def _run_both(part_key, make_part):
    opt, G, D, F = _models("global")
    builtin = _ours(opt, G, D, F)
    part = make_part(G, D, F)
    swapped = _swapped(opt, G, D, F, {part_key: part})
    initial = {k: v.detach().clone() for k, v in part.state_dict().items()} if isinstance(part, torch.nn.Module) else None
    for k in range(STEPS):
        real_A, real_B = _tie_free_batch_for(_current_G(builtin, G), opt, start=100 * k)
        ids_x, ids_y = _ids(G, opt, 50 + k), _ids(G, opt, 60 + k)
        want = builtin.step(real_A, real_B, update=True, ids_x=ids_x, ids_y=ids_y)
        got = swapped.step(real_A, real_B, update=True, ids_x=ids_x, ids_y=ids_y)
        for key in LOSS_KEYS:
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (part_key, k, key)
    return builtin, swapped, part, initial


def _assert_updated_like_builtin(builtin, net, module, initial):
    """The module moved from its initial weights, to where the built-in network moved (weights:
    within a fraction of an Adam step; biases of convs before instance norm have noise-only
    gradients and are skipped, as in test_adam_steps_match_torch_adam)."""
    ours = builtin.state_dict(net)
    moved = 0
    for name, p in module.state_dict().items():
        if not name.endswith(".weight"):
            continue
        torch.testing.assert_close(p, ours[name], rtol=1e-4, atol=1e-4, msg=lambda m: f"{net}.{name}: {m}")
        moved += not torch.equal(p, initial[name])
    assert moved == sum(n.endswith(".weight") for n in initial), f"every weight of the {net} module was updated"


def test_python_generator_is_trained_like_the_builtin():
    builtin, _, G_py, initial = _run_both("G", lambda G, D, F: copy.deepcopy(G))
    _assert_updated_like_builtin(builtin, "G", G_py, initial)


def test_python_discriminator_is_trained_like_the_builtin():
    builtin, _, D_py, initial = _run_both("D", lambda G, D, F: copy.deepcopy(D))
    _assert_updated_like_builtin(builtin, "D", D_py, initial)


def test_python_projector_is_trained_like_the_builtin():
    builtin, _, F_py, initial = _run_both("F", lambda G, D, F: copy.deepcopy(F))
    _assert_updated_like_builtin(builtin, "F", F_py, initial)


def test_python_gan_loss_gives_the_builtin_losses():
    calls = []

    def lsgan(prediction, target_is_real):
        calls.append(bool(target_is_real))
        return rc.GANLoss("lsgan")(prediction, target_is_real)

    _run_both("gan_loss", lambda G, D, F: lsgan)
    assert calls == [False, True, True] * STEPS  # D fake, D real, G adversarial


def test_python_nce_loss_gives_the_builtin_losses():
    _run_both("nce_loss", lambda G, D, F: (lambda q, k, n: ref.patch_nce(q, k, 0.07, n)))


def test_a_different_python_loss_changes_the_training():
    """The Python callable really is what the step uses: doubling it doubles the NCE terms."""
    opt, G, D, F = _models("none")
    builtin = _ours(opt, G, D, F)
    doubled = _swapped(opt, G, D, F, {"nce_loss": lambda q, k, n: 2 * ref.patch_nce(q, k, 0.07, n)})
    real_A, real_B = _batch(3)
    ids = _ids(G, opt, 4)
    want = builtin.step(real_A, real_B, update=False, ids_x=ids, ids_y=ids)
    got = doubled.step(real_A, real_B, update=False, ids_x=ids, ids_y=ids)
    assert got["NCE"] == pytest.approx(2 * want["NCE"], rel=1e-5)


def test_an_exception_in_a_python_part_reaches_the_caller_unchanged():
    opt, G, D, F = _models("none")

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise KeyError("my discriminator is broken")

    trainer = _swapped(opt, G, D, F, {"D": Broken()})
    real_A, real_B = _batch(1)
    with pytest.raises(KeyError, match="my discriminator is broken"):
        trainer.step(real_A, real_B)


@pytest.mark.parametrize("gan_mode", ["lsgan", "vanilla", "nonsaturating", "wgangp"])
def test_a_discriminator_with_an_integer_prediction_is_a_clear_error(gan_mode):
    # the built-in GAN loss names what it got (it had panicked inside Rust for lsgan)
    opt, G, D, F = _models("none")

    class Rounding(torch.nn.Module):
        def forward(self, x):
            return D(x).round().long()

    opt.gan_mode = gan_mode
    trainer = _swapped(opt, G, D, F, {"D": Rounding()})
    real_A, real_B = _batch(1)
    with pytest.raises(ValueError, match=r"floating-point prediction .*Int64"):
        trainer.step(real_A, real_B)


def test_a_generator_whose_translation_changes_the_shape_is_a_clear_error():
    # (it reached the cat of D's batch inside Rust and panicked)
    opt, G, D, F = _models("none")

    class Cropping(torch.nn.Module):
        def forward(self, x, layers=None, encode_only=False):
            if layers is None:
                return G(x)[:, :, 2:, 2:]
            out = G(x, layers, encode_only)
            return out if encode_only else (out[0][:, :, 2:, 2:], out[1])

    trainer = _swapped(opt, G, D, F, {"G": Cropping()})
    real_A, real_B = _batch(1)
    with pytest.raises(ValueError, match=r"the generator's translation must have the shape of its input \[4, 3, 32, 32\], got \[4, 3, 30, 30\]"):
        trainer.step(real_A, real_B)


# -- the Python trainer object, callbacks, resume --------------------------------------------


def test_callbacks_see_losses_and_images_and_can_stop(tiny_data, tmp_path):
    seen, epochs = [], []

    def on_step(info):
        seen.append((info.step, dict(info.losses)))
        if info.step == 2:
            assert info.images()["fake_B"].shape == (1, 3, 32, 32)
        return info.step < 6

    trainer = qs_attn.Trainer(tiny_data, "cb", "global", checkpoints_dir=str(tmp_path), n_epochs=2, n_epochs_decay=0,
                              callbacks=[on_step], epoch_callbacks=[lambda info: epochs.append(info.epoch)],
                              progress=False, **TINY)
    result = trainer.fit()
    assert [s for s, _ in seen] == [1, 2, 3, 4, 5, 6]
    assert epochs == [1]  # epoch 1 ended at step 4; training stopped during epoch 2
    assert result.interrupted and result.total_iters == 6 and "StopTraining" in result.stopped_by
    # the losses a callback saw are the logged ones (print_freq = 1)
    assert [row["G"] for row in trainer.losses] == [losses["G"] for _, losses in seen]
    assert qs_attn.checkpoint_state_dicts(result.checkpoint)["G"]  # the checkpoint was written


def test_trainer_object_step_fit_and_samples(tiny_data, tmp_path):
    trainer = qs_attn.Trainer(tiny_data, "nb", "none", checkpoints_dir=str(tmp_path), n_epochs=1, n_epochs_decay=1,
                              progress=False, **TINY)
    losses = trainer.step()
    assert set(losses) >= {"D", "G", "NCE", "G_GAN"} and trainer.total_iters == 1
    result = trainer.fit(2)
    assert result.total_iters == 3 and not result.interrupted
    result = trainer.fit()  # to the end of the schedule: 2 epochs of 4
    assert result.total_iters == 8 and trainer.finished
    with pytest.raises(RuntimeError, match="schedule is complete"):
        trainer.step()
    grid = trainer.samples(n=2)
    assert grid.shape == (3, 2 * 36, 4 * 36) and 0 <= float(grid.min()) and float(grid.max()) <= 1
    assert trainer.samples(n=2, as_pil=True).size == (4 * 36, 2 * 36)


def test_train_with_python_parts_and_resume_needs_them(tiny_data, tmp_path):
    opt = rc.CUTOptions(num_patches=16, qs_mode="global", init_type="normal", init_gain=0.02)
    G = rc.init_weights(rc.ResnetGenerator(ngf=8, n_blocks=2), "normal", 0.02)
    D = rc.init_weights(rc.NLayerDiscriminator(ndf=8), "normal", 0.02)
    F = ref.PatchSampleF(mode="global", nc=16)  # lazy MLPs: created by the trainer's first call
    before = {k: v.clone() for k, v in G.state_dict().items()}
    result = qs_attn.train(tiny_data, "parts", "global", checkpoints_dir=str(tmp_path), max_iters=3, progress=False,
                           generator=G, discriminator=D, projector=F, gan_loss=rc.GANLoss("lsgan"),
                           nce_loss=qs_attn.nn.PatchNCELoss(0.07), **TINY)
    assert result.total_iters == 3
    assert any(not torch.equal(before[k], v) for k, v in G.state_dict().items())
    assert len(list(F.parameters())) > 0
    saved = qs_attn.checkpoint_state_dicts(result.checkpoint)
    for net, module in (("G", G), ("D", D), ("F", F)):
        assert saved[net].keys() == module.state_dict().keys()
        for k, v in module.state_dict().items():
            assert torch.equal(saved[net][k], v), (net, k)
    with pytest.raises(ValueError, match="user-supplied network"):
        qs_attn.resume(result.checkpoint, max_iters=4, progress=False)
    G2, D2, F2 = copy.deepcopy(G), copy.deepcopy(D), copy.deepcopy(F)
    resumed = qs_attn.resume(result.checkpoint, max_iters=4, progress=False, generator=G2, discriminator=D2, projector=F2)
    assert resumed.total_iters == 4


# -- the built-in networks as torch.nn.Modules ------------------------------------------------

def test_builtin_generator_is_a_module_sharing_its_rust_tensors():
    torch.manual_seed(0)
    ours = qs_attn.Generator(ngf=8, n_blocks=2)
    theirs = rc.ResnetGenerator(ngf=8, n_blocks=2)
    assert list(ours.state_dict().keys()) == list(theirs.state_dict().keys())
    theirs.load_state_dict(ours.state_dict())
    assert all(isinstance(p, torch.nn.Parameter) for p in ours.parameters())
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)
    for a, b in zip(ours(x, [0, 4, 8], encode_only=True), theirs(x, [0, 4, 8], encode_only=True)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # a plain PyTorch optimiser trains it: same gradients, same update as the transcription
    opt_ours, opt_theirs = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (ours, theirs))
    for m, o in ((ours, opt_ours), (theirs, opt_theirs)):
        o.zero_grad()
        m(x).square().mean().backward()
        o.step()
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)
    # dtype / device moves reach the Rust tensors (buffers included)
    ours.double()
    theirs.double()
    assert ours(x.double()).dtype == torch.float64
    torch.testing.assert_close(ours(x.double()), theirs(x.double()), rtol=1e-9, atol=1e-10)
    assert ours.eval() is ours and not ours.training


def test_builtin_discriminator_is_a_module():
    torch.manual_seed(1)
    ours = qs_attn.Discriminator(ndf=8)
    theirs = rc.NLayerDiscriminator(ndf=8)
    theirs.load_state_dict(ours.state_dict())
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)
    ours(x).sum().backward()
    theirs(x).sum().backward()
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_gradient_penalty_through_the_discriminator_matches_the_transcription():
    # a WGAN-GP penalty differentiates D's input gradient again: through our discriminator that
    # is the double backward of its Rust padding nodes, against the transcription's aten pads
    torch.manual_seed(2)
    ours = qs_attn.Discriminator(ndf=8).double()
    theirs = rc.NLayerDiscriminator(ndf=8).double()
    theirs.load_state_dict(ours.state_dict())
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64) * 2 - 1

    def penalty(D):
        x_hat = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(D(x_hat).sum(), x_hat, create_graph=True)
        return ((g.flatten(1).norm(dim=1) - 1) ** 2).mean()

    p_ours, p_theirs = penalty(ours), penalty(theirs)
    torch.testing.assert_close(p_ours, p_theirs, rtol=1e-9, atol=1e-12)
    p_ours.backward()
    p_theirs.backward()
    reached = 0
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        if b.grad is None:  # the last bias: the input gradient does not depend on it
            assert a.grad is None or float(a.grad.abs().max()) == 0, name
            continue
        reached += 1
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-7, atol=1e-10, msg=lambda m: f"{name}: {m}")
    assert reached >= len(list(theirs.parameters())) - 1


def test_trainer_networks_are_views_of_the_trainer(tmp_path):
    trainer = qs_attn.Trainer(name="views", checkpoints_dir=str(tmp_path), progress=False, mode="global", **TINY)
    G, D, F = trainer.G, trainer.D, trainer.F
    # writing through the module writes the trainer's weights
    zero = {k: torch.zeros_like(v) for k, v in G.state_dict().items()}
    G.load_state_dict(zero)
    assert all(float(v.detach().abs().max()) == 0 for v in trainer._native.state_dict("G").values())
    assert D.state_dict().keys() == trainer._native.state_dict("D").keys()
    # F is a PatchSampleF on the trainer's own MLP tensors: the transcription with the same
    # weights gives the same projections
    channels = [F.state_dict()[f"mlp_{s}.0.weight"].shape[1] for s in range(5)]
    feats = [torch.randn(1, c, 8, 8) for c in channels]
    theirs = ref.PatchSampleF(mode="global", nc=16)
    theirs.create_mlp(feats)
    theirs.load_state_dict(F.state_dict())
    ids = [torch.randperm(64)[:16] for _ in range(3)] + [None, None]
    got, _, _ = F(feats, 16, ids)
    want, _, _ = theirs(feats, 16, ids)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
