"""Fixtures shared by the trainer tests."""
import pytest

from tiny_run import copy_tiny_dataset


@pytest.fixture()
def tiny_data(tmp_path):
    """Four images per domain and split from the bundled set (epochs of four iterations)."""
    return copy_tiny_dataset(tmp_path)
