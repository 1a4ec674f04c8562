#!/usr/bin/env bash
# The GPU checks of the ops, for the lent GPU machine (torch 2.11.0+cu130, Python 3.12, no
# package registry). Prepare here with `bash benches/prepare_gpu_check.sh`, then run on the
# device with `bash benches/gpu_check.sh` carrying `dist` and `gpu_carry`.
# Installs the carried abi3 wheel, runs the CUDA tests (Python and Rust) and the op benchmark.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site dist/qs_attn-*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -c "import torch, qs_attn; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), qs_attn.__file__)"

echo "== Python CUDA tests"
python3 -m pytest -q -p no:cacheprovider tests/python/test_cuda.py 2>&1 | tee "$OUT/pytest_cuda.txt" | tail -15

echo "== Rust tests on CUDA"
torch_lib=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
for t in gpu_carry/*; do
    LD_LIBRARY_PATH="$torch_lib" "$t" 2>&1 | grep -E "^test |test result"
done

echo "== Profile of the global step"
PROFILE=1 python3 benches/profile_gpu.py 2>&1 | tee "$OUT/profile_gpu.txt" | head -60
for b in 1048576 4194304 16777216; do QS_ATTN_BLOCK_ELEMENTS=$b python3 benches/profile_gpu.py; done

echo "== Op benchmark (CUDA)"
python3 benches/bench_ops.py --device cuda --sizes 64 128 --json "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/bench_gpu.txt"
