"""Training runs end to end at tiny sizes: exact resume, atomic checkpoints, .pth round trips,
the CLI, Ctrl-C, bad data, and a short real run on the bundled set that moves toward domain B."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import qs_attn
from qs_attn import _native

# A small but complete configuration: 32x32 crops (8x8 = 64 positions on the QS layers).
TINY = dict(crop_size=32, load_size=36, ngf=8, ndf=8, num_patches=16, n_epochs=1, n_epochs_decay=1,
            print_freq=1, display_freq=1000, save_latest_freq=1000, save_epoch_freq=1000, num_samples=2)


def _states(checkpoint):
    tensors, meta = _native.read_checkpoint(str(checkpoint))
    return tensors, meta


def test_resume_continues_exactly(tmp_path):
    """4 iterations in one go == 2 iterations, resume, 2 more (weights, optimiser states,
    position) — bit for bit on the CPU."""
    full = qs_attn.train(name="full", checkpoints_dir=str(tmp_path), max_iters=4, progress=False, **TINY)
    half = qs_attn.train(name="half", checkpoints_dir=str(tmp_path), max_iters=2, progress=False, **TINY)
    resumed = qs_attn.resume(half.checkpoint, max_iters=4, progress=False)
    assert resumed.total_iters == full.total_iters == 4
    a, meta_a = _states(full.checkpoint)
    b, meta_b = _states(resumed.checkpoint)
    assert a.keys() == b.keys() and any(k.startswith("opt_G.exp_avg") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for k in ("epoch", "epoch_iter", "total_iters", "sampler_state", "coins_state", "opt_G.step"):
        assert meta_a[k] == meta_b[k], k
    # and the run did train: the generator moved away from its initialisation
    init = _states(qs_attn.train(name="init", checkpoints_dir=str(tmp_path), max_iters=1, progress=False, lr=1e-12, **TINY).checkpoint)[0]
    assert not torch.equal(init["G.model.1.weight"], a["G.model.1.weight"])


def test_checkpoint_write_is_atomic(tmp_path):
    """Killing a process in the middle of saving leaves the previous checkpoint loadable."""
    target = tmp_path / "latest.safetensors"
    config = json.dumps(dict(dataroot="", name="atomic", checkpoints_dir=str(tmp_path)))
    _native.Trainer(config).save(str(target))
    before = _states(target)[0]
    script = (
        "import torch, qs_attn, sys\n"
        "from qs_attn import _native\n"
        f"t = _native.Trainer({config!r})\n"
        "print('ready', flush=True)\n"
        f"while True: t.save({str(target)!r})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(1.5)  # several saves of ~100 MB are under way
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    after = _states(target)[0]  # loads: never a half-written file
    assert after.keys() == before.keys()


def test_checkpoint_metadata_reads_without_the_tensors(tmp_path):
    """The header-only reader gives the metadata the full safetensors reader gives."""
    run = qs_attn.train(name="meta", checkpoints_dir=str(tmp_path), max_iters=1, progress=False, **TINY)
    _, meta = _states(run.checkpoint)
    assert _native.read_checkpoint_metadata(str(run.checkpoint)) == meta
    assert json.loads(meta["config"])["name"] == "meta" and meta["total_iters"] == "1"
    for name, content in (("garbage", b"\xff" * 16), ("truncated", b"\x10" + b"\0" * 7 + b"{")):
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(content)
        with pytest.raises(ValueError, match="not a valid checkpoint"):
            _native.read_checkpoint_metadata(str(bad))


def test_pth_export_import_round_trip(tmp_path):
    run = qs_attn.train(name="pth", checkpoints_dir=str(tmp_path), max_iters=2, progress=False, **TINY)
    written = qs_attn.export_pth(run.checkpoint, tmp_path / "pth")
    assert sorted(p.name for p in written) == ["latest_net_D.pth", "latest_net_F.pth", "latest_net_G.pth"]
    g_state = torch.load(tmp_path / "pth" / "latest_net_G.pth", weights_only=True)
    assert "model.1.weight" in g_state and "model.7.filt" in g_state and "model.12.conv_block.1.weight" in g_state
    # the generator from the .pth equals the one from our checkpoint
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(qs_attn.load_generator(tmp_path / "pth" / "latest_net_G.pth")(x),
                               qs_attn.load_generator(run.checkpoint)(x), rtol=0, atol=0)
    # and back: a training checkpoint built from the .pth files holds the same weights
    back = qs_attn.import_pth({n: tmp_path / "pth" / f"latest_net_{n}.pth" for n in "GDF"}, tmp_path / "imported.safetensors",
                              ngf=8, ndf=8, crop_size=32, load_size=36, num_patches=16)
    original, imported = qs_attn.checkpoint_state_dicts(run.checkpoint), qs_attn.checkpoint_state_dicts(back)
    for net in "GDF":
        assert original[net].keys() == imported[net].keys()
        for k in original[net]:
            assert torch.equal(original[net][k], imported[net][k]), (net, k)


def test_generator_state_dict_and_translate(tmp_path):
    run = qs_attn.train(name="gen", checkpoints_dir=str(tmp_path), max_iters=1, progress=False, **TINY)
    G = qs_attn.load_generator(run.checkpoint)
    sd = G.state_dict()
    assert sd["model.1.weight"].shape == (8, 3, 7, 7)
    with torch.no_grad():
        y = G(torch.zeros(1, 3, 36, 36))  # any size divisible by 4
    assert y.shape == (1, 3, 36, 36) and float(y.abs().max()) <= 1.0
    with pytest.raises(ValueError, match="divisible by 4"):
        G(torch.zeros(1, 3, 30, 30))
    assert G.crop_size == 32  # from the run's config
    files = qs_attn.translate(G, qs_attn.bundled_dataset() / "testA", tmp_path / "out")  # resized to crop_size
    assert len(files) == len(list((qs_attn.bundled_dataset() / "testA").glob("*.png")))
    assert _native.load_image(str(files[0])).shape == (1, 3, 32, 32)
    source = sorted((qs_attn.bundled_dataset() / "testA").glob("*.png"))[0]
    native = qs_attn.translate(G, source, tmp_path / "native", size=None)  # the 64x64 source size
    assert _native.load_image(str(native[0])).shape == (1, 3, 64, 64)


@pytest.mark.parametrize("options", [dict(flip_equivariance=True), dict(batch_size=3, mode="local", local_layout="reference"),
                                     dict(mode="cross"), dict(mode="none", nce_idt=False, lambda_NCE=10.0),
                                     dict(gan_mode="wgangp", lambda_gp=10.0), dict(lambda_NCE=0.0)])
def test_other_configurations_train(tmp_path, options):
    run = qs_attn.train(name="cfg", checkpoints_dir=str(tmp_path), max_iters=3, progress=False, **dict(TINY, **options))
    assert run.total_iters == 3 and all(map(lambda v: v == v and abs(v) < 1e6, run.final_losses.values()))
    if options.get("lambda_NCE") == 0.0:
        assert "NCE" not in run.final_losses
    if "lambda_gp" in options:
        assert run.final_losses["GP"] >= 0.0


def test_bad_options_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown field `n_epoch`"):
        qs_attn.train(checkpoints_dir=str(tmp_path), n_epoch=3)
    with pytest.raises(ValueError, match="fewer than num_patches"):
        qs_attn.train(checkpoints_dir=str(tmp_path), crop_size=32, load_size=36, num_patches=256)
    with pytest.raises(ValueError, match="load_size"):
        qs_attn.train(checkpoints_dir=str(tmp_path), crop_size=64, load_size=32)


def _write_png(path, array):
    from PIL import Image  # matplotlib depends on Pillow

    Image.fromarray(array).save(path)


def test_bad_data(tmp_path, capfd):
    import numpy as np

    root = tmp_path / "data"
    for d in ("trainA", "trainB"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    _write_png(root / "trainA" / "rgb.png", rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    _write_png(root / "trainA" / "grey.png", rng.integers(0, 255, (40, 40), dtype=np.uint8))
    _write_png(root / "trainA" / "rgba.png", rng.integers(0, 255, (40, 40, 4), dtype=np.uint8))
    _write_png(root / "trainA" / "tiny.png", rng.integers(0, 255, (5, 7, 3), dtype=np.uint8))
    (root / "trainA" / "corrupt.png").write_bytes(b"\x89PNG not really an image")
    _write_png(root / "trainB" / "b.png", rng.integers(0, 255, (50, 30, 3), dtype=np.uint8))
    run = qs_attn.train(str(root), name="bad", checkpoints_dir=str(tmp_path), max_iters=5, progress=False, **TINY)
    assert run.total_iters == 5
    assert "corrupt.png" in capfd.readouterr().err
    os.rename(root / "trainB", root / "fullB")
    (root / "trainB").mkdir()
    with pytest.raises(ValueError, match="trainB"):
        qs_attn.train(str(root), name="empty", checkpoints_dir=str(tmp_path), max_iters=1, progress=False, **TINY)


def test_cli_train_translate_export_and_ctrl_c(tmp_path):
    cmd = [sys.executable, "-m", "qs_attn"]
    opts = sum(([f"--{k}", json.dumps(v)] for k, v in TINY.items()), [])
    done = subprocess.run(cmd + ["train", "--name", "cli", "--checkpoints_dir", str(tmp_path), "--max_iters", "2"] + opts,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    checkpoint = tmp_path / "cli" / "latest.safetensors"
    assert f"checkpoint:  {checkpoint}" in done.stdout
    image = sorted((qs_attn.bundled_dataset() / "testA").glob("*.png"))[0]
    done = subprocess.run(cmd + ["translate", str(checkpoint), str(image), str(tmp_path / "tr"), "--size", "32"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and (tmp_path / "tr" / image.name).exists(), done.stderr
    done = subprocess.run(cmd + ["export-pth", str(checkpoint), str(tmp_path / "pth")], capture_output=True, text=True)
    assert done.returncode == 0 and (tmp_path / "pth" / "latest_net_G.pth").exists(), done.stderr
    done = subprocess.run(cmd + ["train", "--n_epoch", "3"], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown field" in done.stderr
    # Ctrl-C: the run stops after the current iteration, saves, and exits cleanly
    proc = subprocess.Popen(cmd + ["train", "--name", "sigint", "--checkpoints_dir", str(tmp_path)] + opts,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "sigint" / "loss_log.jsonl"
    deadline = time.time() + 60
    while not (log.exists() and log.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err
    assert _states(tmp_path / "sigint" / "latest.safetensors")[1]["total_iters"] != "0"


def test_short_run_moves_toward_domain_b(tmp_path):
    """A short real run on the bundled emoji: the adversarial losses stay in the range of a
    working GAN (no collapse of D to zero or divergence), PatchNCE decreases, and the
    translations of held-out Noto emoji get closer to their true EmojiOne counterparts (L1 to
    the paired ground truth, which the set provides) than the untrained generator's."""
    config = dict(crop_size=32, load_size=36, ngf=16, ndf=16, num_patches=16, n_epochs=1, n_epochs_decay=0,
                  print_freq=10, display_freq=10_000, save_latest_freq=10_000, num_samples=1, max_iters=200, seed=1)
    untrained = qs_attn.train(name="untrained", checkpoints_dir=str(tmp_path), progress=False, **dict(config, max_iters=1, lr=1e-12))
    run = qs_attn.train(name="short", checkpoints_dir=str(tmp_path), progress=False, **config)
    rows = [json.loads(line)["losses"] for line in run.log.read_text().splitlines()]
    assert 0.05 < rows[-1]["D"] < 1.0 and 0.05 < rows[-1]["G_GAN"] < 2.0
    first = sum(r["NCE"] for r in rows[:3]) / 3
    last = sum(r["NCE"] for r in rows[-3:]) / 3
    assert last < 0.9 * first

    def l1_to_truth(checkpoint):
        G = qs_attn.load_generator(checkpoint)
        root = qs_attn.bundled_dataset()
        names = sorted(p.name for p in (root / "testA").glob("*.png"))
        with torch.no_grad():
            return sum(float((G(_native.load_image(str(root / "testA" / n), 32)) -
                              _native.load_image(str(root / "testB" / n), 32)).abs().mean()) for n in names) / len(names)

    before, after = l1_to_truth(untrained.checkpoint), l1_to_truth(run.checkpoint)
    assert after < 0.7 * before, (before, after)
