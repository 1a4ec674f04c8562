"""qs_attn.baselines on a small copy of the bundled colour -> line-art set, against independent
computations: images decoded and converted to greyscale by Pillow, Inception features of those
pixels, FID in the nuclear-norm form, and the documented subset draw of real-vs-real."""

import shutil
import statistics

import numpy as np
import pytest
import torch

import qs_attn
from qs_attn import metrics
from qs_attn.baselines import greyscale, greyscale_scores, identity_scores, real_vs_real_scores
from reference_metrics import fid_nuclear, pillow_pixels as pixels

BUNDLED = qs_attn.bundled_dataset("emoji_mono")
PAIRS, TRAIN = 6, 10


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """testA/testB: the first 6 bundled pairs; trainB: the first 10 training drawings."""
    root = tmp_path_factory.mktemp("baselines")
    names = sorted(p.name for p in (BUNDLED / "testA").glob("*.png"))[:PAIRS]
    for split in ("testA", "testB"):
        (root / split).mkdir()
        for n in names:
            shutil.copy(BUNDLED / split / n, root / split / n)
    (root / "trainB").mkdir()
    for f in sorted((BUNDLED / "trainB").glob("*.png"))[:TRAIN]:
        shutil.copy(f, root / "trainB" / f.name)
    return root


def files(root, split):
    return sorted((root / split).glob("*.png"))


@pytest.fixture(scope="module")
def test_b(data):
    """testB's 8-bit pixels and their Inception features."""
    reals = torch.cat([pixels(f) for f in files(data, "testB")])
    return reals, metrics.inception_features()(reals)


def expected_scores(fakes, test_b):
    """L1, SSIM, FID and KID of 8-bit fakes against testB (their counterparts)."""
    reals, real_feats = test_b
    fake_feats = metrics.inception_features()(fakes)
    l1 = statistics.fmean([float((f.double() - r.double()).abs().mean()) / 255 for f, r in zip(fakes, reals)])
    return {"l1": l1, "ssim": float(metrics.ssim(fakes.double() / 255, reals.double() / 255).mean()),
            "fid": fid_nuclear(fake_feats, real_feats),
            "kid_mean": metrics.kernel_inception_distance(fake_feats, real_feats, 100, PAIRS // 2, seed=0)[0]}


def check(scores, expected):
    assert scores["num_images"] == scores["num_pairs"] == PAIRS
    assert scores["l1"] == pytest.approx(expected["l1"], rel=1e-9)
    assert scores["ssim"] == pytest.approx(expected["ssim"], rel=1e-9)
    assert scores["fid"] == pytest.approx(expected["fid"], rel=1e-5)
    assert scores["kid_mean"] == pytest.approx(expected["kid_mean"], rel=1e-5, abs=1e-9)


def test_identity_scores(data, test_b):
    fakes = torch.cat([pixels(f) for f in files(data, "testA")])
    check(identity_scores(data, size=None), expected_scores(fakes, test_b))


def test_greyscale_scores_are_those_of_pillow_greyscale_images(data, test_b):
    fakes = torch.cat([pixels(f, "L") for f in files(data, "testA")])
    check(greyscale_scores(data, size=None), expected_scores(fakes, test_b))


def test_greyscale_keeps_grey_levels_and_weights_channels_by_luma():
    grey = torch.tensor([0.0, 1, 37, 128, 254, 255]).view(1, 1, 2, 3).expand(2, 3, 2, 3) / 127.5 - 1
    assert torch.equal(metrics.to_8bit(greyscale(grey)), metrics.to_8bit(grey + 1 / 255))
    pure = torch.full((3, 3, 1, 1), -1.0)
    pure[[0, 1, 2], [0, 1, 2]] = 1.0  # pure red, green, blue
    assert metrics.to_8bit(greyscale(pure))[:, 0].flatten().tolist() == [76.0, 150.0, 29.0]  # 255 x 0.299, 0.587, 0.114, rounded
    assert greyscale(pure).dtype == pure.dtype and greyscale(pure).shape == pure.shape


def test_real_vs_real_scores(data, test_b):
    scores = real_vs_real_scores(data, size=None, draws=3, seed=5)
    test = test_b[1]
    train = metrics.inception_features()(torch.cat([pixels(f) for f in files(data, "trainB")]))
    g = torch.Generator().manual_seed(5)
    fids, kids = [], []
    for _ in range(3):
        held_out = train[torch.randperm(TRAIN, generator=g)[:PAIRS]]
        fids.append(fid_nuclear(held_out, test))
        kids.append(metrics.kernel_inception_distance(held_out, test, 100, PAIRS // 2, seed=5)[0])
    assert scores["fids"] == pytest.approx(fids, rel=1e-5)
    assert scores["kids"] == pytest.approx(kids, rel=1e-5, abs=1e-9)
    assert scores["fid"] == pytest.approx(np.mean(fids), rel=1e-5)
    assert scores["kid_std"] == pytest.approx(np.std(kids, ddof=1), rel=1e-4, abs=1e-9)
    assert scores["num_images"] == PAIRS and scores["draws"] == 3


def test_real_vs_real_needs_enough_training_images(data, tmp_path):
    small = tmp_path / "small"
    shutil.copytree(data / "testB", small / "testB")
    (small / "trainB").mkdir()
    shutil.copy(files(data, "trainB")[0], small / "trainB")
    with pytest.raises(ValueError, match="trainB has 1 images, fewer than testB's 6"):
        real_vs_real_scores(small, size=None)
