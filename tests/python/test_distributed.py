"""Data-parallel training on torch.distributed (gloo, two CPU processes on 127.0.0.1)."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import qs_attn
from dist_worker import TINY
from tiny_run import copy_tiny_dataset, network_snapshot

STEPS = 3
WORKER = Path(__file__).with_name("dist_worker.py")
EXIT_WORKER = Path(__file__).with_name("exit_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(data, out_dir, steps, *extra, resume=None):
    """Starts two ranks of dist_worker.py as torchrun would (same environment variables)."""
    return _launch_script(WORKER, [str(data), str(out_dir), str(steps), *extra], QS_TEST_RESUME=str(resume or ""))


def _launch_script(script, args, **env_extra):
    """Starts two ranks of ``script`` with the torchrun environment variables."""
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, **env_extra, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([str(WORKER.parent), os.environ.get("PYTHONPATH", "")]))
        procs.append(subprocess.Popen([sys.executable, str(script), *args],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    """Two ranks, batch 1 each, STEPS iterations on four images per domain."""
    root = tmp_path_factory.mktemp("dist")
    data = copy_tiny_dataset(root)
    out = root / "out"
    out.mkdir()
    procs = _launch(data, out, STEPS)
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    return data, out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_parameters_are_identical_on_both_ranks_after_every_step(two_rank_run):
    _, _, (r0, r1) = two_rank_run
    assert [r["step"] for r in r0["records"]] == list(range(1, STEPS + 1))
    for a, b in zip(r0["records"], r1["records"]):
        for net in "GDF":
            for name, t in a["nets"][net].items():
                assert torch.equal(t, b["nets"][net][name]), (a["step"], net, name)
        # and the ranks trained on different images: their own losses differ
        assert a["losses"]["D"] != b["losses"]["D"]


def test_two_ranks_with_batch_one_equal_one_process_with_batch_two(two_rank_run, tmp_path):
    data, _, (r0, r1) = two_rank_run
    single = []

    def record(info):
        single.append({"losses": dict(info.losses), "nets": network_snapshot(info.trainer)})

    torch.manual_seed(0)
    qs_attn.train(data, "single", "global", checkpoints_dir=str(tmp_path), max_iters=STEPS, batch_size=2,
                  progress=False, callback=record, distributed=False, **TINY)
    for k, (a, b, s) in enumerate(zip(r0["records"], r1["records"], single)):
        # per-image losses: the batch of two averages the two ranks' losses; exact up to rounding
        # at the first step, and within what the drift below leaves at the later ones
        for key in ("D", "G_GAN", "NCE", "NCE_Y", "G"):
            assert s["losses"][key] == pytest.approx((a["losses"][key] + b["losses"][key]) / 2, rel=1e-5 if k == 0 else 1e-3), (k, key)
        for net in "GDF":
            for name, t in a["nets"][net].items():
                if name.endswith(".bias") and net in "GD":
                    continue  # conv biases before instance norm: noise-only gradients (see test_trainer_step)
                diff = (t - s["nets"][net][name]).abs()
                # Adam moves an element whose gradient is rounding noise by up to lr per step in
                # either direction, so a rare element may drift by 2 lr per step between two
                # summation orders; a real difference shows in the mean and in many elements
                assert float(diff.mean()) < 1e-6, (k, net, name)
                assert float(diff.max()) <= 2 * 2e-4 * (k + 1), (k, net, name)
                assert int((diff > 1e-4 + 1e-4 * t.abs()).sum()) <= max(1, t.numel() // 1000), (k, net, name)


def test_a_distributed_checkpoint_resumes_in_one_process(two_rank_run, tmp_path):
    _, out, (r0, r1) = two_rank_run
    assert r1["checkpoint"] is None  # only rank 0 writes
    ckpt = Path(r0["checkpoint"])
    saved = qs_attn.checkpoint_state_dicts(ckpt)
    for name, t in r0["records"][-1]["nets"]["G"].items():
        assert torch.equal(saved["G"][name], t), name
    resumed = qs_attn.resume(ckpt, max_iters=STEPS + 2, progress=False, distributed=False,
                             checkpoints_dir=str(tmp_path))  # (leaves the shared run's checkpoint alone)
    assert resumed.total_iters == STEPS + 2
    # the position in the epoch is converted to one process's batches: epoch 2 had one global
    # batch of 2 behind it, so 2 single batches; 2 more iterations end that epoch of 4
    meta = qs_attn._native.read_checkpoint(str(resumed.checkpoint))[1]
    assert (meta["epoch"], meta["epoch_iter"], meta["world_size"]) == ("3", "0", "1")


def test_a_distributed_checkpoint_resumes_on_two_ranks(two_rank_run, tmp_path):
    """Saved after 3 global batches (epoch 2, 1 batch in); two ranks continue from there and
    stay identical."""
    data, _, (r0, _) = two_rank_run
    procs = _launch(data, tmp_path, STEPS + 2, resume=r0["checkpoint"])
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False)["records"] for r in range(2))
    assert [r["step"] for r in a] == [STEPS + 1, STEPS + 2] == [r["step"] for r in b]
    for net in "GDF":
        for name, t in a[-1]["nets"][net].items():
            assert torch.equal(t, b[-1]["nets"][net][name]), (net, name)
    meta = qs_attn._native.read_checkpoint(str(tmp_path / "runs" / "dist" / "latest.safetensors"))[1]
    # epoch 2 had 2 global batches of 2: the resumed run finished it and trained one of epoch 3
    assert (meta["epoch"], meta["epoch_iter"], meta["world_size"]) == ("3", "1", "2")


def test_ranks_that_exit_right_after_a_collective_exit_cleanly():
    # Without leaving the process group before the interpreter finalises, gloo's worker threads
    # can release their last collective's tensors during finalisation, and about one process in
    # three aborted here ("terminate called without an active exception"): ten processes
    # catch that with probability above 98 %.
    for _ in range(5):
        for p in _launch_script(EXIT_WORKER, []):
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err


@pytest.mark.parametrize("signal_name, limit", [("KILL", 60), ("STOP", 8)])
def test_a_failed_rank_ends_the_other_with_a_clear_error(tmp_path, signal_name, limit):
    """A killed rank (its connections close) or a hung one (the collective times out after
    ``dist_timeout``, here 8 s) makes the other exit with an error naming the problem."""
    data = copy_tiny_dataset(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    procs = _launch(data, out, 6, "2", signal_name, str(limit))  # rank 1 signals itself at step 2
    try:
        start = time.monotonic()
        _, err0 = procs[0].communicate(timeout=limit + 90)
        elapsed = time.monotonic() - start
    finally:
        procs[1].kill()
        procs[1].wait()
    assert procs[0].returncode not in (0, None)
    assert "qs_attn: rank 0 of 2" in err0 and "another process probably failed" in err0, err0[-2000:]
    assert elapsed < limit + 30, f"took {elapsed:.0f} s"
