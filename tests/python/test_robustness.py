"""Nothing lost, nothing crashes (issue 18): the divergence guard, run-directory safety,
checkpoint checksums, validation before the first iteration, a checkpoint after a failure,
SIGTERM, sizes checked before allocating, tensor layouts, truncated images. Each test is one
case of the issue, run as a user would meet it."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import qs_attn
from qs_attn import _native
from tiny_run import TINY

FAST = dict(TINY, n_epochs=1, n_epochs_decay=1, display_freq=1000, save_latest_freq=1000, save_epoch_freq=1000)


def _meta(checkpoint):
    return _native.read_checkpoint_metadata(str(checkpoint))


def _all_finite(checkpoint):
    tensors, _ = _native.read_checkpoint(str(checkpoint))
    return all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())


# -- the divergence guard ---------------------------------------------------------------------


def _nce_nan_from(iteration):
    """A supplied NCE loss (the built-in one) that turns NaN from the given (1-based) iteration
    on, and the callback that counts the iterations for it."""
    done = {"iters": 0}
    builtin = qs_attn.nn.PatchNCELoss(0.07)

    def loss(q, k, n):
        value = builtin(q, k, n)
        return value * float("nan") if done["iters"] + 1 >= iteration else value

    def count(info):
        done["iters"] = info.step
    return loss, count


def test_a_nan_loss_stops_the_run_and_keeps_the_good_checkpoint(tiny_data, tmp_path):
    opts = dict(FAST, save_latest_freq=1)
    loss, count = _nce_nan_from(3)
    trainer = qs_attn.Trainer(tiny_data, "nan", checkpoints_dir=str(tmp_path), progress=False, nce_loss=loss,
                              callbacks=[count], **opts)
    with pytest.raises(ValueError, match=r"NCE.*NaN or infinite at iteration 3.*on_nonfinite='skip'"):
        trainer.fit(6)
    latest = tmp_path / "nan" / "latest.safetensors"
    assert _meta(latest)["total_iters"] == "2" and _all_finite(latest)


def test_a_huge_loss_weight_never_writes_a_nonfinite_checkpoint(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="diverged"):
        qs_attn.train(tiny_data, "huge", checkpoints_dir=str(tmp_path), max_iters=4, progress=False,
                      lambda_NCE=1e38, **dict(FAST, save_latest_freq=1))
    latest = tmp_path / "huge" / "latest.safetensors"
    assert not latest.exists() or _all_finite(latest)


def test_skip_leaves_the_networks_of_a_nonfinite_step_unchanged(tiny_data, tmp_path, capfd):
    trainer = qs_attn.Trainer(tiny_data, "skip", checkpoints_dir=str(tmp_path), progress=False, on_nonfinite="skip",
                              nce_loss=lambda q, k, n: qs_attn.patch_nce_loss(q, k, 0.07, n) * (float("nan") if skip[0] else 1.0),
                              **FAST)
    skip = [False]
    trainer.step()
    before = {net: {k: v.clone() for k, v in trainer._native.state_dict(net).items()} for net in "GDF"}
    skip[0] = True
    losses = trainer.step()
    assert losses["NCE"] != losses["NCE"]  # NaN, logged as it was
    after = {net: trainer._native.state_dict(net) for net in "GDF"}
    for net in "GF":  # the G + F step was skipped
        assert all(torch.equal(before[net][k], after[net][k]) for k in before[net]), net
    assert any(not torch.equal(before["D"][k], after["D"][k]) for k in before["D"])  # D's loss was finite
    assert "update skipped" in capfd.readouterr().err
    skip[0] = False
    result = trainer.fit(2)
    assert result.total_iters == 4 and _all_finite(result.checkpoint)


def test_nonfinite_weights_are_never_written_over_a_checkpoint(tmp_path):
    target = tmp_path / "c.safetensors"
    trainer = _native.Trainer(json.dumps(dict(dataroot="", name="w", checkpoints_dir=str(tmp_path), **TINY)))
    trainer.save(str(target))
    before = target.read_bytes()
    state = trainer.state_dict("G")
    with torch.no_grad():
        state[sorted(state)[0]].view(-1)[0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        trainer.save(str(target))
    assert target.read_bytes() == before


# -- the run directory --------------------------------------------------------------------------


def test_a_new_run_never_replaces_an_earlier_run(tiny_data, tmp_path):
    first = qs_attn.train(tiny_data, "x", checkpoints_dir=str(tmp_path), max_iters=3, progress=False, **FAST)
    with pytest.raises(ValueError, match=r"already holds a run.*iteration 3.*resume\(.*overwrite=True"):
        qs_attn.train(tiny_data, "x", checkpoints_dir=str(tmp_path), max_iters=1, progress=False, **FAST)
    assert _meta(first.checkpoint)["total_iters"] == "3"
    assert len(first.log.read_text().splitlines()) == 3
    again = qs_attn.train(tiny_data, "x", checkpoints_dir=str(tmp_path), max_iters=1, progress=False, overwrite=True,
                          **FAST)
    assert _meta(again.checkpoint)["total_iters"] == "1" and len(again.log.read_text().splitlines()) == 1


@pytest.mark.parametrize("name", ["../..", "../escaped", "/tmp/absolute", ""])
def test_run_names_cannot_leave_checkpoints_dir(tiny_data, tmp_path, name):
    runs = tmp_path / "deep" / "runs"
    runs.mkdir(parents=True)
    with pytest.raises(ValueError, match="plain run name"):
        qs_attn.train(tiny_data, name, checkpoints_dir=str(runs), max_iters=1, progress=False, **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "deep"]
    assert [p.name for p in (tmp_path / "deep").iterdir()] == ["runs"] and not any(runs.iterdir())


def test_resume_trims_the_loss_log_to_its_checkpoint(tiny_data, tmp_path):
    trainer = qs_attn.Trainer(tiny_data, "log", checkpoints_dir=str(tmp_path), progress=False, **FAST)
    trainer.fit(2)
    at2 = trainer.save(tmp_path / "at2.safetensors")
    trainer.fit(3)  # rows 1..5 logged
    resumed = qs_attn.resume(at2, max_iters=4, progress=False)
    iters = [json.loads(line)["iter"] for line in resumed.log.read_text().splitlines()]
    assert iters == [1, 2, 3, 4]


def test_stale_temp_files_of_a_killed_save_are_removed(tiny_data, tmp_path):
    run = tmp_path / "tmp"
    run.mkdir()
    stale = run / ".latest.safetensors.tmp-4999999"  # above Linux's largest pid: no such process
    stale.write_bytes(b"half a checkpoint")
    qs_attn.train(tiny_data, "tmp", checkpoints_dir=str(tmp_path), max_iters=1, progress=False, **FAST)
    assert not stale.exists()


def _drop_checksum(path: Path) -> None:
    """Rewrites a checkpoint's header without its checksum (as written before checksums)."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    del header["__metadata__"]["checksum"]
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n:])


def test_a_bit_flipped_checkpoint_is_refused_and_an_old_one_still_loads(tiny_data, tmp_path):
    result = qs_attn.train(tiny_data, "crc", checkpoints_dir=str(tmp_path), max_iters=2, progress=False, **FAST)
    good = result.checkpoint.read_bytes()
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(good[:-100] + bytes([good[-100] ^ 0x01]) + good[-99:])
    with pytest.raises(ValueError, match="corrupt"):
        _native.read_checkpoint(str(flipped))
    with pytest.raises(ValueError, match="corrupt"):
        qs_attn.resume(flipped, max_iters=3, progress=False)
    old = tmp_path / "old.safetensors"
    old.write_bytes(good)
    _drop_checksum(old)
    assert "checksum" not in _meta(old)
    assert qs_attn.resume(old, max_iters=3, progress=False).total_iters == 3


# -- validation before training, and a checkpoint after a failure -------------------------------


def _counting():
    seen = []
    return seen, (lambda info: seen.append(info.step))


def test_no_sample_grid_is_an_error_before_the_first_iteration(tiny_data, tmp_path):
    seen, count = _counting()
    with pytest.raises(ValueError, match="num_samples"):
        qs_attn.train(tiny_data, "n0", checkpoints_dir=str(tmp_path), max_iters=2, progress=False, callback=count,
                      **dict(FAST, num_samples=0))
    for f in (tiny_data / "testA").iterdir():
        f.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="testA"):
        qs_attn.train(tiny_data, "bad_test", checkpoints_dir=str(tmp_path), max_iters=2, progress=False,
                      callback=count, **FAST)
    assert seen == []


def test_unreadable_training_images_fail_before_the_first_iteration(tiny_data, tmp_path):
    for f in (tiny_data / "trainB").iterdir():
        f.write_bytes(b"not an image")
    seen, count = _counting()
    with pytest.raises(ValueError, match="none of the 4 images of domain B"):
        qs_attn.train(tiny_data, "b", checkpoints_dir=str(tmp_path), max_iters=2, progress=False, callback=count, **FAST)
    assert seen == []


def test_a_failure_after_training_began_saves_a_checkpoint(tiny_data, tmp_path, capfd):
    def fail_at_3(info):
        if info.step == 3:
            raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        qs_attn.train(tiny_data, "fail", checkpoints_dir=str(tmp_path), max_iters=6, progress=False, callback=fail_at_3,
                      **FAST)
    latest = tmp_path / "fail" / "latest.safetensors"
    assert _meta(latest)["total_iters"] == "3"
    assert "checkpoint saved" in capfd.readouterr().err


# -- SIGTERM --------------------------------------------------------------------------------------


def test_sigterm_saves_and_stops_like_ctrl_c(tmp_path):
    cmd = [sys.executable, "-m", "qs_attn", "train", "--name", "term", "--checkpoints_dir", str(tmp_path)]
    opts = sum(([f"--{k}", json.dumps(v)] for k, v in dict(FAST, n_epochs=50).items()), [])
    proc = subprocess.Popen(cmd + opts, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "term" / "loss_log.jsonl"
    deadline = time.time() + 120
    while not (log.exists() and log.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "checkpoint saved" in err
    meta = _meta(tmp_path / "term" / "latest.safetensors")
    assert int(meta["total_iters"]) >= 2
    assert int(meta["total_iters"]) == len(log.read_text().splitlines())  # stopped after a whole iteration


# -- sizes, layouts and images at the ops ----------------------------------------------------------


def _run_python(code: str) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter: an abort there fails the test instead of ending pytest."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_huge_position_counts_neither_abort_nor_panic():
    done = _run_python(
        "import qs_attn, torch\n"
        "ids = qs_attn.sample_patch_ids(2**40, 4)\n"
        "assert ids.shape == (4,) and len(set(ids.tolist())) == 4 and 0 <= int(ids.min()) and int(ids.max()) < 2**40\n"
        "ids = qs_attn._native.PatchSampler(0).sample(2**62, 4, 1, False)\n"
        "assert ids.shape == (4,) and int(ids.max()) < 2**62\n"
        "try:\n"
        "    qs_attn.sample_patch_ids(2**40, 2**20, num_images=2**20, per_image=True)\n"
        "except ValueError as e:\n"
        "    assert 'too many' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
        "print('ok')\n")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def _layouts():
    dense = torch.randn(2, 8, 4, 4)
    rows = torch.randn(16, 8)
    return {
        "sparse_coo": (rows.to_sparse(), "torch.sparse_coo"),
        "sparse_csr": (rows.to_sparse_csr(), "torch.sparse_csr"),
        "nested": (torch.nested.nested_tensor([rows[:8], rows[8:]]), "nested"),
        "mkldnn": (dense.to_mkldnn(), "torch._mkldnn"),
        "mkldnn_rows": (rows.to_mkldnn(), "torch._mkldnn"),
    }


@pytest.mark.parametrize("layout", ["sparse_coo", "sparse_csr", "nested", "mkldnn", "mkldnn_rows"])
def test_unsupported_layouts_are_a_type_error_naming_the_layout(layout):
    t, name = _layouts()[layout]
    rows = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    feat = torch.randn(2, 8, 4, 4)
    calls = [lambda: qs_attn.patch_nce_loss(t, rows), lambda: qs_attn.patch_nce_loss(rows, t),
             lambda: qs_attn.qs_select(t, 4), lambda: qs_attn.qs_entropy(t),
             lambda: qs_attn.qs_route(t, qs_attn.qs_select(feat, 4)),
             lambda: qs_attn.qs_cross_route(t, qs_attn.qs_select(feat, 4, mode="cross"))]
    for call in calls:
        with pytest.raises(TypeError, match=name.replace(".", r"\.")):
            call()


def _jpeg_bytes(tmp_path):
    from PIL import Image

    import numpy as np

    path = tmp_path / "whole.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path, quality=95)
    return path.read_bytes()


def test_truncated_images_are_skipped_with_a_warning(tiny_data, tmp_path, capfd):
    whole = _jpeg_bytes(tmp_path)
    cut_jpeg = tiny_data / "trainA" / "cut.jpg"
    cut_jpeg.write_bytes(whole[: len(whole) // 2])
    png = sorted((tiny_data / "trainB").iterdir())[0].read_bytes()
    cut_png = tiny_data / "trainB" / "cut.png"
    cut_png.write_bytes(png[: len(png) // 2])
    for cut in (cut_jpeg, cut_png):
        with pytest.raises(ValueError, match="truncated"):
            _native.load_image(str(cut), 32)
    run = qs_attn.train(tiny_data, "cut", checkpoints_dir=str(tmp_path), max_iters=5, progress=False,
                        **dict(FAST, serial_batches=True))
    assert run.total_iters == 5
    err = capfd.readouterr().err
    assert "skipping unreadable image" in err and "cut.jpg" in err and "cut.png" in err and "truncated" in err
