#!/usr/bin/env bash
# Builds one abi3 wheel per torch release of torch-matrix.txt into dist/, each compiled against
# its own tch and libtorch and requiring exactly its torch release:
#   dist/qs_attn-0.1.0+torch2.11-cp39-abi3-linux_x86_64.whl   (Requires-Dist: torch==2.11.*)
#
#   bash scripts/build_wheels.sh              # every release, in sequence
#   bash scripts/build_wheels.sh 2.11 2.13    # only these
#
# How each release is built, and what it keeps under matrix/: scripts/release_tree.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck disable=SC1091
source scripts/setup.sh
# shellcheck disable=SC1091
source scripts/release_tree.sh
root=$PWD

if [ $# -gt 0 ]; then
    releases=("$@")
else
    mapfile -t releases < <(sed 's/#.*//' torch-matrix.txt | awk 'NF == 2 {print $1}')
fi
for release in "${releases[@]}"; do
    release_tree "$release"
    echo "[wheels] torch $RELEASE_MINOR in $RELEASE_TREE"
    rm -f "dist/qs_attn-"*"+torch$RELEASE_MINOR-"*.whl
    (cd "$RELEASE_TREE" && env "${RELEASE_ENV[@]}" maturin build --release --out "$root/dist")
done
ls -l dist/*.whl
