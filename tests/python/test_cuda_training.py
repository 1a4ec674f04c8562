"""The trainer on CUDA: one step against the plain-PyTorch transcription on the same GPU, and a
whole tiny run (data loading, checkpoints, resume, sample grids, translation). Runs where a
GPU is present (the lent GPU machine); CI has none, so it is skipped there."""

import pytest
import torch

import qs_attn
from qs_attn import _native
from test_fast_path import _setup, _trainer, assert_step_equals_the_transcription
from tiny_run import TINY

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
              pytest.mark.usefixtures("exact_float32")]


@pytest.mark.parametrize("mode", ["global", "local_global", "none"])
def test_cuda_step_equals_the_transcription(mode):
    opt, G, D, F, real_A, real_B, ids_x, ids_y = _setup("cuda", 90, mode)
    assert_step_equals_the_transcription(_trainer(opt, G, D, F, "cuda"), opt, G, D, F, real_A, real_B, ids_x, ids_y)


def test_cuda_run_checkpoints_resumes_and_translates(tiny_data, tmp_path):
    options = dict(TINY, dataroot=str(tiny_data), checkpoints_dir=str(tmp_path), device="cuda", progress=False,
                   n_epochs=1, n_epochs_decay=1, display_freq=3)
    full = qs_attn.train(name="full", max_iters=6, **options)
    half = qs_attn.train(name="half", max_iters=3, **options)
    resumed = qs_attn.resume(half.checkpoint, max_iters=6, progress=False)
    assert full.total_iters == resumed.total_iters == 6 and full.samples
    a, meta_a = _native.read_checkpoint(str(full.checkpoint))
    b, meta_b = _native.read_checkpoint(str(resumed.checkpoint))
    for k in ("epoch", "epoch_iter", "total_iters", "sampler_state", "coins_state", "opt_G.step"):
        assert meta_a[k] == meta_b[k], k
    # CUDA kernels (atomics, cuDNN's algorithm choice) are not bit-reproducible: the resumed
    # run stays within the 6 Adam steps of lr = 2e-4 it took. Elements whose gradient is only
    # rounding noise (biases followed by instance norm) step ±lr at random; the weights agree
    # on average too. Adam's moments are in gradient units, not bounded by lr, and for the
    # noise-gradient biases pure noise (two identical runs on an H200 differ by 200% there): the
    # weights' moments agree on average to 2% of their size, where moments lost at the resume
    # would differ by all of it.
    for k in a:
        assert a[k].device.type == "cpu"
        diff = (a[k].double() - b[k].double()).abs()
        if k.startswith("opt_"):
            if a[k].dim() >= 2:
                size = float(a[k].double().abs().mean())
                assert float(diff.mean()) <= 2e-2 * size, f"{k}: mean |diff| {float(diff.mean()):.2e} of {size:.2e}"
            continue
        assert float(diff.max()) <= 6 * 2 * 2e-4 + 1e-5, f"{k}: max |diff| {float(diff.max()):.2e}"
        if a[k].dim() >= 2:
            assert float(diff.mean()) <= 2e-4, f"{k}: mean |diff| {float(diff.mean()):.2e}"
    gen_cuda = qs_attn.load_generator(full.checkpoint, device="cuda")
    gen_cpu = qs_attn.load_generator(full.checkpoint)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        y = gen_cuda(x.cuda())
        assert y.is_cuda and y.shape == x.shape
        torch.testing.assert_close(y.cpu(), gen_cpu(x), rtol=1e-4, atol=1e-4)
