"""Whole training iterations (D step + G/F step with Adam, batch 1, QS-Attn global by default):
qs_attn's Rust trainer against the plain-PyTorch transcription of the same model and step that
the tests use (tests/python/reference_cut.py), same inputs, patch ids and initialisation seed,
measured side by side in one run. Each side runs in a fresh process: time per iteration = median of --iters
iterations after --warmup; memory = the process's peak resident set (CPU) or the CUDA
allocator's peak (GPU).

    python benches/train_step.py                       # CPU, 64x64 and 128x128 images
    python benches/train_step.py --device cuda --configs global:256:1 none:512:1 --fast

A config is mode:image size:batch ("none" = CUT, random sampling only). --fast adds a third
processes per config: ours with bf16 autocast for G and D, and with bf16 + channels-last (the
speed-up column takes the faster of the two), against ours in float32. On CUDA both sides run with cudnn.benchmark on (fixed shapes).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM")


def make_step(impl: str, mode: str, size: int, batch: int, device: str, num_patches: int = 256):
    """``step(i)``: training iteration ``i`` of one side ("plain": the transcription; "ours",
    "ours_bf16", "ours_fast": the Rust trainer in float32, bf16, bf16 + channels-last) on
    fixed random batches and patch ids, the same for every side."""
    import torch

    import reference_cut as rc

    dev = torch.device(device)
    if dev.type == "cuda":
        # the same global switch for both sides (ours runs its convolutions in this process's libtorch)
        torch.backends.cudnn.benchmark = True
    opt = rc.CUTOptions(num_patches=num_patches, qs_mode=mode, local_layout="reference")
    g = torch.Generator().manual_seed(1)
    batches = [(torch.rand(batch, 3, size, size, generator=g) * 2 - 1,
                torch.rand(batch, 3, size, size, generator=g) * 2 - 1) for _ in range(4)]
    # positions of the taps 0, 4, 8, 12, 16 (docs/algorithm.md §6): padded image, full, 1/2, 1/4, 1/4 size
    positions = [(size + 6) ** 2, size * size, (size // 2) ** 2, (size // 4) ** 2, (size // 4) ** 2]
    ids = [rc.draw_patch_ids(positions, opt, generator=torch.Generator().manual_seed(k)) for k in range(8)]
    # Both sides initialise their networks from seed 0 with the same distributions (docs/algorithm.md §3.1);
    # neither builds the other's, so each process holds one set of networks.
    if impl in ("ours", "ours_bf16", "ours_fast"):
        from qs_attn import _native

        fast = {"ours_fast": dict(precision="bf16", channels_last=True), "ours_bf16": dict(precision="bf16")}.get(impl, {})
        config = dict(dataroot="", mode=mode, local_layout="reference", num_patches=num_patches,
                      crop_size=size, load_size=size, device=device, seed=0, **fast)
        trainer = _native.Trainer(json.dumps(config))

        def step(i):
            # Ids stay on the CPU: the trainer validates injected ids there (no device sync)
            # and moves them itself.
            a, b = batches[i % 4]
            trainer.step(a.to(dev), b.to(dev), update=True, ids_x=ids[i % 8], ids_y=ids[(i + 1) % 8])
    else:
        G, D, F = rc.build_models(opt, image_size=(size, size), seed=0)
        G, D, F = G.to(dev), D.to(dev), F.to(dev)
        optimizers = rc.make_optimizers(G, D, F, opt)

        def step(i):
            a, b = batches[i % 4]
            rc.one_step(G, D, F, a.to(dev), b.to(dev), opt, [t if t is None else t.to(dev) for t in ids[i % 8]],
                        [t if t is None else t.to(dev) for t in ids[(i + 1) % 8]], optimizers=optimizers)
    return step


def worker(args) -> dict:
    import torch

    dev = torch.device(args.device)
    step = make_step(args.impl, args.mode, args.size, args.batch, args.device, args.num_patches)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for i in range(args.warmup):
        step(i)
    sync()
    if dev.type == "cuda":
        # steady state: cudnn.benchmark's trials of workspace-hungry algorithms in the first
        # iterations are not part of what training needs
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.iters):
        t0 = time.perf_counter()
        step(i)
        sync()
        times.append((time.perf_counter() - t0) * 1000)
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else _peak_rss_mib()
    return {"ms": statistics.median(times), "peak_mib": peak}


def _run(args, impl: str, mode: str, size: int, batch: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--impl", impl, "--mode", mode,
           "--size", str(size), "--device", args.device, "--batch", str(batch),
           "--num-patches", str(args.num_patches), "--iters", str(args.iters), "--warmup", str(args.warmup)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--modes", nargs="+", default=["global"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--configs", nargs="+", default=None, help="mode:size:batch (instead of sizes x modes)")
    p.add_argument("--fast", action="store_true", help="also ours with bf16 autocast + channels-last")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--num-patches", type=int, default=256)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", default="ours", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="global", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=64, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    import torch

    configs = ([(m, int(s), int(b)) for m, s, b in (c.split(":") for c in args.configs)] if args.configs
               else [(m, s, args.batch) for s in args.sizes for m in args.modes])
    impls = ("plain", "ours", "ours_bf16", "ours_fast") if args.fast else ("plain", "ours")
    print(f"# training iteration: torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else f", {os.cpu_count()} CPU threads"))
    print(f"# N = {args.num_patches}, default networks (ngf = ndf = 64, 9 blocks); "
          f"median of {args.iters} iterations after {args.warmup}\n")
    head = "| mode | image | batch | plain PyTorch ms | ours ms | ratio ours/plain | plain peak MiB | ours peak MiB |"
    if args.fast:
        head += " ours bf16 ms | ours bf16+CL ms | fp32/fast speed-up | ours bf16+CL peak MiB |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    results = []
    for mode, size, batch in configs:
        res = {impl: _run(args, impl, mode, size, batch) for impl in impls}
        results.append(dict(mode=mode, size=size, batch=batch, **res))
        cells = [mode, f"{size}²", str(batch)]
        if any("error" in r for r in res.values()):
            # every side's result, so one failing side loses none of the others' numbers
            shown = [r["error"][:200] if "error" in r else f"{r['ms']:.1f} ms / {r['peak_mib']:.0f} MiB" for r in res.values()]
            print("| " + " | ".join(cells + [f"{impl}: {v}" for impl, v in zip(res, shown)]) + " |", flush=True)
            continue
        plain, ours = res["plain"], res["ours"]
        cells += [f"{plain['ms']:.1f}", f"{ours['ms']:.1f}", f"{ours['ms'] / plain['ms']:.2f}",
                  f"{plain['peak_mib']:.0f}", f"{ours['peak_mib']:.0f}"]
        if args.fast:
            fast = res["ours_fast"]
            best = min(res["ours_bf16"]["ms"], fast["ms"])
            cells += [f"{res['ours_bf16']['ms']:.1f}", f"{fast['ms']:.1f}", f"{ours['ms'] / best:.2f}", f"{fast['peak_mib']:.0f}"]
        print("| " + " | ".join(cells) + " |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
