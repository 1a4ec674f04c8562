"""Where the GPU time goes (run on the GPU machine, see gpu_check.sh); prints tables.

    python benches/gpu/profile_gpu.py ops     # the two-layer global QS step at 64²: ours at
                                              # several block sizes (time, peak memory) vs the
                                              # composition, kernels per step, the profiler's top
                                              # kernels, and each step replayed as one CUDA graph
    python benches/gpu/profile_gpu.py train [mode:size:batch]
                                              # one training iteration (default global:256:1) as
                                              # train_step.py runs it (ours fp32, ours bf16 +
                                              # channels-last, the transcription): wall time
                                              # against the summed kernel time, top kernels

The op block size is read once per process (QS_ATTN_BLOCK_ELEMENTS), so each block size runs
in its own subprocess.
"""
import json
import os
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))  # benches/: bench_ops, train_step
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "python"))


def _time_ms(step, iters=20, warmup=5) -> float:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters * 1e3


def _profile(step, label: str, rows: int = 15) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    launches = sum(e.count for e in kernels)
    gpu_ms = sum(e.self_device_time_total for e in kernels) / 1e3
    print(f"\n## {label}: {launches} kernels, {gpu_ms:.2f} ms summed kernel time per step")
    print(events.table(sort_by="self_device_time_total", row_limit=rows, max_name_column_width=60))


def ops_worker(impl: str) -> dict:
    import bench_ops

    torch.manual_seed(0)
    maps = lambda: [(0.05 * torch.randn(1, 256, 64, 64, device="cuda")).requires_grad_() for _ in range(2)]  # noqa: E731
    srcs, tgts = maps(), maps()
    step = lambda: bench_ops._qs_step(impl, "global", srcs, tgts, 256)  # noqa: E731
    ms = _time_ms(step)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    if os.environ.get("PROFILE") == "1":
        _profile(step, f"QS step, {impl}, block {os.environ.get('QS_ATTN_BLOCK_ELEMENTS', 'default')}")
    try:
        graph_ms = _time_ms(_graphed(step, srcs + tgts))
    except RuntimeError as e:  # a step that synchronises with the host cannot be captured
        graph_ms = f"not capturable: {str(e).splitlines()[0]}"
    return {"ms": ms, "peak_mib": peak, "graph_replay_ms": graph_ms}


def _graphed(step, leaves):
    """``step`` (fwd + bwd into the leaves' ``.grad``) captured once in a CUDA graph: the
    launch cost of its kernels is paid at capture, a replay launches them all at once."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    for leaf in leaves:
        leaf.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def ops() -> None:
    print("# two-layer global QS step at 64² (B = 1, C = 256, N = 256), fwd + bwd, mean of 20 after 5")
    runs = [("composition", None, True), ("ours", None, True)] + [("ours", b, False) for b in (1 << 20, 1 << 22, 1 << 24)]
    for impl, block, prof in runs:
        env = dict(os.environ, PROFILE="1" if prof else "0")
        if block:
            env["QS_ATTN_BLOCK_ELEMENTS"] = str(block)
        out = subprocess.run([sys.executable, __file__, "ops-worker", impl], env=env, capture_output=True, text=True)
        print(out.stdout.rstrip())
        if out.returncode != 0:
            print(out.stderr[-2000:])


def train_worker(impl: str, config: str) -> None:
    import train_step

    mode, size, batch = config.split(":")
    counter = iter(range(10**9))
    step_i = train_step.make_step(impl, mode, int(size), int(batch), "cuda")
    step = lambda: step_i(next(counter))  # noqa: E731
    ms = _time_ms(step, iters=20, warmup=5)
    print(f"\n# training iteration, {impl}, {mode} {size}², batch {batch}: {ms:.1f} ms wall per iteration")
    _profile(step, f"training iteration, {impl}", rows=20)


def train(config: str) -> None:
    for impl in ("ours", "ours_fast", "plain"):
        out = subprocess.run([sys.executable, __file__, "train-worker", impl, config], capture_output=True, text=True)
        print(out.stdout.rstrip())
        if out.returncode != 0:
            print(out.stderr[-2000:])


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "ops"
    if what == "ops":
        ops()
    elif what == "train":
        train(sys.argv[2] if len(sys.argv) > 2 else "global:256:1")
    elif what == "ops-worker":
        print(json.dumps(ops_worker(sys.argv[2])))
    elif what == "train-worker":
        train_worker(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(__doc__)
