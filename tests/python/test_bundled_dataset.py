"""Sanity checks of the bundled emoji dataset (python/qs_attn/data/emoji).

Stdlib only: PNG headers are parsed with struct/zlib, so neither Pillow nor the
compiled qs_attn extension is needed. Rebuild the data with
scripts/build_emoji_dataset.py.
"""
import re
import struct
import zlib
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent.parent.parent / "python" / "qs_attn" / "data" / "emoji"
SPLITS = ("trainA", "trainB", "testA", "testB")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_TOTAL_BYTES = 8 * 1000 * 1000
NAME_RE = re.compile(r"^[0-9a-f]{2,6}(-[0-9a-f]{2,6})*\.png$")


def names(split):
    return {p.name for p in (DATA / split).iterdir()}


def png_header(path):
    """(width, height, bit_depth, colour_type) from the IHDR chunk; checks the CRC."""
    with open(path, "rb") as f:
        head = f.read(8 + 8 + 13 + 4)
    assert head[:8] == PNG_SIGNATURE, f"{path}: not a PNG"
    length, tag = struct.unpack(">I4s", head[8:16])
    assert tag == b"IHDR" and length == 13, f"{path}: first chunk is not IHDR"
    data = head[16:29]
    (crc,) = struct.unpack(">I", head[29:33])
    assert zlib.crc32(tag + data) & 0xFFFFFFFF == crc, f"{path}: bad IHDR CRC"
    width, height, depth, colour, _comp, _filt, interlace = struct.unpack(">IIBBBBB", data)
    return width, height, depth, colour


@pytest.mark.parametrize("split", SPLITS)
def test_split_folder_exists_and_nonempty(split):
    d = DATA / split
    assert d.is_dir(), f"missing {d}"
    assert names(split), f"{d} is empty"


@pytest.mark.parametrize("split", SPLITS)
def test_images_are_64x64_rgb_png(split):
    for p in sorted((DATA / split).iterdir()):
        assert NAME_RE.match(p.name), f"unexpected file {p}"
        width, height, depth, colour = png_header(p)
        assert (width, height) == (64, 64), f"{p}: {width}x{height}"
        assert depth == 8 and colour == 2, f"{p}: bit depth {depth}, colour type {colour} (want 8-bit RGB)"


def test_test_split_is_paired_and_large_enough():
    a, b = names("testA"), names("testB")
    assert a == b, f"testA/testB differ: {sorted(a ^ b)[:10]}"
    assert len(a) >= 100


def test_train_split_is_paired():
    a, b = names("trainA"), names("trainB")
    assert a == b, f"trainA/trainB differ: {sorted(a ^ b)[:10]}"
    assert len(a) >= len(names("testA"))


def test_train_and_test_are_disjoint():
    overlap = (names("trainA") | names("trainB")) & (names("testA") | names("testB"))
    assert not overlap, f"in both train and test: {sorted(overlap)[:10]}"


def test_total_size():
    total = sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file())
    assert total <= MAX_TOTAL_BYTES, f"dataset is {total} bytes"


def test_licence_file_names_both_sources():
    lic = DATA / "LICENSES.md"
    assert lic.is_file()
    text = lic.read_text(encoding="utf-8")
    for needle in ("fonts-noto-color-emoji", "Noto", "ruby-gemojione", "EmojiOne",
                   "Apache", "CC BY-SA 4.0", "Ranks.com"):
        assert needle in text, f"LICENSES.md does not mention {needle!r}"
    for split in SPLITS:
        assert f"`{split}/` | {len(names(split))} |" in text, f"count of {split} out of date"
    assert (DATA / "licenses" / "ruby-gemojione.copyright").is_file()
    assert (DATA / "licenses" / "fonts-noto-color-emoji.copyright").is_file()
