"""Data-parallel scaling on this machine: the same global batch trained by one process (batch
2B, all threads) and by two gloo ranks launched with torchrun (batch B each, threads split),
real training iterations on the bundled data (loading, D + G + F steps, gradient averaging),
measured in one run. Iterations per second = (timed iterations) / (time between the callbacks
of the first and the last timed iteration), after --warmup iterations.

    python benches/distributed.py                 # CPU: 1 process vs 2 ranks
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def worker(args) -> None:
    import torch

    import qs_attn

    torch.set_num_threads(args.threads)
    stamps = []
    qs_attn.train(None, "bench", args.mode, checkpoints_dir=args.out, max_iters=args.warmup + args.iters,
                  batch_size=args.batch, crop_size=args.size, load_size=args.size, ngf=args.ngf, ndf=args.ngf,
                  num_patches=args.num_patches, num_threads=1, progress=False, save_latest_freq=10**9,
                  display_freq=10**9, print_freq=10**9, callback=lambda info: stamps.append(time.perf_counter()))
    if int(os.environ.get("RANK", "0")) == 0:
        timed = stamps[args.warmup:]
        with open(os.path.join(args.out, "result.json"), "w") as f:
            json.dump({"it_per_s": (len(timed) - 1) / (timed[-1] - timed[0])}, f)


def run(args, world: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        common = [__file__, "--role", "worker", "--out", out, "--batch", str(args.global_batch // world),
                  "--threads", str(max(1, args.threads // world)), "--iters", str(args.iters),
                  "--warmup", str(args.warmup), "--size", str(args.size), "--ngf", str(args.ngf),
                  "--num-patches", str(args.num_patches), "--mode", args.mode]
        launcher = [sys.executable] if world == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                        f"--nproc_per_node={world}", "--master_port=29533"]
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, args.threads // world)))
        subprocess.run(launcher + common, check=True, env=env, stdout=subprocess.DEVNULL)
        with open(os.path.join(out, "result.json")) as f:
            return json.load(f)["it_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", default="launcher", choices=["launcher", "worker"])
    p.add_argument("--out")
    p.add_argument("--batch", type=int)
    p.add_argument("--global-batch", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--num-patches", type=int, default=256)
    p.add_argument("--mode", default="global")
    args = p.parse_args()
    if args.role == "worker":
        worker(args)
        return
    rows = [(world, run(args, world)) for world in (1, 2)]
    print(f"global batch {args.global_batch}, {args.size}x{args.size}, ngf {args.ngf}, N {args.num_patches}, "
          f"mode {args.mode}, {args.threads} CPU threads in all")
    print("| processes | batch per process | threads per process | iterations / s | images / s |")
    print("| --- | --- | --- | --- | --- |")
    for world, rate in rows:
        print(f"| {world} | {args.global_batch // world} | {max(1, args.threads // world)} | {rate:.2f} | "
              f"{rate * args.global_batch:.2f} |")
    print(f"speed-up of {rows[1][0]} ranks: {rows[1][1] / rows[0][1]:.2f}x")


if __name__ == "__main__":
    main()
