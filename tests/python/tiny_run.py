"""The tiny training setup the trainer tests share: a configuration that trains in
milliseconds per iteration, a four-image copy of the bundled dataset, and a snapshot of a
trainer's networks."""
import shutil
from pathlib import Path

import qs_attn

#: Tiny networks on 32x32 crops (8x8 = 64 positions on the QS layers, N = 16).
TINY = dict(ngf=8, ndf=8, num_patches=16, netF_nc=16, crop_size=32, load_size=36, n_blocks=2, print_freq=1)


def copy_tiny_dataset(root: Path) -> Path:
    """Four images per domain and split from the bundled set (epochs of four iterations at
    batch 1) under ``root/data``."""
    data = root / "data"
    bundled = qs_attn.bundled_dataset()
    for split in ("trainA", "trainB", "testA", "testB"):
        (data / split).mkdir(parents=True)
        for f in sorted((bundled / split).iterdir())[:4]:
            shutil.copy(f, data / split / f.name)
    return data


def network_snapshot(trainer: "qs_attn.Trainer") -> dict:
    """Copies of every tensor of G, D and F (by net, then state_dict key)."""
    return {net: {k: v.detach().clone() for k, v in trainer._native.state_dict(net).items()} for net in "GDF"}
