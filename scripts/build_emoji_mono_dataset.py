#!/usr/bin/env python3
"""Build the bundled colour -> monochrome emoji dataset of ``qs_attn`` (``data/emoji_mono``).

Domain A: Noto Color Emoji glyphs (Debian ``fonts-noto-color-emoji``), full colour.
Domain B: the same code points in Symbola (Debian ``fonts-symbola``), a monochrome font whose
emoji are black line drawings.

Unlike the Noto -> EmojiOne set (``build_emoji_dataset.py``), whose two colour styles Inception
features cannot tell apart at 100-odd test images, this domain gap is large for FID/KID: the
untranslated colour images score far worse against the monochrome test split than held-out
monochrome images do (measured by ``benches/quality.py --baselines``).

Output (committed to the repository, not rebuilt in CI)::

    python/qs_attn/data/emoji_mono/
        trainA/ trainB/ testA/ testB/   64x64 RGB PNGs named by code point, e.g. 1f600.png
        LICENSES.md                     sources, licences, counts
        licenses/                       verbatim licence / copyright texts

Matching rule: every code point that both fonts map, from U+00A9 on, except the emoji
components that are not emoji on their own (regional indicators, skin-tone modifiers, joiners,
selectors, tags); a code point whose glyph is empty in either font is skipped.

Requirements as for ``build_emoji_dataset.py`` (``apt-get download`` + ``dpkg-deb -x`` after
``apt-get update``; Pillow and fontTools in the venv). Usage::

    .venv/bin/python scripts/build_emoji_mono_dataset.py [--deb-dir D]

Deterministic: the same two .deb versions, Pillow version and options give byte-identical
output. Existing output folders are replaced.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import PIL
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_emoji_dataset import (  # noqa: E402  (the shared rendering, splitting and writing)
    ALPHA_THRESHOLD, NOTO_FONT_GLOB, NOTO_PKG, NOTO_STRIKE, copy_licences, deb_version, distro_name,
    download_debs, extract, flatten_and_frame, log, one, parse_arguments, render_noto, write_licenses_md,
    write_splits,
)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "python" / "qs_attn" / "data" / "emoji_mono"
SYMBOLA_PKG = "fonts-symbola"
SYMBOLA_FONT_GLOB = "usr/share/fonts/truetype/ancient-scripts/Symbola*.ttf"
SYMBOLA_PX = 128  # rendering size; the glyph is then framed and downscaled like domain A
FIRST_CODE_POINT = 0xA9  # below: ASCII digits, '#', '*' and controls, not pictures
# Emoji components without a picture of their own.
EXCLUDED_RANGES = (
    (0x1F1E6, 0x1F1FF),  # regional indicators (flags are pairs of them)
    (0x1F3FB, 0x1F3FF),  # skin-tone modifiers
    (0x200D, 0x200D), (0x20E3, 0x20E3), (0xFE00, 0xFE0F), (0xE0000, 0xE007F),
)


def candidate_code_points(noto: Path, symbola: Path) -> list[int]:
    both = set(TTFont(str(noto)).getBestCmap()) & set(TTFont(str(symbola)).getBestCmap())
    return sorted(cp for cp in both if cp >= FIRST_CODE_POINT
                  and not any(lo <= cp <= hi for lo, hi in EXCLUDED_RANGES))


def render_mono(font: ImageFont.FreeTypeFont, cp: int) -> Image.Image:
    """The glyph in black on a transparent canvas (its coverage is the alpha)."""
    canvas = Image.new("RGBA", (3 * SYMBOLA_PX, 3 * SYMBOLA_PX), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((SYMBOLA_PX, SYMBOLA_PX), chr(cp), font=font, fill=(0, 0, 0, 255))
    return canvas


LICENSES_TEMPLATE = """\
# Bundled colour -> monochrome emoji dataset: sources, licences

The same emoji drawn in colour (domain A) and as monochrome line drawings (domain B),
for unpaired image-to-image translation with a domain gap that FID/KID measure, and for
scoring translations against the known counterpart.

| folder | images | content |
|---|---|---|
| `trainA/` | {n_train} | Noto Color Emoji (Google) |
| `trainB/` | {n_train} | Symbola (George Douros) |
| `testA/` | {n_test} | Noto Color Emoji (Google) |
| `testB/` | {n_test} | Symbola (George Douros) |

{n_pairs} pairs in total. A pair is `xxA/<name>.png` and `xxB/<name>.png` with the same
`<name>`: the Unicode code point in lower-case hex (e.g. `1f600.png` = U+1F600 GRINNING
FACE). Train and test names are disjoint. Training is meant to be unpaired; the pairing is
only for evaluation.

## Sources

Debian packages from {distro}, fetched with `apt-get download` and unpacked with
`dpkg-deb -x`; rendered with Pillow {pillow}:

* **Domain A**: `{noto_pkg}` version `{noto_ver}`, file
  `/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf` (upstream
  https://github.com/googlefonts/noto-emoji), each code point drawn with
  `ImageFont.truetype(font, 109)` and `ImageDraw.text(..., embedded_color=True)`.
* **Domain B**: `{symbola_pkg}` version `{symbola_ver}`, file
  `/usr/share/fonts/truetype/ancient-scripts/{symbola_file}` (Symbola by George Douros),
  each code point drawn in black with `ImageFont.truetype(font, {symbola_px})`.

## Matching rule

Every code point that both fonts map (cmap), from U+00A9 on, except emoji components
without a picture of their own (regional indicators U+1F1E6-1F1FF, skin-tone modifiers
U+1F3FB-1F3FF, U+200D, U+20E3, variation selectors U+FE00-FE0F, tags U+E0000-E007F):
{n_candidates} code points; {n_empty} of them had an empty glyph in one font and were skipped.

## Processing (identical for both domains)

1. The glyph on a transparent canvas (RGBA).
2. Bounding box of the pixels with alpha > {alpha_threshold}.
3. Alpha-composited onto white, converted to RGB, cropped to that box.
4. Padded with white to a square (glyph centred), resized with Pillow's Hamming filter to
   {inner}x{inner}, pasted centred on a white {size}x{size} canvas ({margin} px margin).
5. Saved as 8-bit RGB PNG (the smaller of Pillow's `optimize=True` output and a zlib
   level-9 encoding with filter type 0 on every row).

Split: the {n_pairs} code points, sorted, shuffled with `random.Random({seed})`; the first
{n_test} (max({min_test}, round({test_frac} * N))) are the test split, the rest train.

Total size of this folder: {total_bytes} bytes.

## Rebuild

```
apt-get update
.venv/bin/python scripts/build_emoji_mono_dataset.py
```

## Licences

### Domain A (`trainA/`, `testA/`): Noto Color Emoji

From `/usr/share/doc/fonts-noto-color-emoji/copyright` (verbatim in
`licenses/fonts-noto-color-emoji.copyright`): the noto-emoji sources, including the emoji
artwork, are Copyright 2013-2017 Google Inc., Arjen Nienhuis, **Apache License 2.0**
(`licenses/Apache-2.0.txt`, from Debian's `/usr/share/common-licenses/Apache-2.0`); the font
file is under the SIL Open Font License 1.1, which does not extend to documents created with
the font. The `trainA/` and `testA/` images are renderings of Google's Noto Emoji artwork and
are offered under the **Apache License 2.0**, Copyright 2013-2017 Google Inc. Modifications:
rasterised from the font, cropped, rescaled to {size}x{size}, flattened onto white.

### Domain B (`trainB/`, `testB/`): Symbola

From `/usr/share/doc/fonts-symbola/copyright` (verbatim in `licenses/fonts-symbola.copyright`):
Copyright (C) 2007-2015 George Douros. "Fonts are free for any use; they may be opened,
edited, modified, regenerated, packaged and redistributed." The `trainB/` and `testB/` images
are renderings of the font's glyphs (rasterised, cropped, rescaled to {size}x{size}, on white),
redistributed under those terms, with credit to George Douros.
"""


def main() -> None:
    args = parse_arguments(__doc__.split("\n\n")[0], DEFAULT_OUT)

    with tempfile.TemporaryDirectory(prefix="emoji_mono_dataset_") as tmp:
        tmp = Path(tmp)
        deb_dir = args.deb_dir or (tmp / "debs")
        deb_dir.mkdir(parents=True, exist_ok=True)
        debs = download_debs(deb_dir, (NOTO_PKG, SYMBOLA_PKG))
        versions = {pkg: deb_version(p) for pkg, p in debs.items()}
        root = tmp / "root"
        for deb in debs.values():
            extract(deb, root)
        noto_path, symbola_path = one(NOTO_FONT_GLOB, root), one(SYMBOLA_FONT_GLOB, root)
        noto = ImageFont.truetype(str(noto_path), NOTO_STRIKE)
        symbola = ImageFont.truetype(str(symbola_path), SYMBOLA_PX)

        candidates = candidate_code_points(noto_path, symbola_path)
        pairs: dict[str, tuple[Image.Image, Image.Image]] = {}
        empty = []
        for cp in candidates:
            a = flatten_and_frame(render_noto(noto, cp), args.size, args.margin)
            b = flatten_and_frame(render_mono(symbola, cp), args.size, args.margin)
            if a is None or b is None:
                empty.append(f"U+{cp:04X}")
                continue
            pairs[f"{cp:x}"] = (a, b)
        log(f"candidates: {len(candidates)}, empty in one font (skipped): {len(empty)} {empty}")

        out = args.out
        split = write_splits(pairs, out, args.seed, args.test_frac, args.min_test)
        names, n_test = split["test"] + split["train"], len(split["test"])
        copy_licences(out / "licenses", {pkg: root / "usr/share/doc" / pkg / "copyright" for pkg in (NOTO_PKG, SYMBOLA_PKG)})

        fields = dict(
            distro=distro_name(), pillow=PIL.__version__, n_train=len(split["train"]), n_test=n_test,
            n_pairs=len(names), noto_pkg=NOTO_PKG, noto_ver=versions[NOTO_PKG], symbola_pkg=SYMBOLA_PKG,
            symbola_ver=versions[SYMBOLA_PKG], symbola_file=symbola_path.name, symbola_px=SYMBOLA_PX,
            n_candidates=len(candidates), n_empty=len(empty), alpha_threshold=ALPHA_THRESHOLD,
            inner=args.size - 2 * args.margin, size=args.size, margin=args.margin, seed=args.seed,
            test_frac=args.test_frac, min_test=args.min_test,
        )
        total = write_licenses_md(out, LICENSES_TEMPLATE, fields)

    log(f"wrote {out}: {len(names)} pairs (train {len(split['train'])}, test {n_test}), "
        f"{total} bytes ({total / 2**20:.2f} MiB); "
        + ", ".join(f"{pkg} {v}" for pkg, v in versions.items()))


if __name__ == "__main__":
    main()
