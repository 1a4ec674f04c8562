"""Version information, and the check that the installed torch is the release the extension
was compiled against: it runs before the extension loads, because libtorch's C++ ABI changes
between releases and a mismatch would otherwise surface as an undefined-symbol error."""
from __future__ import annotations

import importlib.metadata
from typing import Optional

import torch

from ._build_info import GIT_COMMIT, SUPPORTED_TORCH, TORCH_VERSION

__all__ = ["__version__", "TORCH_VERSION", "GIT_COMMIT", "require_built_torch", "version_line"]

try:
    __version__ = importlib.metadata.version("qs-attn")
except importlib.metadata.PackageNotFoundError:  # imported from a source tree, not installed
    __version__ = "0.1.0+torch" + TORCH_VERSION.rsplit(".", 1)[0]


def _release(version: str) -> str:
    """'2.11.0+cu130' -> '2.11'."""
    return ".".join(version.split("+")[0].split(".")[:2])


def require_built_torch(installed: Optional[str] = None) -> None:
    """Raises ImportError unless ``installed`` (default: the imported torch's version) is the
    torch release this build links."""
    installed = installed or torch.__version__
    built, have = _release(TORCH_VERSION), _release(installed)
    if built == have:
        return
    base = __version__.split("+")[0]
    if have in SUPPORTED_TORCH:
        fix = (f"install the qs-attn wheel built for it: pip install 'qs-attn=={base}+torch{have}' "
               f"(or install torch=={built}.*)")
    else:
        fix = (f"no qs-attn wheel is built for torch {have}; the supported releases are "
               f"{', '.join(SUPPORTED_TORCH)}: install one of them with its wheel, e.g. "
               f"pip install 'torch=={built}.*' (README, 'Install')")
    raise ImportError(f"qs-attn {__version__} was built for torch {built} but torch {installed} is "
                      f"installed, and the extension only loads under the torch release it was "
                      f"compiled against; {fix}")


def version_line() -> str:
    """What ``qs-attn --version`` prints."""
    return (f"qs-attn {__version__} (built against torch {TORCH_VERSION}, commit {GIT_COMMIT}; "
            f"running torch {torch.__version__})")
