"""Sanity checks of the bundled datasets (python/qs_attn/data/emoji and data/emoji_mono).

Stdlib only: PNG headers are parsed with struct/zlib, so neither Pillow nor the
compiled qs_attn extension is needed. Rebuild the data with
scripts/build_emoji_dataset.py and scripts/build_emoji_mono_dataset.py.
"""
import re
import struct
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent / "python" / "qs_attn" / "data"
# per set: what LICENSES.md must name, and the licence texts that must be shipped
DATASETS = {
    "emoji": (("fonts-noto-color-emoji", "Noto", "ruby-gemojione", "EmojiOne", "Apache", "CC BY-SA 4.0", "Ranks.com"),
              ("ruby-gemojione.copyright", "fonts-noto-color-emoji.copyright")),
    "emoji_mono": (("fonts-noto-color-emoji", "Noto", "fonts-symbola", "Symbola", "George Douros", "Apache",
                    "free for any use", "redistributed"),
                   ("fonts-symbola.copyright", "fonts-noto-color-emoji.copyright", "Apache-2.0.txt")),
}
SPLITS = ("trainA", "trainB", "testA", "testB")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_TOTAL_BYTES = 8 * 1000 * 1000
NAME_RE = re.compile(r"^[0-9a-f]{2,6}(-[0-9a-f]{2,6})*\.png$")


def names(dataset, split):
    return {p.name for p in (ROOT / dataset / split).iterdir()}


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


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("split", SPLITS)
def test_split_folder_exists_and_nonempty(dataset, split):
    d = ROOT / dataset / split
    assert d.is_dir(), f"missing {d}"
    assert names(dataset, split), f"{d} is empty"


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("split", SPLITS)
def test_images_are_64x64_rgb_png(dataset, split):
    for p in sorted((ROOT / dataset / split).iterdir()):
        assert NAME_RE.match(p.name), f"unexpected file {p}"
        width, height, depth, colour = png_header(p)
        assert (width, height) == (64, 64), f"{p}: {width}x{height}"
        assert depth == 8 and colour == 2, f"{p}: bit depth {depth}, colour type {colour} (want 8-bit RGB)"


@pytest.mark.parametrize("dataset", DATASETS)
def test_test_split_is_paired_and_large_enough(dataset):
    a, b = names(dataset, "testA"), names(dataset, "testB")
    assert a == b, f"testA/testB differ: {sorted(a ^ b)[:10]}"
    assert len(a) >= 100


@pytest.mark.parametrize("dataset", DATASETS)
def test_train_split_is_paired(dataset):
    a, b = names(dataset, "trainA"), names(dataset, "trainB")
    assert a == b, f"trainA/trainB differ: {sorted(a ^ b)[:10]}"
    assert len(a) >= len(names(dataset, "testA"))


@pytest.mark.parametrize("dataset", DATASETS)
def test_train_and_test_are_disjoint(dataset):
    train = names(dataset, "trainA") | names(dataset, "trainB")
    overlap = train & (names(dataset, "testA") | names(dataset, "testB"))
    assert not overlap, f"in both train and test: {sorted(overlap)[:10]}"


@pytest.mark.parametrize("dataset", DATASETS)
def test_total_size(dataset):
    total = sum(p.stat().st_size for p in (ROOT / dataset).rglob("*") if p.is_file())
    assert total <= MAX_TOTAL_BYTES, f"dataset is {total} bytes"


@pytest.mark.parametrize("dataset", DATASETS)
def test_licence_file_names_both_sources(dataset):
    needles, texts = DATASETS[dataset]
    lic = ROOT / dataset / "LICENSES.md"
    assert lic.is_file()
    text = lic.read_text(encoding="utf-8")
    for needle in needles:
        assert needle in text, f"LICENSES.md does not mention {needle!r}"
    for split in SPLITS:
        assert f"`{split}/` | {len(names(dataset, split))} |" in text, f"count of {split} out of date"
    for name in texts:
        assert (ROOT / dataset / "licenses" / name).is_file(), name


def test_mono_domain_b_is_monochrome_line_art():
    """Domain B of emoji_mono is grey (R = G = B everywhere) and domain A is not: the domain gap
    is colour vs line art. Decodes a few PNGs with zlib (filter types handled)."""
    def pixels(path):
        raw, width = b"", 64
        with open(path, "rb") as f:
            data = f.read()
        pos = 8
        while pos < len(data):
            length, tag = struct.unpack(">I4s", data[pos:pos + 8])
            if tag == b"IDAT":
                raw += data[pos + 8:pos + 8 + length]
            pos += 12 + length
        scan, stride, prev, rows = zlib.decompress(raw), 3 * width, bytearray(3 * width), []
        for y in range(64):
            ftype, line = scan[y * (stride + 1)], bytearray(scan[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
            for i in range(stride):
                a = line[i - 3] if i >= 3 else 0
                b, c = prev[i], prev[i - 3] if i >= 3 else 0
                pred = {0: 0, 1: a, 2: b, 3: (a + b) // 2}.get(ftype)
                if pred is None:  # Paeth
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
            rows.append(bytes(line))
            prev = line
        return b"".join(rows)

    for name in sorted(names("emoji_mono", "testB"))[:10]:
        px = pixels(ROOT / "emoji_mono" / "testB" / name)
        assert all(px[i] == px[i + 1] == px[i + 2] for i in range(0, len(px), 3)), name
    coloured = [name for name in sorted(names("emoji_mono", "testA"))[:10]
                if any(len({*pixels(ROOT / "emoji_mono" / "testA" / name)[i:i + 3]}) > 1 for i in range(0, 64 * 64 * 3, 3))]
    assert len(coloured) >= 8
