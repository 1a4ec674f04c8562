"""The trainer's opt-in fast path (options ``channels_last`` and ``precision="bf16"``) against
the plain-PyTorch transcription (reference_cut.py): channels-last is a change of memory layout
only, so one step and the Adam updates equal the float32 transcription; bf16 autocast changes
the arithmetic of G, D and F, so its losses stay within bfloat16 rounding of the float32
transcription without being equal to them. CPU always; CUDA when a GPU is present."""

import copy
import json

import pytest
import torch

import reference_cut as rc
from qs_attn import _native
from test_trainer_step import N, N_BLOCKS, NDF, NGF, SIZE, _assert_grad_close, _grad_scale, _ids, _models, _tie_free_batch

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]
pytestmark = pytest.mark.usefixtures("exact_float32")
LOSS_KEYS = ("D", "D_fake", "D_real", "G_GAN", "NCE", "NCE_Y", "G")
# cuDNN's channels-last kernels on CUDA agree with the NCHW float32 transcription less closely
# than float32 rounding, even with TF32 off: on an H200 the first convolution's weight
# gradient (3 input channels) was off by 6.6e-4 of G's gradient scale. The CUDA bound below
# leaves ~3x room over what was seen; the CPU bound is float32's.
CHANNELS_LAST_GRAD_TOL = {"cpu": 1e-4, "cuda": 2e-3}


def _trainer(opt, G, D, F, device, **fast):
    config = dict(dataroot="", name="fast-path-test", mode=opt.qs_mode, local_layout=opt.local_layout,
                  num_patches=N, crop_size=SIZE, load_size=SIZE, ngf=NGF, ndf=NDF, n_blocks=N_BLOCKS,
                  device=device, **fast)
    trainer = _native.Trainer(json.dumps(config))
    for net, module in (("G", G), ("D", D), ("F", F)):
        trainer.load_state_dict(net, {k: v.detach().clone() for k, v in module.state_dict().items()})
    return trainer


def _setup(device, seed_ids, mode="global"):
    opt, G, D, F = _models(mode)
    real_A, real_B = _tie_free_batch(G, opt)
    ids_x, ids_y = _ids(G, opt, seed_ids), _ids(G, opt, seed_ids + 1)
    move = lambda ids: [t if t is None else t.to(device) for t in ids]  # noqa: E731
    G, D, F = G.to(device), D.to(device), F.to(device)
    return opt, G, D, F, real_A.to(device), real_B.to(device), move(ids_x), move(ids_y)


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_step_equals_the_transcription(device):
    opt, G, D, F, real_A, real_B, ids_x, ids_y = _setup(device, 50)
    trainer = _trainer(opt, G, D, F, device, channels_last=True)
    weights = trainer.state_dict("G")
    conv = next(w for k, w in weights.items() if w.dim() == 4 and w.shape[1] > 1 and w.shape[-1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert_step_equals_the_transcription(trainer, opt, G, D, F, real_A, real_B, ids_x, ids_y,
                                         grad_tol=CHANNELS_LAST_GRAD_TOL[device])


def assert_step_equals_the_transcription(trainer, opt, G, D, F, real_A, real_B, ids_x, ids_y, grad_tol=1e-4):
    """One step of ``trainer`` (without update) gives the transcription's loss terms (rel 1e-4)
    and gradients (``grad_tol`` of each network's gradient scale), on the transcription's
    device."""
    expected = rc.one_step(G, D, F, real_A, real_B, opt, ids_x, ids_y)
    got = trainer.step(real_A, real_B, update=False, ids_x=ids_x, ids_y=ids_y)
    for key in LOSS_KEYS:
        assert got[key] == pytest.approx(float(expected[key]), rel=1e-4, abs=1e-6), key
    for net, module in (("G", G), ("D", D), ("F", F)):
        ours, scale = trainer.gradients(net), _grad_scale(module)
        for name, p in module.named_parameters():
            assert ours[name].device == p.device, (net, name)
            _assert_grad_close(ours[name], p.grad, scale, f"{net}.{name}", tol=grad_tol)


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_adam_steps_equal_torch_adam(device):
    """The fused Adam step on channels-last weights (their gradients may arrive in another
    layout) moves every parameter as torch.optim.Adam moves it given the same gradients, over
    two steps (the second reads the moments of the first). The step's gradients themselves
    are the transcription's (test_channels_last_step_equals_the_transcription); comparing
    whole trajectories instead would compare rounding noise: an element whose gradient is
    rounding-sized (one of D's last-conv weights here, 2e-8 of the gradient scale) may take a
    ±lr Adam step of either sign, and that changes G's next gradients by ~1e-3 of their scale."""
    opt, G, D, F, real_A, real_B, ids_x, ids_y = _setup(device, 60)
    trainer = _trainer(opt, G, D, F, device, channels_last=True)
    nets = ("G", "D", "F")
    # torch's Adam on NCHW copies of our weights, fed our gradients
    shadows = {net: {k: v.detach().clone().contiguous() for k, v in trainer.state_dict(net).items()} for net in nets}
    names = {net: trainer.parameter_names(net) for net in nets}
    adams = {net: torch.optim.Adam([shadows[net][k] for k in names[net]], lr=opt.lr, betas=(opt.beta1, opt.beta2))
             for net in nets}
    for step in range(2):
        trainer.step(real_A, real_B, update=True, ids_x=ids_x, ids_y=ids_y)
        for net in nets:
            grads = trainer.gradients(net)
            for k in names[net]:
                shadows[net][k].grad = grads[k].detach().clone().contiguous()
            adams[net].step()
            ours = trainer.state_dict(net)
            for k in names[net]:
                expected = shadows[net][k].detach()
                assert ours[k].is_contiguous(memory_format=torch.channels_last) or ours[k].dim() != 4, (net, k)
                # a wrong rule moves elements by about lr = 2e-4; the two implementations of the
                # same rule differ by float32 rounding of the weights (~1e-7 of them)
                diff = float((ours[k].detach() - expected).abs().max())
                assert diff <= 1e-6, f"step {step + 1}: {net}.{k}: max |diff| {diff:.2e}"


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_losses_within_bfloat16_rounding(device):
    opt, G, D, F, real_A, real_B, ids_x, ids_y = _setup(device, 70)
    expected = rc.one_step(G, D, F, real_A, real_B, opt, ids_x, ids_y)
    fast = _trainer(opt, G, D, F, device, precision="bf16", channels_last=True).step(
        real_A, real_B, update=False, ids_x=ids_x, ids_y=ids_y)
    plain = _trainer(opt, G, D, F, device).step(real_A, real_B, update=False, ids_x=ids_x, ids_y=ids_y)
    differs = 0
    for key in LOSS_KEYS:
        # bfloat16 keeps 8 significant bits (relative rounding 2^-9 per operation). D_fake and
        # G_GAN square D's output on G's output, compounding both networks' rounding: +3.6% on
        # an H200 (cuDNN's channels-last kernels), +1.7% without channels-last, <1% on the CPU.
        # A wrong cast or layout moves a loss by its whole size.
        assert fast[key] == pytest.approx(float(expected[key]), rel=5e-2, abs=1e-3), key
        assert plain[key] == pytest.approx(float(expected[key]), rel=1e-4, abs=1e-6), key
        differs += fast[key] != plain[key]
    # the convolutions really ran in bfloat16: the losses are not the float32 ones
    assert differs >= 4, (fast, plain)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_generator_step_sees_the_updated_discriminator(device):
    # The step keeps autocast's weight casts across its two bf16 scopes (G's weights are cast
    # once); D's Adam step runs between them, so a cast of D's weights kept from the first
    # scope would be stale: G's adversarial loss must be the updated D's verdict.
    opt, G, D, F, real_A, real_B, ids_x, ids_y = _setup(device, 90)
    trainer = _trainer(opt, G, D, F, device, precision="bf16", channels_last=True)
    before = {k: v.clone() for k, v in trainer.state_dict("D").items()}
    losses = trainer.step(real_A, real_B, update=True, ids_x=ids_x, ids_y=ids_y)
    fake = trainer.visuals()["fake_B"]

    def g_gan(state):  # the transcription's D, in float32, on the step's translation
        d = copy.deepcopy(D)
        d.load_state_dict(state)
        with torch.no_grad():
            return float(((d(fake) - 1) ** 2).mean()) * opt.lambda_GAN

    updated, stale = g_gan(trainer.state_dict("D")), g_gan(before)
    assert abs(updated - stale) > 0.1 * updated, (updated, stale)  # the update moved the verdict
    assert losses["G_GAN"] == pytest.approx(updated, rel=3e-2), (losses["G_GAN"], updated, stale)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_training_keeps_float32_weights_and_images(device):
    opt, G, D, F, real_A, real_B, ids_x, ids_y = _setup(device, 80)
    trainer = _trainer(opt, G, D, F, device, precision="bf16", channels_last=True)
    before = {k: v.clone() for k, v in trainer.state_dict("G").items()}
    for _ in range(2):
        losses = trainer.step(real_A, real_B, update=True, ids_x=ids_x, ids_y=ids_y)
        assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
    after = trainer.state_dict("G")
    assert all(v.dtype == torch.float32 for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in trainer.visuals().values() if v is not None)


def test_unknown_precision_is_a_clear_error():
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'bf16', got 'fp16'"):
        _native.Trainer(json.dumps(dict(dataroot="", precision="fp16")))
