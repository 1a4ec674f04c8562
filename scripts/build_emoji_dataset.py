#!/usr/bin/env python3
"""Build the bundled two-domain emoji dataset of ``qs_attn``.

Domain A: Noto Color Emoji glyphs (Debian ``fonts-noto-color-emoji``).
Domain B: the same emoji drawn by EmojiOne (PNG assets of Debian ``ruby-gemojione``).

Output (committed to the repository, not rebuilt in CI)::

    python/qs_attn/data/emoji/
        trainA/ trainB/ testA/ testB/   64x64 RGB PNGs, e.g. 1f600.png
        LICENSES.md                     sources, licences, attribution, counts
        licenses/                       verbatim licence / copyright texts

A pair is an A image and a B image with the same file name. Training is unpaired;
the pairing is only used to score translations against ground truth.

Matching rule: only emoji that are a *single* Unicode code point are used. The
EmojiOne PNGs are named by their code point sequence in upper-case hex joined by
'-', with U+FE0F (emoji variation selector) and U+200D (ZWJ) left out; every file
whose name has no '-' is a single-code-point emoji (U+FE0F, if the emoji is
usually written with it, is dropped on both sides). Domain A is that same code
point rendered alone with the Noto font's cmap glyph; code points that the font
does not map (empty rendering) are skipped. Multi-code-point emoji (skin-tone
variants, flags, keycaps, ZWJ families) are left out: most are near-duplicates
of a base emoji and would leak between the train and test splits.

Requirements: Debian/Ubuntu ``apt-get`` and ``dpkg`` (no root needed for
``apt-get download`` + ``dpkg -x`` once ``apt-get update`` has run), and Pillow
(``.venv/bin/pip install pillow``; only this script needs it, the ``qs_attn``
package does not).

Usage::

    .venv/bin/python scripts/build_emoji_dataset.py            # rebuild in place
    .venv/bin/python scripts/build_emoji_dataset.py --deb-dir D # reuse downloaded .debs

The build is deterministic: the same two .deb versions, Pillow version and
options give byte-identical output. Existing output folders are replaced.
"""
from __future__ import annotations

import argparse
import glob
import io
import random
import shutil
import subprocess
import sys
import struct
import tempfile
import zlib
from pathlib import Path

import PIL
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "python" / "qs_attn" / "data" / "emoji"

NOTO_PKG = "fonts-noto-color-emoji"
EMOJIONE_PKG = "ruby-gemojione"
NOTO_FONT_GLOB = "usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
EMOJIONE_PNG_GLOB = "usr/share/rubygems-integration/all/gems/gemojione-*/assets/png"
NOTO_STRIKE = 109  # the only bitmap strike size in the CBDT font
ALPHA_THRESHOLD = 16  # alpha <= this is ignored when finding the glyph's bounding box
# Hamming: an antialiasing filter with shorter support than Lanczos (less
# ringing), visually as sharp here; the PNGs come out ~20 % smaller.
RESAMPLE = Image.Resampling.HAMMING
SPLITS = ("trainA", "trainB", "testA", "testB")


def log(msg: str) -> None:
    print(msg, flush=True)


def download_debs(dest: Path, packages=(NOTO_PKG, EMOJIONE_PKG)) -> dict[str, Path]:
    """apt-get download the packages into dest (unless there already); return {pkg: .deb path}."""
    debs = {}
    for pkg in packages:
        found = sorted(dest.glob(f"{pkg}_*.deb"))
        if not found:
            log(f"apt-get download {pkg}")
            subprocess.run(["apt-get", "download", pkg], cwd=dest, check=True)
            found = sorted(dest.glob(f"{pkg}_*.deb"))
        if len(found) != 1:
            sys.exit(f"expected exactly one {pkg}_*.deb in {dest}, found {found}")
        debs[pkg] = found[0]
    return debs


def deb_version(deb: Path) -> str:
    out = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def extract(deb: Path, root: Path) -> None:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)


def one(pattern: str, root: Path) -> Path:
    hits = glob.glob(str(root / pattern))
    if len(hits) != 1:
        sys.exit(f"expected one match for {pattern} under {root}, found {hits}")
    return Path(hits[0])


def flatten_and_frame(rgba: Image.Image, size: int, margin: int) -> Image.Image | None:
    """Crop to the alpha bounding box, flatten onto white, pad to a square, and
    resize so that the longer side fills size - 2*margin pixels, centred."""
    rgba = rgba.convert("RGBA")
    mask = rgba.getchannel("A").point(lambda a: 255 if a > ALPHA_THRESHOLD else 0)
    bbox = mask.getbbox()
    if bbox is None:
        return None
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    flat = Image.alpha_composite(white, rgba).convert("RGB").crop(bbox)
    w, h = flat.size
    side = max(w, h)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(flat, ((side - w) // 2, (side - h) // 2))
    inner = size - 2 * margin
    square = square.resize((inner, inner), RESAMPLE, reducing_gap=None)
    out = Image.new("RGB", (size, size), (255, 255, 255))
    out.paste(square, (margin, margin))
    return out


def render_noto(font: ImageFont.FreeTypeFont, cp: int) -> Image.Image | None:
    ch = chr(cp)
    canvas = Image.new("RGBA", (2 * NOTO_STRIKE, 2 * NOTO_STRIKE), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((NOTO_STRIKE // 4, NOTO_STRIKE // 4), ch, font=font,
                                embedded_color=True)
    return canvas


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + tag + data
            + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))


def png_unfiltered(img: Image.Image) -> bytes:
    """Minimal 8-bit RGB PNG (IHDR, IDAT, IEND), every row with filter type 0
    (None), zlib level 9. For these flat-coloured images this is usually ~10 %
    smaller than Pillow's adaptive row filtering."""
    w, h = img.size
    raw = img.tobytes()
    stride = 3 * w
    scan = b"".join(b"\x00" + raw[y * stride:(y + 1) * stride] for y in range(h))
    return (b"\x89PNG\r\n\x1a\n"
            + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(scan, 9))
            + _png_chunk(b"IEND", b""))


def write_png(img: Image.Image, path: Path) -> None:
    """Write the smaller of Pillow's optimize=True PNG and png_unfiltered()."""
    assert img.mode == "RGB"
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    candidates = [buf.getvalue(), png_unfiltered(img)]
    data = min(candidates, key=len)
    with Image.open(io.BytesIO(data)) as check:  # lossless round trip
        assert check.mode == "RGB" and check.tobytes() == img.tobytes()
    path.write_bytes(data)


def write_splits(pairs: dict, out: Path, seed: int, test_frac: float, min_test: int) -> dict[str, list[str]]:
    """Shuffles the pair names (sorted by code point) with ``random.Random(seed)``, holds out
    max(min_test, round(test_frac * N)) as the test split, and writes trainA/trainB/testA/testB
    (replacing them) and an empty licenses/ under ``out``. Returns {"test": names, "train": names}."""
    names = sorted(pairs, key=lambda n: int(n, 16))
    random.Random(seed).shuffle(names)
    n_test = max(min_test, round(test_frac * len(names)))
    if n_test >= len(names):
        sys.exit(f"only {len(names)} pairs, cannot hold out {n_test}")
    split = {"test": sorted(names[:n_test]), "train": sorted(names[n_test:])}
    out.mkdir(parents=True, exist_ok=True)
    for sub in SPLITS + ("licenses",):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    for part, part_names in split.items():
        for dom, idx in (("A", 0), ("B", 1)):
            d = out / f"{part}{dom}"
            d.mkdir()
            for n in part_names:
                write_png(pairs[n][idx], d / f"{n}.png")
    (out / "licenses").mkdir()
    return split


def copy_licences(lic: Path, copyrights: dict[str, Path]) -> None:
    """The packages' copyright files as ``<pkg>.copyright`` and Debian's Apache-2.0 text."""
    for pkg, path in copyrights.items():
        shutil.copyfile(path, lic / f"{pkg}.copyright")
    apache = Path("/usr/share/common-licenses/Apache-2.0")
    if not apache.is_file():
        sys.exit(f"{apache} not found (Debian base-files); needed for the Apache-2.0 text")
    shutil.copyfile(apache, lic / "Apache-2.0.txt")


def write_licenses_md(out: Path, template: str, fields: dict) -> int:
    """Writes LICENSES.md, whose text states the folder's total size (its own included):
    rewritten until that number is stable. Returns the total."""
    lic_md = out / "LICENSES.md"
    total = 0
    for _ in range(5):
        lic_md.write_text(template.format(total_bytes=total, **fields))
        new_total = dir_size(out)
        if new_total == total:
            break
        total = new_total
    return total


def distro_name() -> str:
    info = {}
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            k, _, v = line.partition("=")
            info[k] = v.strip().strip('"')
    except OSError:
        return "unknown distribution"
    return info.get("PRETTY_NAME", "unknown distribution")


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


LICENSES_TEMPLATE = """\
# Bundled emoji dataset: sources, licences, attribution

Two renderings of the same emoji, for unpaired image-to-image translation
(domain A -> domain B) and for scoring translations against the known
ground truth.

| folder | images | content |
|---|---|---|
| `trainA/` | {n_train} | Noto Color Emoji (Google) |
| `trainB/` | {n_train} | EmojiOne (Ranks.com Inc.) |
| `testA/` | {n_test} | Noto Color Emoji (Google) |
| `testB/` | {n_test} | EmojiOne (Ranks.com Inc.) |

{n_pairs} pairs in total. A pair is `xxA/<name>.png` and `xxB/<name>.png` with
the same `<name>`: the Unicode code point of the emoji in lower-case hex
(e.g. `1f600.png` = U+1F600 GRINNING FACE). Train and test names are disjoint.
Training is meant to be unpaired; the pairing is only for evaluation.

## Sources

Debian packages from {distro}, fetched with `apt-get download` and unpacked
with `dpkg-deb -x`; rendered with Pillow {pillow}:

* **Domain A**: `{noto_pkg}` version `{noto_ver}`, file
  `/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf` (CBDT colour bitmap font,
  upstream https://github.com/googlefonts/noto-emoji). Each code point is drawn
  with Pillow `ImageFont.truetype(font, 109)` (109 px: the font's only bitmap
  strike) and `ImageDraw.text(..., embedded_color=True)`.
* **Domain B**: `{emojione_pkg}` version `{emojione_ver}` (Ruby gem
  `gemojione`, upstream https://github.com/jonathanwiesel/gemojione), PNG assets
  `/usr/share/rubygems-integration/all/gems/gemojione-3.3.0/assets/png/<CODEPOINTS>.png`
  (64x64 RGBA), EmojiOne artwork (https://www.emojione.com).

## Matching rule

Only single-code-point emoji are used. EmojiOne's PNGs are named by the code
point sequence in upper-case hex joined by `-`, with U+FE0F (variation
selector) and U+200D (zero-width joiner) omitted. Every EmojiOne PNG whose name
contains no `-` ({n_emojione_single} of {n_emojione_total} files) is one code point;
for emoji normally written with U+FE0F (e.g. U+2708 AIRPLANE) the selector is
dropped on both sides, and domain A is the Noto font's glyph for the bare code
point. Code points that the Noto font does not map (empty rendering) are
skipped: {n_noto_missing} ({noto_missing}). Multi-code-point emoji (skin-tone
variants, flags, keycaps, ZWJ sequences) are excluded; most are near-duplicates
of a base emoji and would leak between train and test.

## Processing (identical for both domains)

1. Source RGBA image (Noto: the glyph drawn on a transparent canvas; EmojiOne:
   the PNG as is).
2. Bounding box of the pixels with alpha > {alpha_threshold}.
3. Alpha-composited onto white, converted to RGB, cropped to that box.
4. Padded with white to a square (glyph centred), resized with Pillow's
   antialiasing Hamming filter to {inner}x{inner}, and pasted centred on a white
   {size}x{size} canvas ({margin} px margin). (Domain A is downscaled about 2x
   from the 109 px strike; the 64x64 EmojiOne PNGs are resized about 1:1.)
5. Saved as 8-bit RGB PNG (colour type 2, no ancillary chunks): the smaller of
   Pillow's `optimize=True` output and a stdlib zlib-level-9 encoding with
   filter type 0 on every row.

Split: the {n_pairs} matched code points, sorted, shuffled with
`random.Random({seed})`; the first {n_test} (max(100, round({test_frac} * N))) are
the test split, the rest train.

Total size of this folder: {total_bytes} bytes.

## Rebuild

```
apt-get update
.venv/bin/pip install pillow
.venv/bin/python scripts/build_emoji_dataset.py
```

(`--deb-dir DIR` reuses downloaded `.deb` files; the output is replaced.)

## Licences

### Domain A (`trainA/`, `testA/`): Noto Color Emoji

From `/usr/share/doc/fonts-noto-color-emoji/copyright` (copied verbatim to
`licenses/fonts-noto-color-emoji.copyright`):

* `Files: *` (the noto-emoji sources, including its emoji artwork):
  Copyright 2013-2017 Google Inc., Arjen Nienhuis; **Apache License 2.0**
  (full text: `licenses/Apache-2.0.txt`, copied from Debian's
  `/usr/share/common-licenses/Apache-2.0`, which the copyright file refers to;
  https://www.apache.org/licenses/LICENSE-2.0).
* `Files: fonts/*` (the font file itself): same copyright; **SIL Open Font
  License 1.1** (full text in the copyright file). The OFL's conditions apply to
  the font software; "the requirement for fonts to remain under this license
  does not apply to any document created using the fonts".

The domain-A images are renderings of the font's glyphs, i.e. of Google's
Noto Emoji artwork, whose image resources upstream publishes under Apache-2.0;
the `trainA/` and `testA/` images are offered under the **Apache License 2.0**,
Copyright 2013-2017 Google Inc. Modifications: rasterised from the font,
cropped, rescaled to {size}x{size}, flattened onto white.

### Domain B (`trainB/`, `testB/`): EmojiOne

From `/usr/share/doc/ruby-gemojione/copyright` (copied verbatim to
`licenses/ruby-gemojione.copyright`; it contains the full licence text):

* `Files: assets/*`: Copyright 2014, Ranks.com Inc.; **Creative Commons
  Attribution-ShareAlike 4.0 International (CC BY-SA 4.0)**,
  https://creativecommons.org/licenses/by-sa/4.0/.
* (The gem's code is Expat/MIT, Copyright 2013 Jonathan Wiesel; none of it is
  included here.)

**Attribution.** The domain-B images are emoji artwork by EmojiOne
(https://www.emojione.com), Copyright 2014 Ranks.com Inc., taken from the
`gemojione` gem as packaged in Debian (`{emojione_pkg}` {emojione_ver}) and
licensed under CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/).
They were modified: cropped to the glyph, flattened onto a white background,
rescaled to {size}x{size} pixels and re-encoded as RGB PNG. As Adapted Material
under a ShareAlike licence, the `trainB/` and `testB/` images are likewise
licensed under **CC BY-SA 4.0**. The artwork is provided as-is, without
warranties (CC BY-SA 4.0, Section 5).
"""


def parse_arguments(description: str, default_out: Path) -> argparse.Namespace:
    """The command line of both dataset builders."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", type=Path, default=default_out)
    ap.add_argument("--deb-dir", type=Path, default=None,
                    help="directory holding (or to receive) the two .deb files; "
                         "default: a temporary directory")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--margin", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-frac", type=float, default=0.1)
    ap.add_argument("--min-test", type=int, default=100)
    return ap.parse_args()


def main() -> None:
    args = parse_arguments(__doc__.split("\n\n")[0], DEFAULT_OUT)

    with tempfile.TemporaryDirectory(prefix="emoji_dataset_") as tmp:
        tmp = Path(tmp)
        deb_dir = args.deb_dir or (tmp / "debs")
        deb_dir.mkdir(parents=True, exist_ok=True)
        debs = download_debs(deb_dir)
        versions = {pkg: deb_version(p) for pkg, p in debs.items()}
        root = tmp / "root"
        for deb in debs.values():
            extract(deb, root)
        font_path = one(NOTO_FONT_GLOB, root)
        png_dir = one(EMOJIONE_PNG_GLOB, root)
        noto_copyright = root / "usr/share/doc" / NOTO_PKG / "copyright"
        emojione_copyright = root / "usr/share/doc" / EMOJIONE_PKG / "copyright"

        font = ImageFont.truetype(str(font_path), NOTO_STRIKE)
        all_pngs = sorted(png_dir.glob("*.png"))
        singles = sorted(p for p in all_pngs if "-" not in p.stem)
        log(f"EmojiOne PNGs: {len(all_pngs)}, single code point: {len(singles)}")

        pairs: dict[str, tuple[Image.Image, Image.Image]] = {}
        noto_missing, emojione_empty = [], []
        for p in singles:
            cp = int(p.stem, 16)
            name = f"{cp:x}"
            a = flatten_and_frame(render_noto(font, cp), args.size, args.margin)
            if a is None:
                noto_missing.append(f"U+{cp:04X}")
                continue
            with Image.open(p) as src:
                b = flatten_and_frame(src, args.size, args.margin)
            if b is None:
                emojione_empty.append(f"U+{cp:04X}")
                continue
            pairs[name] = (a, b)
        if emojione_empty:
            log(f"EmojiOne PNGs with no visible pixels (skipped): {emojione_empty}")
        log(f"not in the Noto font (skipped): {len(noto_missing)} {noto_missing}")

        out = args.out
        split = write_splits(pairs, out, args.seed, args.test_frac, args.min_test)
        names, n_test = split["test"] + split["train"], len(split["test"])
        copy_licences(out / "licenses", {NOTO_PKG: noto_copyright, EMOJIONE_PKG: emojione_copyright})

        fields = dict(
            distro=distro_name(), pillow=PIL.__version__,
            n_train=len(split["train"]), n_test=n_test, n_pairs=len(names),
            noto_pkg=NOTO_PKG, noto_ver=versions[NOTO_PKG],
            emojione_pkg=EMOJIONE_PKG, emojione_ver=versions[EMOJIONE_PKG],
            n_emojione_single=len(singles), n_emojione_total=len(all_pngs),
            n_noto_missing=len(noto_missing), noto_missing=", ".join(noto_missing) or "none",
            alpha_threshold=ALPHA_THRESHOLD, inner=args.size - 2 * args.margin,
            size=args.size, margin=args.margin, seed=args.seed, test_frac=args.test_frac,
        )
        total = write_licenses_md(out, LICENSES_TEMPLATE, fields)

    counts = {s: len(list((out / s).glob("*.png"))) for s in SPLITS}
    log(f"wrote {out}")
    log(f"  {NOTO_PKG} {versions[NOTO_PKG]}, {EMOJIONE_PKG} {versions[EMOJIONE_PKG]}")
    log(f"  pairs: {len(names)} (train {len(split['train'])}, test {n_test})")
    log("  " + ", ".join(f"{s}={c}" for s, c in counts.items()))
    log(f"  total size: {total} bytes ({total / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
