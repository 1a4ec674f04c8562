"""Activation memory of one training iteration, the same on every device: the most bytes that
autograd keeps for backward at any moment (tensors saved by the graph's nodes, each storage
counted once, parameters excluded), for qs_attn's Rust trainer and for the plain-PyTorch
transcription (tests/python/reference_cut.py), same config, inputs and patch ids, measured side
by side in one run.

Saved tensors are what a training step's memory is made of beyond the weights, gradients and
optimiser state; on a GPU the allocator's peak is this plus those fixed costs, transient
buffers of backward and cuDNN's workspace. Counted with torch.autograd.graph.saved_tensors_hooks,
which see every node, Rust ones included: each saved tensor is held by a small object whose
release (when its node is freed after backward) is counted.

    python benches/diagnostics/saved_tensors.py                       # 64², 128², 256² (batch 1)
    python benches/diagnostics/saved_tensors.py --configs global:256:4 none:512:1
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))  # benches/, for train_step

from train_step import make_step  # noqa: E402  (same sides, inputs and ids as the timing bench)


class SavedBytes:
    """Bytes of the storages autograd holds for backward: live now and at most so far."""

    def __init__(self):
        self.refs = {}
        self.sizes = {}
        self.live = 0
        self.peak = 0

    def pack(self, t):
        if t.is_leaf and t.requires_grad:  # a parameter: held by the network anyway
            return t
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in self.refs:
            self.refs[key] = 0
            self.sizes[key] = storage.nbytes()
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        self.refs[key] += 1
        return _Held(self, key, t)

    @staticmethod
    def unpack(held):
        return held.tensor if isinstance(held, _Held) else held

    def release(self, key):
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.live -= self.sizes.pop(key)


class _Held:
    __slots__ = ("owner", "key", "tensor")

    def __init__(self, owner, key, tensor):
        self.owner, self.key, self.tensor = owner, key, tensor

    def __del__(self):
        self.owner.release(self.key)


def measure(impl: str, mode: str, size: int, batch: int, device: str) -> float:
    """Peak MiB held for backward during one training iteration (after one to build state)."""
    import torch

    step = make_step(impl, mode, size, batch, device)
    step(0)
    counter = SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, counter.unpack):
        step(1)
    return counter.peak / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--configs", nargs="+", default=["global:64:1", "global:128:1", "global:256:1"],
                   help="mode:image size:batch")
    args = p.parse_args()
    import torch

    print(f"# peak bytes held for backward in one training iteration: torch {torch.__version__}, device {args.device}")
    print("# default networks (ngf = ndf = 64, 9 blocks), N = 256\n")
    print("| mode | image | batch | plain MiB | ours MiB | ours/plain |")
    print("|---|---|---|---|---|---|")
    for config in args.configs:
        mode, size, batch = config.split(":")
        plain, ours = (measure(impl, mode, int(size), int(batch), args.device) for impl in ("plain", "ours"))
        print(f"| {mode} | {size}² | {batch} | {plain:.0f} | {ours:.0f} | {ours / plain:.2f} |", flush=True)


if __name__ == "__main__":
    main()
