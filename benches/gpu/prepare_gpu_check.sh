#!/usr/bin/env bash
# Builds what benches/gpu/gpu_check.sh needs on the GPU machine: the abi3 wheel (dist/) and the
# Rust test binaries (gpu_carry/). Both folders are git-ignored.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/setup.sh"
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/release_tree.sh"
rm -rf dist gpu_carry && mkdir -p gpu_carry
# the GPU machines run torch 2.11: its wheel, and test binaries linked against its libtorch
bash scripts/build_wheels.sh 2.11
release_tree 2.11
for name in bridge ops; do
    bin=$(cd "$RELEASE_TREE" && env "${RELEASE_ENV[@]}" cargo test --release --no-run --message-format=json 2>/dev/null \
        | python -c "import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get('reason') == 'compiler-artifact' and m['target']['name'] == '$name' and m.get('executable'):
        print(m['executable'])")
    cp "$bin" "gpu_carry/$name"
done
ls -la dist gpu_carry
