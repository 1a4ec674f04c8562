"""Fixtures shared by the trainer tests."""
import pytest
import torch

from tiny_run import copy_tiny_dataset


@pytest.fixture()
def tiny_data(tmp_path):
    """Four images per domain and split from the bundled set (epochs of four iterations)."""
    return copy_tiny_dataset(tmp_path)


@pytest.fixture()
def exact_float32():
    """TF32 convolutions (cuDNN's default on CUDA) round their inputs to 10 bits, so two
    implementations would agree only to ~1e-3; comparisons on CUDA turn them off. The switch
    is global to the process, qs_attn's Rust code included."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before
