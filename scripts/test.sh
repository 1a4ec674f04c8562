#!/usr/bin/env bash
# All tests: set everything up (see setup.sh), then the Rust tests (cargo test) and the Python
# tests (pytest) against the default torch release, then torch 2.11's wheel (the GPU machines'
# release) built and smoke-tested in its own venv (scripts/build_wheels.sh, test_wheels.sh).
# Fails if any fails or runs no test.
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

# The matrix's second release, as a user installs it: the default's wheel is built too, so the
# smoke set also checks that a wheel for another torch refuses to load with a clear ImportError.
default_release=$(sed 's/#.*//' torch-matrix.txt | awk 'NF == 2 {print $1; exit}')
bash scripts/build_wheels.sh "${default_release%.*}" 2.11
bash scripts/test_wheels.sh 2.11
