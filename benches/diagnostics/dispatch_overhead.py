"""Host-side cost of one training iteration, ours against the plain-PyTorch transcription,
measured side by side in one run on the CPU: the aten calls per iteration (all of them, and
those that do work: not views, ``aten::to`` wrappers or allocations; on a GPU each of these
is a kernel launch or a host-side scalar operation), and the time per iteration at a size
where the arithmetic is negligible (64², ngf = ndf = 4), which is then the dispatch overhead.
A third row counts the same for our opt-in fast path (bf16 autocast + channels-last): on a GPU
its calls doing work are its launches; its times on this CPU say nothing about a GPU's.

    python benches/diagnostics/dispatch_overhead.py
    QS_ATTN_BLOCK_ELEMENTS=4194304 python benches/diagnostics/dispatch_overhead.py   # CUDA's blocks
"""
import json
import os
import sys
import time

import torch
from torch.profiler import profile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "python"))

import reference_cut as rc  # noqa: E402
from qs_attn import _native  # noqa: E402

#: aten ops that launch no work of their own
BOOKKEEPING = {"aten::empty", "aten::as_strided", "aten::view", "aten::reshape", "aten::transpose", "aten::t",
               "aten::slice", "aten::narrow", "aten::expand", "aten::unsqueeze", "aten::squeeze",
               "aten::resolve_conj", "aten::to", "aten::detach", "aten::empty_like", "aten::empty_strided",
               "aten::_reshape_alias", "aten::select", "aten::flatten", "aten::permute", "aten::alias",
               "aten::lift_fresh", "aten::result_type", "aten::resize_", "aten::as_strided_", "aten::_unsafe_view",
               "aten::contiguous", "aten::item", "aten::_local_scalar_dense"}
SIZE = 64


def calls(step) -> tuple:
    with profile() as prof:
        step()
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    return sum(e.count for e in events), sum(e.count for e in events if e.key not in BOOKKEEPING)


def ms_per_iteration(step, iters: int = 20) -> float:
    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - t0) / iters * 1e3


def sides(width: int, netf_nc: int):
    opt = rc.CUTOptions(num_patches=256, qs_mode="global", local_layout="reference", netF_nc=netf_nc)
    a, b = torch.rand(1, 3, SIZE, SIZE) * 2 - 1, torch.rand(1, 3, SIZE, SIZE) * 2 - 1
    positions = [(SIZE + 6) ** 2, SIZE * SIZE, (SIZE // 2) ** 2, (SIZE // 4) ** 2, (SIZE // 4) ** 2]
    ids = rc.draw_patch_ids(positions, opt, generator=torch.Generator().manual_seed(0))
    config = dict(dataroot="", crop_size=SIZE, load_size=SIZE, ngf=width, ndf=width, netF_nc=netf_nc)
    trainer = _native.Trainer(json.dumps(config))
    fast = _native.Trainer(json.dumps(dict(config, precision="bf16", channels_last=True)))
    G, D, F = rc.build_models(opt, ngf=width, ndf=width, image_size=(SIZE, SIZE), seed=0)
    optimizers = rc.make_optimizers(G, D, F, opt)
    return {"ours": lambda: trainer.step(a, b, update=True, ids_x=ids, ids_y=ids),
            "ours_fast": lambda: fast.step(a, b, update=True, ids_x=ids, ids_y=ids),
            "plain": lambda: rc.one_step(G, D, F, a, b, opt, ids, ids, optimizers=optimizers)}


def main() -> None:
    torch.set_num_threads(1)
    print(f"# one training iteration at {SIZE}², QS-Attn global, N = 256, torch {torch.__version__}, CPU, 1 thread;"
          f" QS_ATTN_BLOCK_ELEMENTS={os.environ.get('QS_ATTN_BLOCK_ELEMENTS', 'default')}\n")
    print("| side | aten calls (default networks) | calls doing work | ms / iteration at ngf = 4 | aten calls at ngf = 4 |")
    print("|---|---|---|---|---|")
    full, tiny = sides(64, 256), sides(4, 8)
    for name in ("plain", "ours", "ours_fast"):
        for _ in range(2):
            full[name]()
        total, work = calls(full[name])
        ms = ms_per_iteration(tiny[name])
        print(f"| {name} | {total} | {work} | {ms:.1f} | {calls(tiny[name])[0]} |", flush=True)


if __name__ == "__main__":
    main()
