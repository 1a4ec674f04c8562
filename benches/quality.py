"""Quality comparison on the bundled emoji set at its native size (64×64): CUT (random patches,
mode "none") and QS-Attn "global", "local" and "cross", with the same seed, data, networks and
number of iterations, each evaluated during training (FID, KID, L1/SSIM against the paired
test split) with best and last checkpoints kept. Runs two trainings at a time, one thread each.

    python benches/quality.py --out runs/quality          # 2,931 iterations each: ~70 min on 2 CPU cores
    python benches/quality.py --report runs/quality       # the markdown table of a finished run
    python benches/quality.py --grid runs/quality docs/results/quality_grid.png

The table and the sample grids go into docs/results.md by hand (the numbers are this machine's).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MODES = ("none", "global", "local", "cross")


def train_one(args) -> None:
    import torch

    import qs_attn

    torch.set_num_threads(1)
    start = time.perf_counter()
    result = qs_attn.train(None, args.mode, args.mode, checkpoints_dir=args.out, seed=args.seed,
                           n_epochs=args.n_epochs, n_epochs_decay=args.n_epochs_decay, crop_size=64, load_size=64,
                           num_patches=256, num_threads=1, print_freq=100, display_freq=977, save_epoch_freq=100,
                           eval_freq=args.eval_freq, progress=False)
    summary = {"mode": args.mode, "iterations": result.total_iters, "seconds": time.perf_counter() - start,
               "best": result.best, "last": result.evaluations[-1], "evaluations": result.evaluations,
               "samples": str(result.samples[-1])}
    (Path(args.out) / args.mode / "summary.json").write_text(json.dumps(summary, indent=1))


def report(out: Path) -> str:
    rows = ["| method | iterations | train time | checkpoint | iteration | FID ↓ | KID ×100 ↓ | L1 ↓ | SSIM ↑ |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for mode in MODES:
        path = out / mode / "summary.json"
        if not path.exists():
            continue
        s = json.loads(path.read_text())
        label = "CUT (random)" if mode == "none" else f"QS-Attn {mode}"
        for which in ("best", "last"):
            e = s[which]
            rows.append(f"| {label} | {s['iterations']} | {s['seconds'] / 60:.0f} min | {which} | {e['iter']} | "
                        f"{e['fid']:.2f} | {100 * e['kid_mean']:.2f} ± {100 * e['kid_std']:.2f} | {e['l1']:.4f} | "
                        f"{e['ssim']:.4f} |")
    return "\n".join(rows)


def grid(out: Path, target: Path, n: int = 6) -> None:
    """Rows: the first ``n`` test emoji; columns: source | each method's last checkpoint |
    ground truth."""
    import torch

    import qs_attn
    from qs_attn import _native

    data = qs_attn.bundled_dataset()
    names = sorted(p.name for p in (data / "testA").iterdir())[:n]
    generators = [qs_attn.load_generator(out / mode / "latest.safetensors") for mode in MODES]
    rows = []
    with torch.no_grad():
        for name in names:
            a = _native.load_image(str(data / "testA" / name), 64)
            b = _native.load_image(str(data / "testB" / name), 64)
            cells = [a[0]] + [g(a)[0] for g in generators] + [b[0]]
            rows.append(torch.cat([torch.nn.functional.pad(c, (2, 2, 2, 2), value=1.0) for c in cells], dim=2))
    target.parent.mkdir(parents=True, exist_ok=True)
    _native.save_image(torch.cat(rows, dim=1), str(target))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/quality")
    p.add_argument("--mode", choices=MODES, help="(internal) train one mode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-epochs", type=int, default=2)
    p.add_argument("--n-epochs-decay", type=int, default=1)
    p.add_argument("--eval-freq", type=int, default=977)  # once per epoch of the bundled set
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--report", metavar="OUT", help="print the table of a finished comparison")
    p.add_argument("--grid", nargs=2, metavar=("OUT", "PNG"), help="translations of test emoji by each method")
    args = p.parse_args()
    if args.grid:
        grid(Path(args.grid[0]), Path(args.grid[1]))
        return
    if args.report:
        print(report(Path(args.report)))
        return
    if args.mode:
        train_one(args)
        return
    env = dict(os.environ, OMP_NUM_THREADS="1")
    pending, running = list(MODES), []
    while pending or running:
        while pending and len(running) < args.parallel:
            mode = pending.pop(0)
            cmd = [sys.executable, __file__, "--mode", mode, "--out", args.out, "--seed", str(args.seed),
                   "--n-epochs", str(args.n_epochs), "--n-epochs-decay", str(args.n_epochs_decay),
                   "--eval-freq", str(args.eval_freq)]
            running.append((mode, subprocess.Popen(cmd, env=env)))
        time.sleep(5)
        for mode, proc in list(running):
            if proc.poll() is not None:
                running.remove((mode, proc))
                if proc.returncode:
                    raise SystemExit(f"the {mode} run failed ({proc.returncode})")
    print(report(Path(args.out)))


if __name__ == "__main__":
    main()
