"""The training step as a CUDA graph (option ``cuda_graph``): the options it cannot work with
are refused up front (any machine), and on a GPU a graphed trainer follows an eager one
iteration by iteration — the same losses, weights and optimiser step counts — through warm-up,
capture, replays and an eager batch of another shape."""
import json

import pytest
import torch

import qs_attn
from qs_attn import _native
from tiny_run import TINY

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
LR = 2e-4


def _config(**options) -> str:
    return json.dumps(dict(dataroot="", seed=3, **dict(TINY, **options)))


@pytest.mark.parametrize("options, problem", [
    (dict(device="cpu"), "needs a CUDA device"),
    (dict(device="cuda", flip_equivariance=True), "flip_equivariance"),
    (dict(device="cuda", gan_mode="wgangp", lambda_gp=10.0), "WGAN-GP"),
])
def test_options_a_graph_cannot_capture_are_refused(options, problem):
    with pytest.raises(ValueError, match=problem):
        _native.Trainer(_config(cuda_graph=True, **options))


@needs_cuda
def test_supplied_parts_are_refused_with_a_graph():
    class Loss(torch.nn.Module):
        def forward(self, prediction, target_is_real):
            return ((prediction - float(target_is_real)) ** 2).mean()

    with pytest.raises(ValueError, match="built-in parts only"):
        _native.Trainer(_config(device="cuda", cuda_graph=True), {"gan_loss": Loss()})


@needs_cuda
@pytest.mark.parametrize("fast", [False, True], ids=["fp32", "bf16_channels_last"])
def test_graph_steps_follow_eager_steps(fast, tmp_path):
    options = dict(device="cuda", cudnn_benchmark=False, mode="global", lr=LR)
    if fast:
        options.update(precision="bf16", channels_last=True)
    eager = _native.Trainer(_config(**options))
    graphed = _native.Trainer(_config(cuda_graph=True, **options))
    g = torch.Generator().manual_seed(0)
    # 3 eager warm-up steps, the capture (+ its first replay), replays, a smaller batch (run
    # eagerly, not captured), and replays again
    sizes = [2, 2, 2, 2, 2, 2, 1, 2, 2]
    batches = [(torch.rand(n, 3, 32, 32, generator=g) * 2 - 1, torch.rand(n, 3, 32, 32, generator=g) * 2 - 1)
               for n in sizes]
    w0 = {k: v.detach().clone() for k, v in eager.state_dict("G").items()}
    for i, (a, b) in enumerate(batches):
        want = eager.step(a.cuda(), b.cuda())
        got = graphed.step(a.cuda(), b.cuda())
        assert got.keys() == want.keys()
        for name in want:
            # the same weights up to rounding noise, so the same losses
            assert got[name] == pytest.approx(want[name], rel=2e-3, abs=1e-4), f"step {i}: {name}"
    we, wg = eager.state_dict("G"), graphed.state_dict("G")
    for k in we:
        diff = (we[k].double() - wg[k].double()).abs()
        assert float(diff.max()) <= len(sizes) * 2 * LR + 1e-5, f"{k}: max |diff| {float(diff.max()):.2e}"
        if we[k].dim() >= 2:
            moved = float((we[k].double() - w0[k].double()).abs().mean())
            # a replay that did not update would leave the graphed weights about one step per
            # missed iteration behind
            assert float(diff.mean()) <= 0.2 * moved + 1e-6, f"{k}: mean |diff| {float(diff.mean()):.2e}, moved {moved:.2e}"
    # the optimisers counted every iteration once (the captured one too)
    for trainer, name in ((eager, "eager"), (graphed, "graphed")):
        trainer.save(tmp_path / f"{name}.safetensors")
    meta = {n: _native.read_checkpoint_metadata(tmp_path / f"{n}.safetensors") for n in ("eager", "graphed")}
    for key in ("opt_G.step", "opt_D.step", "opt_F.step"):
        assert meta["graphed"][key] == meta["eager"][key] == str(len(sizes)), key
    assert meta["graphed"]["sampler_state"] == meta["eager"]["sampler_state"], "the same patch-id draws"
    visuals = graphed.visuals()
    fake = visuals["fake_B"]
    assert fake.dtype == torch.float32 and fake.is_contiguous() and fake.shape == (2, 3, 32, 32)
    graphed.step(*(t.cuda() for t in batches[0]))
    assert not torch.equal(fake, graphed.visuals()["fake_B"]), "visuals read earlier are copies, not the graph's output"


@needs_cuda
def test_a_graphed_run_trains_like_an_eager_one_checkpoints_and_resumes(tiny_data, tmp_path):
    # epochs of 4 iterations: the capture at iteration 4, then replays through the learning-rate
    # decay of epoch 2 (the optimisers' device copy of the rate)
    options = dict(TINY, dataroot=str(tiny_data), checkpoints_dir=str(tmp_path), device="cuda", progress=False,
                   n_epochs=1, n_epochs_decay=2, display_freq=4, cudnn_benchmark=False, lr=LR)
    graphed = qs_attn.train(name="graphed", max_iters=8, cuda_graph=True, **options)
    eager = qs_attn.train(name="eager", max_iters=8, **options)
    assert graphed.total_iters == 8 and graphed.samples
    meta = _native.read_checkpoint_metadata(graphed.checkpoint)
    assert meta["opt_G.step"] == "8" and json.loads(meta["config"])["cuda_graph"] is True
    wg, _ = _native.read_checkpoint(graphed.checkpoint)
    we, _ = _native.read_checkpoint(eager.checkpoint)
    for k in we:
        diff = (we[k].double() - wg[k].double()).abs()
        assert float(diff.max()) <= 8 * 2 * LR + 1e-5, f"{k}: max |diff| {float(diff.max()):.2e}"
    for name, value in eager.final_losses.items():
        assert graphed.final_losses[name] == pytest.approx(value, rel=1e-2, abs=1e-3), name
    resumed = qs_attn.resume(graphed.checkpoint, max_iters=12, progress=False)
    assert resumed.total_iters == 12
    assert _native.read_checkpoint_metadata(resumed.checkpoint)["opt_G.step"] == "12"
