"""Optional dependencies: a feature that needs one imports it through :func:`require`, whose
error names the extra of pyproject.toml that installs it. (FID/KID's Inception weights have
their own error, :class:`qs_attn.metrics.EvalExtraMissingError`.)"""
from __future__ import annotations

import importlib
import importlib.util

__all__ = ["EXTRA_OF", "MissingExtraError", "available", "require"]

#: top-level module -> (its distribution on PyPI, the extra that installs it)
EXTRA_OF = {
    "matplotlib": ("matplotlib", "plot"),
    "PIL": ("Pillow", "plot"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "tqdm": ("tqdm", "progress"),
}


class MissingExtraError(ImportError):
    """An optional dependency a feature needs is not installed."""


def available(module: str) -> bool:
    """Whether ``module`` (a top-level name of :data:`EXTRA_OF`) can be imported."""
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # a module set to None in sys.modules (how tests hide one)
        return False


def require(module: str, feature: str):
    """Imports ``module`` for ``feature``, or raises :class:`MissingExtraError` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        distribution, extra = EXTRA_OF[module.split(".")[0]]
        raise MissingExtraError(f"{feature} needs {distribution}, which is not installed: "
                                f"pip install 'qs-attn[{extra}]' (or pip install {distribution})") from e
