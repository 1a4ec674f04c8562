"""Forward+backward time and peak memory of the QS-Attn layers and PatchNCE: qs_attn's Rust ops
against the plain-PyTorch composition of docs/algorithm.md (the transcription the tests use,
tests/python/reference.py), measured side by side in one run.

One "QS step" = what a training iteration does per contrastive term on the two QS-Attn layers
(the generator's layer-12 and layer-16 taps, B x 256 x S x S each): select N = 256 queries on the
source map, route the source (keys) and the translation (queries), L2-normalise, PatchNCE, and
backpropagate to both maps.

Each measurement runs in a fresh subprocess. Peak memory: on CUDA the allocator's peak above the
inputs (torch.cuda.max_memory_allocated); on CPU the growth of the process's peak resident set
(VmHWM) over one step, above its size before it (after a first, untimed step), measured in a
process where glibc maps and unmaps every allocation of 64 KiB or more (MALLOC_MMAP_THRESHOLD_),
so that it follows the live tensors. Both include the gradients of the four input maps. Time: median of --repeats fwd+bwd after warm-up.

    python benches/bench_ops.py                      # CPU, S = 64 and 128, every mode
    python benches/bench_ops.py --device cuda --sizes 64 128
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

MODES = ("global", "local", "local_global", "cross")


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def _qs_step(impl: str, mode: str, srcs, tgts, num_patches: int):
    import torch

    if impl == "ours":
        import qs_attn

        loss = 0.0
        for src, tgt in zip(srcs, tgts):
            sel = qs_attn.qs_select(src, num_patches, mode, local_layout="reference")
            keys = qs_attn.qs_route(src, sel)
            queries = qs_attn.qs_cross_route(tgt, sel) if mode == "cross" else qs_attn.qs_route(tgt, sel)
            k = torch.nn.functional.normalize(keys.flatten(0, 1), dim=1, eps=0.0)
            q = torch.nn.functional.normalize(queries.flatten(0, 1), dim=1, eps=0.0)
            loss = loss + qs_attn.patch_nce_loss(q, k, num_images=src.shape[0])
    else:
        import reference

        loss = 0.0
        for src, tgt in zip(srcs, tgts):
            sel = reference.select(src, num_patches, mode, 7, "reference")
            keys = reference.route(src, sel)
            queries = reference.cross_route(tgt, sel) if mode == "cross" else reference.route(tgt, sel)
            k = reference.l2norm(keys.flatten(0, 1))
            q = reference.l2norm(queries.flatten(0, 1))
            loss = loss + reference.patch_nce(q, k, num_images=src.shape[0]).mean()
    loss.backward()
    return loss


def _nce_step(impl: str, q, k, num_images: int):
    if impl == "ours":
        import qs_attn

        loss = qs_attn.patch_nce_loss(q, k, num_images=num_images)
    else:
        import reference

        loss = reference.patch_nce(q, k, num_images=num_images).mean()
    loss.backward()
    return loss


def worker(args) -> dict:
    """Runs one measurement in this process and returns it."""
    import torch

    import qs_attn  # noqa: F401  (loads the extension before measuring)

    torch.manual_seed(0)
    dev = torch.device(args.device)
    if args.what == "qs":
        def maps(size):
            shape = (args.batch, 256, size, size)
            return [(0.05 * torch.randn(shape, device=dev)).requires_grad_() for _ in range(2)]

        srcs, tgts = maps(args.size), maps(args.size)
        # One untimed step first: one-time set-up (thread pools, BLAS buffers, code pages) is
        # not the op's memory; the peak is then taken over a second, steady-state step.
        _qs_step(args.impl, args.mode, srcs, tgts, args.num_patches)
        step = lambda: _qs_step(args.impl, args.mode, srcs, tgts, args.num_patches)  # noqa: E731
        params = srcs + tgts
    else:
        rows = args.batch * args.num_patches
        q = torch.nn.functional.normalize(torch.randn(rows, 256, device=dev), dim=1).requires_grad_()
        k = torch.nn.functional.normalize(torch.randn(rows, 256, device=dev), dim=1).requires_grad_()
        step = lambda: _nce_step(args.impl, q, k, args.batch)  # noqa: E731
        params = [q, k]
        step()

    def clear():
        for p in params:
            p.grad = None

    clear()

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        sync()
        peak_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set (VmHWM) to the current size
        base = _rss_kib("VmRSS")
        step()
        peak_mib = (_rss_kib("VmHWM") - base) / 1024
    clear()
    for _ in range(args.warmup):
        step()
        clear()
    sync()
    times = []
    for _ in range(args.repeats):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - t0) * 1000)
        clear()
    return {"ms": statistics.median(times), "peak_mib": peak_mib}


def _subprocess(args, env, overrides) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--device", args.device,
           "--warmup", str(args.warmup), "--num-patches", str(args.num_patches)]
    for key, value in overrides.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(args, **overrides) -> dict:
    """Time and peak memory of one configuration, each from a fresh process."""
    if args.device == "cuda":
        return _subprocess(args, os.environ, overrides)
    timed = _subprocess(args, os.environ, overrides)
    # For the memory figure, glibc serves every allocation of 64 KiB or more with its own
    # mapping and unmaps it on free, so the peak resident set follows the peak of live tensors
    # instead of the allocator's retained free lists (which would differ between the two sides).
    measured = _subprocess(args, dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536"), dict(overrides, repeats=1))
    if "error" in timed or "error" in measured:
        return timed if "error" in timed else measured
    return {"ms": timed["ms"], "peak_mib": measured["peak_mib"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="feature map side S (P = S*S)")
    p.add_argument("--modes", nargs="+", default=list(MODES))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--num-patches", type=int, default=256)
    p.add_argument("--repeats", type=int, default=None, help="default: 20 (CUDA), 10 (CPU, S=64), 3 (CPU, S>64)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", help="also write the results to this file")
    # internal: one measurement in this process
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--what", default="qs", help=argparse.SUPPRESS)
    p.add_argument("--impl", default="ours", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="global", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=64, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    import torch

    print(f"# qs_attn op benchmark: torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else f", {os.cpu_count()} CPU threads"))
    print(f"# B = {args.batch}, C = 256, N = {args.num_patches}; fwd+bwd of the two QS layers; "
          "median ms, peak extra MiB\n")
    header = "| what | S (P = S²) | composition ms | ours ms | time ratio ours/comp | composition MiB | ours MiB | memory ratio comp/ours |"
    print(header)
    print("|" + "---|" * 8)
    results = []

    def row(label, size, comp, ours):
        results.append({"what": label, "size": size, "composition": comp, "ours": ours})
        if "error" in comp or "error" in ours:
            print(f"| {label} | {size} | {comp.get('error', '')} | {ours.get('error', '')} | | | | |")
            return
        print(f"| {label} | {size} | {comp['ms']:.1f} | {ours['ms']:.1f} | {ours['ms'] / comp['ms']:.2f} | "
              f"{comp['peak_mib']:.1f} | {ours['peak_mib']:.1f} | {comp['peak_mib'] / max(ours['peak_mib'], 0.1):.1f} |",
              flush=True)

    for size in args.sizes:
        repeats = args.repeats or (20 if args.device == "cuda" else (10 if size <= 64 else 3))
        for mode in args.modes:
            comp = run(args, what="qs", impl="composition", mode=mode, size=size, batch=args.batch, repeats=repeats)
            ours = run(args, what="qs", impl="ours", mode=mode, size=size, batch=args.batch, repeats=repeats)
            row(f"QS {mode}" + (" (cross: ours vs plain torch)" if mode == "cross" else ""), size, comp, ours)
    for batch in (1, 4):
        repeats = args.repeats or 20
        comp = run(args, what="nce", impl="composition", batch=batch, repeats=repeats)
        ours = run(args, what="nce", impl="ours", batch=batch, repeats=repeats)
        row(f"PatchNCE B={batch}", "-", comp, ours)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
