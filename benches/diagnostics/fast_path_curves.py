"""Loss curves of a short training run in float32 and with the opt-in fast path (bf16 autocast
for G, D and F + channels-last), same seed, data order and patch ids, and of a second float32
run with another seed, whose distance from the first is the scale of run-to-run noise. All
three in one run, on the bundled dataset.

For each loss term and window of iterations it prints the window means; the fast path is
"within noise" in a window when its distance from the float32 run is at most the larger of
the other seed's distance and two standard errors of the float32 window mean.

    python benches/diagnostics/fast_path_curves.py --device cuda --size 256 --iters 400 --out /tmp/curves
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import qs_attn

TERMS = ("D", "G_GAN", "NCE", "NCE_Y")


def train(args, seed: int, fast: bool, workdir: Path) -> dict:
    options = dict(precision="bf16", channels_last=True) if fast else {}
    trainer = qs_attn.Trainer(name=f"seed{seed}{'-fast' if fast else ''}", checkpoints_dir=str(workdir), device=args.device,
                              crop_size=args.size, load_size=args.size * 286 // 256, max_iters=args.iters, seed=seed,
                              print_freq=10**9, display_freq=10**9, save_latest_freq=10**9, progress=False, **options)
    rows = []
    t0 = time.perf_counter()
    for _ in range(args.iters):
        rows.append(trainer.step())
    seconds = time.perf_counter() - t0
    return {"losses": {k: [r[k] for r in rows] for k in TERMS}, "seconds": seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--iters", type=int, default=400)
    p.add_argument("--window", type=int, default=100)
    p.add_argument("--out", default=None, help="folder for curves.json and curves.png")
    args = p.parse_args()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, seed, fast in (("fp32", 0, False), ("bf16+CL", 0, True), ("fp32 seed 1", 1, False)):
            runs[label] = train(args, seed, fast, Path(tmp))
    print(f"# {args.iters} iterations at {args.size}², QS-Attn global, bundled data, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))
    print("# wall time per run incl. data loading and reading the losses every step: "
          + ", ".join(f"{k} {v['seconds']:.1f} s" for k, v in runs.items()) + "\n")
    print("| term | iterations | fp32 | bf16+CL | fp32 seed 1 | abs(bf16 − fp32) | noise scale | within noise |")
    print("|---|---|---|---|---|---|---|---|")
    verdicts = []
    for term in TERMS:
        for start in range(0, args.iters - args.window + 1, args.window):
            window = {k: v["losses"][term][start:start + args.window] for k, v in runs.items()}
            means = {k: statistics.fmean(v) for k, v in window.items()}
            stderr = statistics.stdev(window["fp32"]) / len(window["fp32"]) ** 0.5
            noise = max(abs(means["fp32 seed 1"] - means["fp32"]), 2 * stderr)
            gap = abs(means["bf16+CL"] - means["fp32"])
            verdicts.append(gap <= noise)
            print(f"| {term} | {start + 1}–{start + args.window} | {means['fp32']:.4f} | {means['bf16+CL']:.4f} | "
                  f"{means['fp32 seed 1']:.4f} | {gap:.4f} | {noise:.4f} | {'yes' if gap <= noise else 'NO'} |")
    print(f"\nwithin noise in {sum(verdicts)} of {len(verdicts)} (term, window) cells")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "curves.json").write_text(json.dumps({k: v["losses"] for k, v in runs.items()}))
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return
        fig, axes = plt.subplots(1, len(TERMS), figsize=(4 * len(TERMS), 3))
        for ax, term in zip(axes, TERMS):
            for label, run in runs.items():
                values = run["losses"][term]
                smooth = [statistics.fmean(values[max(0, i - 19):i + 1]) for i in range(len(values))]
                ax.plot(smooth, label=label, lw=1)
            ax.set_title(term)
            ax.set_xlabel("iteration")
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(out / "curves.png", dpi=100)


if __name__ == "__main__":
    main()
