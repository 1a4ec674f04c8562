"""The data-efficient training options against plain-PyTorch transcriptions written here:
DiffAugment of D's inputs (`diff_augment`: values, gradients, the same parameters for the real
and the translated half of one D evaluation, seeded draws) and the moving average of G's weights
(`ema_decay`: the update formula, exact exchange, checkpoints that keep it and resume exactly).
Both are off by default."""

import json

import pytest
import torch

import qs_attn
from qs_attn import _native

# the trainer's augmentation stream is seeded with seed ^ this (src/train/data_efficient.rs)
AUGMENT_SEED = 0x5EED0004
POLICY = "color,translation,cutout"
TINY = dict(crop_size=32, load_size=32, ngf=8, ndf=8, num_patches=16, n_blocks=2, n_epochs=1, n_epochs_decay=1,
            print_freq=1, display_freq=1000, save_latest_freq=1000, save_epoch_freq=1000, num_samples=2)


# --- the transcription (DiffAugment's three transforms, written out per image) -----------------

def t_color(x, b, s, c):
    x = x + (b - 0.5)
    m = x.mean(dim=0, keepdim=True)  # over channels, per pixel
    x = (x - m) * (2 * s) + m
    m = x.mean()
    return (x - m) * (c + 0.5) + m


def t_translation(x, ty, tx):
    _, h, w = x.shape
    out = torch.zeros_like(x)
    for i in range(h):
        for j in range(w):
            si, sj = i - ty, j - tx
            if 0 <= si < h and 0 <= sj < w:
                out[:, i, j] = x[:, si, sj]
    return out


def t_cutout(x, cy, cx):
    _, h, w = x.shape
    ky, kx = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
    mask = torch.ones(h, w, dtype=x.dtype)
    for i in range(h):
        for j in range(w):
            if cy - ky // 2 <= i < cy - ky // 2 + ky and cx - kx // 2 <= j < cx - kx // 2 + kx:
                mask[i, j] = 0
    return x * mask


def transcription(x, p, policy=POLICY):
    out = []
    for n in range(x.shape[0]):
        y = x[n]
        if "color" in policy:
            y = t_color(y, p["brightness"][n], p["saturation"][n], p["contrast"][n])
        if "translation" in policy:
            y = t_translation(y, *p["shift"][n])
        if "cutout" in policy:
            y = t_cutout(y, *p["cutout_centre"][n])
        out.append(y)
    return torch.stack(out)


def _images(n=3, size=16, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g, dtype=dtype) * 2 - 1)


# --- DiffAugment --------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["color", "translation", "cutout", POLICY])
def test_diff_augment_equals_transcription(policy):
    x = _images(4, 16)
    p = _native.draw_augment_params(7, 4, 16, 16)
    ours = _native.diff_augment(x, policy, **p)
    torch.testing.assert_close(ours, transcription(x, p, policy), atol=1e-12, rtol=1e-12)
    assert not torch.equal(ours, x)


def test_diff_augment_parameter_ranges():
    """Shifts within ±⌊H/8 + ½⌋ = ±2 at 16², every shift and centre value reached, factors in [0, 1)."""
    p = _native.draw_augment_params(3, 2000, 16, 16)
    assert {s[0] for s in p["shift"]} == set(range(-2, 3)) == {s[1] for s in p["shift"]}
    assert {c[0] for c in p["cutout_centre"]} == set(range(16 + 1 - 8 % 2))
    for k in ("brightness", "saturation", "contrast"):
        assert 0 <= min(p[k]) and max(p[k]) < 1


def test_diff_augment_gradcheck():
    x = _images(2, 8).requires_grad_(True)
    p = _native.draw_augment_params(11, 2, 8, 8)
    assert torch.autograd.gradcheck(lambda t: _native.diff_augment(t, POLICY, **p), (x,))
    # the gradient is the transcription's
    g = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    (ours,) = torch.autograd.grad(_native.diff_augment(x, POLICY, **p), x, g)
    (theirs,) = torch.autograd.grad(transcription(x, p), x, g)
    torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=1e-12)


def test_diff_augment_bad_input():
    p = _native.draw_augment_params(0, 2, 8, 8)
    with pytest.raises(ValueError, match="color, translation, cutout"):
        _native.diff_augment(_images(2, 8), "colour", **p)
    with pytest.raises(ValueError, match="parameters for 2 images"):
        _native.diff_augment(_images(3, 8), POLICY, **p)
    with pytest.raises(ValueError, match="diff_augment"):
        qs_attn.Trainer(name="bad", dataroot="", diff_augment="zoom", **TINY)


def test_diff_augment_is_read_once_as_a_policy():
    # the option's error lists the transforms the Python layer is told about, and the config
    # keeps the policy as its text (canonical order)
    names = _native.OPTION_CHOICES["diff_augment"]
    assert names == ["color", "translation", "cutout"]
    with pytest.raises(ValueError) as e:
        qs_attn.Trainer(name="bad", dataroot="", diff_augment="translation,zoom", **TINY)
    message = str(e.value)
    assert "diff_augment" in message and "'zoom'" in message and all(name in message for name in names)
    trainer = qs_attn.Trainer(name="ok", dataroot="", diff_augment=" cutout, color ", **TINY)
    assert trainer.config["diff_augment"] == "color,cutout"
    assert qs_attn.Trainer(name="off", dataroot="", **TINY).config["diff_augment"] == ""


class RecordingD(torch.nn.Module):
    """A PatchGAN-like D that keeps a copy of every batch it is called on."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 4, 2, 1)
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.conv(x)


def _batch(b=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(b, 3, 32, 32, generator=g) * 2 - 1 for _ in range(2))


def test_trainer_augments_real_and_fake_alike():
    """In one step D sees [aug(G(x)); aug(y)] with one draw of parameters shared by both halves,
    then aug(G(x)) with the next draw, all from the seeded stream."""
    seed = 5
    d = RecordingD()
    trainer = qs_attn.Trainer(name="aug", dataroot="", seed=seed, diff_augment=POLICY, discriminator=d, **TINY)
    a, b = _batch()
    trainer._native.step(a, b)
    fake = trainer.visuals()["fake_B"]
    draws = _native.draw_augment_params(seed ^ AUGMENT_SEED, 4, 32, 32)  # two draws of 2 images
    first = {k: v[:2] for k, v in draws.items()}
    second = {k: v[2:] for k, v in draws.items()}
    d_step, g_step = d.inputs
    torch.testing.assert_close(d_step[2:], transcription(b, first), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(d_step[:2], transcription(fake, first), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_step, transcription(fake, second), atol=1e-5, rtol=1e-5)


def test_augmentation_is_off_by_default():
    d = RecordingD()
    trainer = qs_attn.Trainer(name="plain", dataroot="", discriminator=d, **TINY)
    a, b = _batch()
    trainer._native.step(a, b)
    assert torch.equal(d.inputs[0][2:], b)
    assert torch.equal(d.inputs[1], trainer.visuals()["fake_B"])


def test_augmented_training_is_seeded():
    """Same seed: the same losses; another seed for the same initial weights is another stream."""
    def losses(seed):
        trainer = qs_attn.Trainer(name="s", dataroot="", seed=seed, diff_augment=POLICY, **TINY)
        a, b = _batch()
        return [trainer._native.step(a, b)["D"] for _ in range(3)]
    assert losses(3) == losses(3)
    assert losses(3) != losses(4)


# --- EMA of G --------------------------------------------------------------------------------

def _g_params(trainer):
    return {k: v.detach().clone() for k, v in trainer.G.named_parameters()}


def test_ema_update_formula_and_exact_exchange():
    decay = 0.9
    trainer = qs_attn.Trainer(name="ema", dataroot="", ema_decay=decay, **TINY)
    avg = _g_params(trainer)  # the average starts at the initial weights
    a, b = _batch()
    for t in range(15):  # past the warm-up: β_t = min(0.9, (1 + t)/(10 + t)) reaches 0.9 at t = 80 only
        trainer._native.step(a, b)
        beta = min(decay, (1 + t) / (10 + t))
        avg = {k: beta * avg[k] + (1 - beta) * p for k, p in _g_params(trainer).items()}
    trained = _g_params(trainer)
    with trainer.averaged_weights():
        inside = _g_params(trainer)
    for k in avg:
        torch.testing.assert_close(inside[k], avg[k], atol=1e-6, rtol=1e-5)
        assert torch.equal(_g_params(trainer)[k], trained[k]), k  # restored bit for bit
    assert any(not torch.equal(inside[k], trained[k]) for k in avg)


def test_ema_off_by_default_and_in_checkpoints(tmp_path):
    plain = qs_attn.train(name="plain", dataroot=None, checkpoints_dir=str(tmp_path), max_iters=2, progress=False, **TINY)
    assert "G_ema" not in qs_attn.checkpoint_state_dicts(plain.checkpoint)
    run = qs_attn.train(name="ema", checkpoints_dir=str(tmp_path), max_iters=3, progress=False, ema_decay=0.5,
                        diff_augment=POLICY, **TINY)
    states = qs_attn.checkpoint_state_dicts(run.checkpoint)
    assert states["G_ema"].keys() <= states["G"].keys() and states["G_ema"]
    # load_generator and export_pth give the average, not the trained weights
    G = qs_attn.load_generator(run.checkpoint)
    for k, v in states["G_ema"].items():
        assert torch.equal(G.state_dict()[k], v), k
    assert any(not torch.equal(states["G"][k], v) for k, v in states["G_ema"].items())
    exported = torch.load(qs_attn.export_pth(run.checkpoint, tmp_path / "pth")[0], weights_only=True)
    for k, v in states["G_ema"].items():
        assert torch.equal(exported[k], v), k


def test_resume_continues_exactly_with_both_options(tmp_path):
    """4 iterations in one go == 2, resume, 2 more: weights, the average, the streams."""
    opts = dict(TINY, ema_decay=0.8, diff_augment=POLICY)
    full = qs_attn.train(name="full", checkpoints_dir=str(tmp_path), max_iters=4, progress=False, **opts)
    half = qs_attn.train(name="half", checkpoints_dir=str(tmp_path), max_iters=2, progress=False, **opts)
    resumed = qs_attn.resume(half.checkpoint, max_iters=4, progress=False)
    a, meta_a = _native.read_checkpoint(str(full.checkpoint))
    b, meta_b = _native.read_checkpoint(str(resumed.checkpoint))
    assert a.keys() == b.keys() and any(k.startswith("G_ema.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for k in ("ema_updates", "augment_state", "total_iters"):
        assert meta_a[k] == meta_b[k], k
    assert meta_a["ema_updates"] == "4"
