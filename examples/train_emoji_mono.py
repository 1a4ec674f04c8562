"""The main job: train QS-Attn (global) on the bundled colour -> monochrome emoji set (Noto
Color Emoji -> Symbola line art, ``qs_attn.bundled_dataset("emoji_mono")``) on a quarter-width
network for five epochs (two at constant lr, three at 0.75, 0.5, 0.25 of it, the reference's
linear decay: 5,130 iterations), with the reference's losses but the contrastive one weighted 2,
and a moving average of G's weights (the `nce2` recipe of docs/results.md's five-epoch study);
then score the last checkpoint's averaged generator on the test split (FID, KID, L1, SSIM) next
to the untranslated input (identity), and write a grid of test translations, a loss plot and
the checkpoint. (Held-out real line art scored the same way, the floor a perfect translator
could reach, is in docs/results.md: it needs all 1,026 training drawings through Inception.)

    python examples/train_emoji_mono.py [--epochs-scale 0.05] [--device cuda] [--no-eval]
"""
import argparse
import time
from pathlib import Path

import torch

import qs_attn
from qs_attn import _native

# the recipe of docs/results.md: the reference's losses and options on a quarter-width network
# (64x64 line art needs little width; at a fixed CPU budget more iterations pay more), with the
# reference's lr decay, the moving average of G, and the contrastive term weighted twice the
# adversarial one (the reference weights them equally): the only recipe of the five-epoch study
# whose seeds all end clearly below the untranslated input on KID
RECIPE = dict(mode="global", crop_size=64, load_size=72, ngf=16, ndf=16, num_patches=64, n_epochs=2, n_epochs_decay=3,
              ema_decay=0.999, lambda_NCE=2.0)


def test_grid(checkpoint: Path, data: Path, out_png: Path, count: int = 8) -> None:
    """Rows: source | translation | true Symbola drawing, for the first `count` test pairs."""
    G = qs_attn.load_generator(checkpoint)
    names = sorted(p.name for p in (data / "testA").glob("*.png"))[:count]
    rows = []
    with torch.no_grad():
        for name in names:
            a = _native.load_image(str(data / "testA" / name), 64)
            b = _native.load_image(str(data / "testB" / name), 64)
            cells = [a[0], G(a)[0], b[0]]
            rows.append(torch.cat([torch.nn.functional.pad(c, (2, 2, 2, 2), value=1.0) for c in cells], dim=2))
    _native.save_image(torch.cat(rows, dim=1), str(out_png))


def score_table(data: Path, checkpoint: Path, device: str) -> str:
    from qs_attn.baselines import identity_scores
    from qs_attn.evaluate import evaluate_generator

    cache = checkpoint.parent / "eval_cache"
    rows = [("last checkpoint", evaluate_generator(qs_attn.load_generator(checkpoint, device), data, device=device,
                                                    cache_dir=cache)),
            ("identity (untranslated)", identity_scores(data, device=device, cache_dir=cache))]
    lines = [f"{'':<24} {'FID':>7} {'KID x100':>9} {'L1':>7} {'SSIM':>7}"]
    for label, s in rows:
        lines.append(f"{label:<24} {s['fid']:7.2f} {100 * s['kid_mean']:9.3f} {s['l1']:7.4f} {s['ssim']:7.4f}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs-scale", type=float, default=1.0, help="scale the number of iterations (e.g. 0.05 for a smoke run)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--checkpoints-dir", default="runs")
    p.add_argument("--no-eval", action="store_true", help="skip the scores (they need the Inception weights)")
    args = p.parse_args()
    data = qs_attn.bundled_dataset("emoji_mono")
    iters_per_epoch = len(list((data / "trainA").glob("*.png")))
    total = max(2, int(iters_per_epoch * (RECIPE["n_epochs"] + RECIPE["n_epochs_decay"]) * args.epochs_scale))
    start = time.perf_counter()
    result = qs_attn.train(
        name="emoji_mono_qs_global", dataroot=str(data), checkpoints_dir=args.checkpoints_dir, device=args.device,
        max_iters=total,
        print_freq=min(50, total), display_freq=500, save_latest_freq=500, save_epoch_freq=100, **RECIPE,
        overwrite=True,  # the main job retrains from scratch on every run of scripts/main.sh
    )
    minutes = (time.perf_counter() - start) / 60
    grid = result.run_dir / "test_translations.png"
    test_grid(result.checkpoint, data, grid)
    plot = qs_attn.plot_losses(str(result.log), str(result.run_dir / "losses.png"))
    print(f"\ntrained {result.total_iters} iterations in {minutes:.1f} min on {args.device}")
    print(f"test translations (source | translation | true Symbola drawing): {grid}")
    print(f"loss plot:  {plot}")
    print(f"checkpoint: {result.checkpoint}")
    if not args.no_eval:
        print("\nscores on the test split (FID/KID against Symbola's test images, L1/SSIM to each true counterpart):")
        print(score_table(data, result.checkpoint, args.device))


if __name__ == "__main__":
    main()
