"""qs_attn.sample_patch_ids (docs/algorithm.md §7.2, Q2, Q18)."""

import pytest
import torch

import qs_attn


@pytest.mark.parametrize("P,N", [(100, 10), (16, 16), (1, 1), (4096, 256)])
def test_shared_ids_properties(P, N):
    ids = qs_attn.sample_patch_ids(P, N)
    assert ids.dtype == torch.int64
    assert tuple(ids.shape) == (min(N, P),)
    assert ids.device.type == "cpu"
    vals = ids.tolist()
    assert len(set(vals)) == len(vals), "ids must be distinct"
    assert min(vals) >= 0 and max(vals) < P


def test_shared_ids_ignore_num_images():
    ids = qs_attn.sample_patch_ids(50, 7, num_images=4)
    assert tuple(ids.shape) == (7,)


def test_n_greater_than_p_returns_all_positions():
    ids = qs_attn.sample_patch_ids(9, 20)
    assert tuple(ids.shape) == (9,)
    assert sorted(ids.tolist()) == list(range(9))
    per = qs_attn.sample_patch_ids(9, 20, num_images=3, per_image=True)
    assert tuple(per.shape) == (3, 9)
    for row in per.tolist():
        assert sorted(row) == list(range(9))


def test_per_image_ids():
    per = qs_attn.sample_patch_ids(200, 12, num_images=5, per_image=True)
    assert per.dtype == torch.int64
    assert tuple(per.shape) == (5, 12)
    rows = [tuple(r) for r in per.tolist()]
    for r in rows:
        assert len(set(r)) == 12
        assert min(r) >= 0 and max(r) < 200
    assert len(set(rows)) == 5, "per_image ids should differ across images"


def test_seeded_generator_reproducible():
    a = qs_attn.sample_patch_ids(300, 20, generator=torch.Generator().manual_seed(123))
    b = qs_attn.sample_patch_ids(300, 20, generator=torch.Generator().manual_seed(123))
    c = qs_attn.sample_patch_ids(300, 20, generator=torch.Generator().manual_seed(124))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    pa = qs_attn.sample_patch_ids(300, 20, num_images=3, per_image=True,
                                  generator=torch.Generator().manual_seed(5))
    pb = qs_attn.sample_patch_ids(300, 20, num_images=3, per_image=True,
                                  generator=torch.Generator().manual_seed(5))
    assert torch.equal(pa, pb)


def test_generator_state_advances():
    g = torch.Generator().manual_seed(9)
    a = qs_attn.sample_patch_ids(300, 20, generator=g)
    b = qs_attn.sample_patch_ids(300, 20, generator=g)
    assert not torch.equal(a, b)


def test_device_argument_cpu():
    ids = qs_attn.sample_patch_ids(30, 5, device="cpu")
    assert ids.device.type == "cpu"
    ids = qs_attn.sample_patch_ids(30, 5, device=torch.device("cpu"))
    assert ids.device.type == "cpu"


def test_roughly_uniform():
    """Every position is equally likely to be drawn (a uniform permutation prefix)."""
    g = torch.Generator().manual_seed(0)
    P, N, T = 8, 3, 4000
    counts = torch.zeros(P)
    first = torch.zeros(P)
    for _ in range(T):
        ids = qs_attn.sample_patch_ids(P, N, generator=g)
        counts[ids] += 1
        first[ids[0]] += 1
    exp = T * N / P  # 1500, sd ≈ 34
    assert ((counts - exp).abs() < 200).all(), counts
    exp1 = T / P  # 500, sd ≈ 21
    assert ((first - exp1).abs() < 130).all(), first


def test_usable_as_index():
    X = torch.randn(2, 50, 4)
    ids = qs_attn.sample_patch_ids(50, 6)
    assert tuple(X[:, ids, :].shape) == (2, 6, 4)
