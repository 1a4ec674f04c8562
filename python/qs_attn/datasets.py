"""The datasets shipped with the package."""
from __future__ import annotations

from pathlib import Path

__all__ = ["BUNDLED_DATASETS", "bundled_dataset"]


BUNDLED_DATASETS = ("emoji", "emoji_mono")


def bundled_dataset(name: str = "emoji") -> Path:
    """A small real two-domain set shipped with the package, 64x64 (file names pair the test
    images for evaluation; training is unpaired; licences in each set's LICENSES.md):

    - ``"emoji"``: emoji drawn by Google (Noto, domain A) and by EmojiOne (domain B), 977
      training and 108 test pairs. Inception features barely tell the two colour styles apart,
      so FID/KID hardly separate a translation from the untranslated input here;
    - ``"emoji_mono"``: Noto's colour emoji (A) and the same code points drawn as black line
      art by the Symbola font (B), 1,026 training and 114 test pairs: a domain gap that
      FID/KID see (the benchmark of ``docs/results.md`` and the main job)."""
    if name not in BUNDLED_DATASETS:
        raise ValueError(f"bundled datasets are {', '.join(BUNDLED_DATASETS)}; got {name!r}")
    return Path(__file__).resolve().parent / "data" / name
