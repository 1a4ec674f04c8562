#!/usr/bin/env bash
# The GPU checks, for the lent GPU machine (torch 2.11.0+cu130, Python 3.12, no package
# registry). Prepare here with `bash benches/gpu/prepare_gpu_check.sh`, then run on the device with
# `bash benches/gpu/gpu_check.sh [sections...]` carrying `dist` and `gpu_carry`.
# Sections (default: all, in this order): tests, profile, train, curves, ops.
#   tests    the CUDA tests: pytest (ops, trainer, fast path, autocast) and the Rust tests
#   profile  where the time goes: the QS op step at 64² (eager and CUDA-graph replay), a
#            training iteration at 256² (profile-ops: the op step only; profile-512, not in
#            the default list: a training iteration at 512²)
#   train    benches/train_step.py: the configurations, ours vs the transcription,
#            the bytes held for backward at 256² batch 4 (benches/diagnostics/saved_tensors.py), and the
#            fast path (bf16 + channels-last) against float32 at 256², batch 1 and 4, and
#            the copy ops of an iteration of each (benches/diagnostics/layout_copies.py)
#   curves   benches/diagnostics/fast_path_curves.py: loss curves float32 vs the fast path
#   ops      benches/bench_ops.py at 64²
# Everything printed also goes to $OUT/log.txt; the curves' PNG to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
sections=${*:-tests profile train curves ops}
stamp() { echo "== [$(date +%T)] $*"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site dist/qs_attn-*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -c "import torch, qs_attn; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), qs_attn.__file__)"
git log -1 --format='commit %h %s' 2>/dev/null || true

for section in $sections; do
    case $section in
    tests)
        stamp "Python CUDA tests"
        timeout 240 python3 -m pytest -q -p no:cacheprovider tests/python/test_cuda.py tests/python/test_cuda_training.py \
            tests/python/test_fast_path.py tests/python/test_bad_input.py tests/python/test_compile.py -k "cuda or device" \
            -rf --tb=short 2>&1 | tail -60
        stamp "Rust tests on CUDA"
        torch_lib=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
        for t in gpu_carry/*; do
            LD_LIBRARY_PATH="$torch_lib" timeout 120 "$t" 2>&1 | grep -E "FAILED|panicked|test result"
        done
        ;;
    profile|profile-ops)
        stamp "Profile: QS op step"
        timeout 150 python3 benches/gpu/profile_gpu.py ops
        if [ "$section" = profile ]; then
            stamp "Profile: training iteration"
            timeout 150 python3 benches/gpu/profile_gpu.py train
        fi
        ;;
    profile-512)
        stamp "Profile: training iteration at 512²"
        timeout 200 python3 benches/gpu/profile_gpu.py train global:512:1
        ;;
    train)
        stamp "Training iteration benchmark"
        timeout 300 python3 benches/train_step.py --device cuda --configs none:256:1 global:256:1 local:256:1 \
            local_global:256:1 global:256:4 none:512:1 global:512:1
        stamp "Bytes held for backward (the same as on the CPU?)"
        timeout 120 python3 benches/diagnostics/saved_tensors.py --device cuda --configs global:256:4
        stamp "Fast path vs float32"
        # batch 1 is bound by kernel launches on an H200, batch 4 by the GPU's arithmetic
        timeout 240 python3 benches/train_step.py --device cuda --configs global:256:1 global:256:4 --fast
        stamp "Copy ops per iteration: float32 vs the fast path"
        timeout 90 python3 benches/diagnostics/layout_copies.py --device cuda --size 256
        ;;
    curves)
        stamp "Loss curves: float32 vs the fast path"
        timeout 200 python3 benches/diagnostics/fast_path_curves.py --device cuda --size 256 --iters 300 --window 100 --out "$OUT"
        ;;
    ops)
        stamp "Op benchmark at 64²"
        timeout 150 python3 benches/bench_ops.py --device cuda --sizes 64
        ;;
    esac
done
stamp "done"
