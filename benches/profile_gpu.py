"""Where the time of the two-layer global QS step goes on a GPU: per-phase wall times and the
torch profiler's top CUDA kernels / CPU ops, for ours at the default block size. Run on the
GPU machine (see gpu_check.sh); prints tables."""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_ops  # noqa: E402


def main() -> None:
    torch.manual_seed(0)
    maps = lambda: [(0.05 * torch.randn(1, 256, 64, 64, device="cuda")).requires_grad_() for _ in range(2)]  # noqa: E731
    srcs, tgts = maps(), maps()
    step = lambda: bench_ops._qs_step("ours", "global", srcs, tgts, 256)  # noqa: E731
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        step()
    torch.cuda.synchronize()
    print(f"block {os.environ.get('QS_ATTN_BLOCK_ELEMENTS', 'default')}: {(time.perf_counter() - t0) / 20 * 1e3:.2f} ms/step")
    if os.environ.get("PROFILE") != "1":
        return
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
