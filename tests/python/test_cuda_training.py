"""The trainer on CUDA: one step against the plain-PyTorch transcription on the same GPU, and a
whole tiny run (data loading, checkpoints, resume, sample grids, translation). Runs where a
GPU is present (the lent GPU machine); CI has none, so it is skipped there."""

import pytest
import torch

import qs_attn
from qs_attn import _native
from test_fast_path import _setup, _trainer, assert_step_equals_the_transcription
from tiny_run import TINY

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def exact_float32():
    """TF32 convolutions (cuDNN's default) round their inputs to 10 bits: both sides would
    agree only to ~1e-3. The flag is global to the process, ours included."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


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
    # run stays within a few Adam steps (lr = 2e-4 each) of the uninterrupted one.
    for k in a:
        assert a[k].device.type == "cpu"
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=2e-3, msg=lambda m: f"{k}: {m}")
    gen_cuda = qs_attn.load_generator(full.checkpoint, device="cuda")
    gen_cpu = qs_attn.load_generator(full.checkpoint)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        y = gen_cuda(x.cuda())
        assert y.is_cuda and y.shape == x.shape
        torch.testing.assert_close(y.cpu(), gen_cpu(x), rtol=1e-4, atol=1e-4)
