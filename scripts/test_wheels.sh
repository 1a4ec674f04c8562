#!/usr/bin/env bash
# Installs each wheel of dist/ (from scripts/build_wheels.sh) into its own fresh venv with its
# torch from PyPI and runs the smoke set there: the ops against the plain-PyTorch transcription,
# the autograd bridge, one training iteration against the transcription, checkpoint
# save/resume and .pth export/import, the version check. Where dist/ holds another release's
# wheel too, that one is then installed over it and must fail to import with the ImportError
# naming both releases.
#
#   bash scripts/test_wheels.sh              # every wheel in dist/ (~3 min each, ~5 GB download)
#   bash scripts/test_wheels.sh 2.11         # only torch 2.11's
#   bash scripts/test_wheels.sh --venv-only 2.11   # only make its fresh venv (ahead of the build)
#
# The venvs (matrix/venv-torch<X.Y>, ~5 GB each) are kept, with qs-attn uninstalled again, so a
# second run downloads nothing; DROP_VENVS=1 deletes each after its smoke set.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
python=${PYTHON:-python3}
smoke=(
    tests/python/test_version.py
    tests/python/test_ops_vs_reference.py
    tests/python/test_bridge.py
    tests/python/test_trainer_step.py::test_one_step_losses_and_gradients_equal_the_transcription
    tests/python/test_training_run.py::test_resume_continues_exactly
    tests/python/test_training_run.py::test_pth_export_import_round_trip
)

if [ "${1:-}" = --venv-only ]; then
    # a fresh venv with torch X.Y, numpy and pytest only (also run ahead of the wheels' builds:
    # the download is the slow part); kept when already there and untouched since
    venv=$root/matrix/venv-torch$2
    if [ ! -f "$venv/.fresh" ] || [ "$("$venv/bin/python" -m pip list --format=freeze | grep -ci '^qs-attn=')" != 0 ]; then
        rm -rf "$venv"
        "$python" -m venv "$venv"
        "$venv/bin/python" -m pip install -q --upgrade pip
        "$venv/bin/python" -m pip install -q --no-cache-dir "torch==$2.*" numpy pytest
        touch "$venv/.fresh"
    fi
    exit 0
fi

wanted=("$@")
shopt -s nullglob
wheels=(dist/qs_attn-*+torch*-*.whl)
[ ${#wheels[@]} -gt 0 ] || { echo "no wheel in dist/: run scripts/build_wheels.sh first" >&2; exit 1; }
tested=0
for wheel in "${wheels[@]}"; do
    minor=$(basename "$wheel" | sed -E 's/^qs_attn-[^+]*\+torch([0-9.]+)-.*/\1/')
    if [ ${#wanted[@]} -gt 0 ] && ! printf '%s\n' "${wanted[@]}" | grep -qxF "$minor"; then
        continue
    fi
    echo "[wheels] $wheel: a fresh venv with torch $minor"
    venv=$root/matrix/venv-torch$minor
    # the user's situation: torch is there first; then pip, offered every wheel of dist/, has
    # to pick the one whose torch pin the installed torch satisfies
    bash scripts/test_wheels.sh --venv-only "$minor"
    "$venv/bin/python" -m pip install -q --no-index --find-links dist qs-attn
    installed=$("$venv/bin/python" -m pip show qs-attn | sed -n 's/^Version: //p')
    [ "$installed" = "$(basename "$wheel" | cut -d- -f2)" ] \
        || { echo "pip picked qs-attn $installed for torch $minor, not $wheel" >&2; exit 1; }
    (cd "$root/tests" && "$venv/bin/python" -c \
        'import qs_attn, sys; assert qs_attn.__file__.startswith(sys.prefix), qs_attn.__file__; print(qs_attn._version.version_line())')
    "$venv/bin/python" -m pytest -q -p no:cacheprovider "${smoke[@]}"

    for other in "${wheels[@]}"; do
        [ "$other" != "$wheel" ] || continue
        echo "[wheels] $other under torch $minor: must be a clear ImportError"
        "$venv/bin/python" -m pip install -q --no-deps --force-reinstall "$other"
        if message=$("$venv/bin/python" -c 'import qs_attn' 2>&1); then
            echo "$other imported under torch $minor" >&2; exit 1
        fi
        other_minor=$(basename "$other" | sed -E 's/^qs_attn-[^+]*\+torch([0-9.]+)-.*/\1/')
        echo "$message" | tail -1
        echo "$message" | tail -1 | grep -q "ImportError: qs-attn .* was built for torch $other_minor but torch $minor.* is installed.*qs-attn==.*+torch$minor" \
            || { echo "not the expected ImportError" >&2; exit 1; }
        break
    done
    "$venv/bin/python" -m pip uninstall -q -y qs-attn  # fresh again: torch, numpy and pytest only
    if [ "${DROP_VENVS:-0}" = 1 ]; then rm -rf "$venv"; fi
    tested=$((tested + 1))
done
[ "$tested" -gt 0 ] || { echo "no wheel in dist/ for ${wanted[*]}" >&2; exit 1; }
echo "[wheels] $tested wheel(s) passed their smoke set"
