"""The main job: train QS-Attn (global) on the bundled emoji set (Noto -> EmojiOne) with a demo
configuration that finishes in about 10 minutes on 2 CPU cores, then write a grid of test
translations, a loss plot and the checkpoint, and print where they are.

    python examples/train_emoji.py [--epochs-scale 0.05] [--device cuda]
"""
import argparse
import time
from pathlib import Path

import torch

import qs_attn
from qs_attn import _native


def test_grid(checkpoint: Path, out_png: Path, count: int = 8) -> float:
    """Source | translation | ground-truth EmojiOne drawing for `count` held-out pairs; returns
    the mean L1 (in [0, 2] units) between translations and ground truth over the whole test split."""
    G = qs_attn.load_generator(checkpoint)
    root = qs_attn.bundled_dataset()
    names = sorted(p.name for p in (root / "testA").glob("*.png"))
    l1, rows = [], []
    with torch.no_grad():
        for i, name in enumerate(names):
            a = _native.load_image(str(root / "testA" / name), 64)
            b = _native.load_image(str(root / "testB" / name), 64)
            fake = G(a)
            l1.append(float((fake - b).abs().mean()))
            if i < count:
                rows.append(torch.cat([a[0], fake[0], b[0]], dim=2))
    _native.save_image(torch.cat(rows, dim=1), str(out_png))
    return sum(l1) / len(l1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs-scale", type=float, default=1.0, help="scale the number of epochs (e.g. 0.05 for a smoke run)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--checkpoints-dir", default="runs")
    args = p.parse_args()
    iters_per_epoch = len(list((qs_attn.bundled_dataset() / "trainA").glob("*.png")))
    total = max(2, int(4 * iters_per_epoch * args.epochs_scale))
    start = time.perf_counter()
    result = qs_attn.train(
        name="emoji_qs_global", mode="global", checkpoints_dir=args.checkpoints_dir, device=args.device,
        overwrite=True,  # the demo retrains from scratch on every run of scripts/main.sh
        # demo configuration: 64x64 emoji, a half-width network, N = 64 queries on the 16x16 QS maps
        crop_size=64, load_size=72, ngf=32, ndf=32, num_patches=64,
        n_epochs=3, n_epochs_decay=1, max_iters=total,
        print_freq=50, display_freq=500, save_latest_freq=1000, save_epoch_freq=1,
    )
    minutes = (time.perf_counter() - start) / 60
    grid = result.run_dir / "test_translations.png"
    l1 = test_grid(result.checkpoint, grid)
    plot = qs_attn.plot_losses(str(result.log), str(result.run_dir / "losses.png"))
    print(f"\ntrained {result.total_iters} iterations in {minutes:.1f} min on {args.device}")
    print(f"test translations (source | translation | EmojiOne ground truth): {grid}")
    print(f"mean L1 to the ground truth over the test split: {l1:.4f}")
    print(f"loss plot:  {plot}")
    print(f"checkpoint: {result.checkpoint}")
    print("final losses: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(result.final_losses.items())))


if __name__ == "__main__":
    main()
