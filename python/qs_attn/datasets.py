"""The datasets shipped with the package."""
from __future__ import annotations

from pathlib import Path

__all__ = ["bundled_dataset"]


def bundled_dataset() -> Path:
    """The small real two-domain set shipped with the package: emoji drawn by Google (Noto,
    domain A) and by EmojiOne (domain B), 64x64, 977 training and 108 test pairs (file names
    pair them for evaluation; training is unpaired). Licences in its LICENSES.md."""
    return Path(__file__).resolve().parent / "data" / "emoji"
