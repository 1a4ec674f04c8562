#!/usr/bin/env bash
# All tests: set everything up (see setup.sh), then the Rust tests (cargo test) and the Python
# tests (pytest). Fails if either fails or runs no test.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

cargo_log=$(mktemp)
cargo test --release 2>&1 | tee "$cargo_log"
rust_passed=$(grep -Eo "test result: ok\. [0-9]+ passed" "$cargo_log" | awk '{s += $4} END {print s + 0}')
rm -f "$cargo_log"
if [ "$rust_passed" -eq 0 ]; then
    echo "cargo test ran no test" >&2
    exit 1
fi

# pytest exits 5 when it collects nothing: that fails this script too.
python -m pytest -q tests/python "$@"
