"""Version information and the check that the installed torch is the release the extension was
compiled against (run before the extension loads)."""
import importlib.metadata
import subprocess
import sys

import pytest
import torch

import qs_attn
from qs_attn import _version


def _release(version):
    return ".".join(version.split("+")[0].split(".")[:2])


def test_version_names_the_torch_release_of_the_running_torch():
    assert qs_attn.__version__ == importlib.metadata.version("qs-attn")
    assert qs_attn.__version__.endswith("+torch" + _release(torch.__version__))
    assert _release(qs_attn.__torch_version__) == _release(torch.__version__)
    assert len(qs_attn.__git_commit__.split("-")[0]) == 40 or qs_attn.__git_commit__ == "unknown"


def test_cli_version():
    out = subprocess.run([sys.executable, "-m", "qs_attn", "--version"], capture_output=True, text=True, check=True)
    line = out.stdout.strip()
    assert line.startswith(f"qs-attn {qs_attn.__version__} ")
    assert f"built against torch {qs_attn.__torch_version__}" in line
    assert f"commit {qs_attn.__git_commit__}" in line
    assert f"running torch {torch.__version__}" in line


def _import_under(fake_torch_version):
    code = f"import torch; torch.__version__ = {fake_torch_version!r}; import qs_attn"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_import_under_another_supported_torch_names_both_and_the_wheel():
    built = _release(qs_attn.__torch_version__)
    other = next(r for r in _version.SUPPORTED_TORCH if r != built)
    out = _import_under(other + ".0+cu130")
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: ")
    assert f"built for torch {built} but torch {other}.0+cu130 is installed" in last
    assert f"pip install 'qs-attn=={qs_attn.__version__.split('+')[0]}+torch{other}'" in last
    assert "undefined symbol" not in out.stderr


def test_import_under_an_unsupported_torch_lists_the_supported_releases():
    out = _import_under("2.15.0")
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert f"built for torch {_release(qs_attn.__torch_version__)} but torch 2.15.0 is installed" in last
    assert "no qs-attn wheel is built for torch 2.15" in last
    assert ", ".join(_version.SUPPORTED_TORCH) in last


@pytest.mark.parametrize("installed", ["{}.0", "{}.7", "{}.1+cu130", "{}.0+cpu"])
def test_any_patch_and_local_build_of_the_built_release_passes(installed):
    _version.require_built_torch(installed.format(_release(qs_attn.__torch_version__)))


def test_supported_releases_come_from_the_matrix():
    rows = [line.split("#")[0].split() for line in open(_matrix_file())]
    releases = tuple(_release(row[0]) for row in rows if len(row) == 2)
    assert _version.SUPPORTED_TORCH == releases
    assert _release(qs_attn.__torch_version__) in releases


def _matrix_file():
    from pathlib import Path

    return Path(__file__).resolve().parents[2] / "torch-matrix.txt"
