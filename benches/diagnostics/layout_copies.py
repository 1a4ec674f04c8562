"""Copies per training iteration: how many copy ops (layout changes, dtype casts,
concatenations) one iteration of qs_attn's Rust trainer dispatches, float32 NCHW ("ours")
against the opt-in fast path (bf16 autocast + channels-last, "ours_fast"), in one run.

Each of these ops is a kernel that moves a whole tensor through memory; on a GPU the fast
path's are what channels-last costs on top of cuDNN's NHWC convolutions. Counted with
torch.profiler, which sees the ops the Rust trainer dispatches as well (same config, inputs
and patch ids as train_step.py).

    python benches/diagnostics/layout_copies.py                       # 64², CPU
    python benches/diagnostics/layout_copies.py --device cuda --size 256
"""
from __future__ import annotations

import argparse
import collections
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))  # benches/, for train_step

from train_step import make_step  # noqa: E402

# copy_ counts every copy (a cast's and a contiguous()'s included); the others say where
# they come from
OPS = ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::cat")


def count(impl: str, mode: str, size: int, batch: int, device: str) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    step = make_step(impl, mode, size, batch, device)
    step(0)
    step(1)  # after the first iteration's one-off work (optimiser state, cuDNN trials)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        step(2)
    calls = collections.Counter(e.name for e in prof.events())
    return {op: calls[op] for op in OPS}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--mode", default="global")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    args = p.parse_args()
    import torch

    print(f"# copy ops in one training iteration: torch {torch.__version__}, device {args.device}, "
          f"{args.mode} {args.size}², batch {args.batch}\n")
    print("| side | " + " | ".join(f"`{op}`" for op in OPS) + " |")
    print("|---|" + "---|" * len(OPS))
    for impl in ("ours", "ours_fast"):
        calls = count(impl, args.mode, args.size, args.batch, args.device)
        print(f"| {impl} | " + " | ".join(str(calls[op]) for op in OPS) + " |", flush=True)


if __name__ == "__main__":
    main()
