# Sourced by scripts/build_wheels.sh and benches/prepare_gpu_check.sh (after scripts/setup.sh):
# `release_tree X.Y` prepares the build of qs-attn for torch release X.Y of torch-matrix.txt and
# sets RELEASE_TREE (the folder to run maturin / cargo in) and RELEASE_ENV (the environment to
# run them with, for `env "${RELEASE_ENV[@]}" ...`).
#
# The default release (the first row) is this tree as it is, against .venv's torch (setup.sh
# installs exactly that release), sharing the development build's target folder. Each other
# release, under matrix/ (gitignored):
#   libtorch-<torch>/torch  that torch wheel unpacked: headers and libraries, ~1.2 GB (linking
#                           needs libtorch only, not the CUDA wheels a pip install pulls)
#   torch<X.Y>/tree         a copy of this tree whose Cargo.toml pins the release's tch /
#                           torch-sys / pyo3-tch and whose pyproject.toml names the release
#                           (local version segment, torch pin); two tch versions cannot be
#                           optional dependencies of one manifest (`links = "tch"`)
#   target                  the cargo target folder the releases share (pyo3, image, ... are
#                           compiled once; each release adds its tch, libtorch wrapper, qs_attn)
release_tree() {
    local want=$1 root=$PWD rows row torch tch default_torch default_tch minor default_minor libtorch
    mapfile -t rows < <(sed 's/#.*//' torch-matrix.txt | awk 'NF == 2')
    read -r default_torch default_tch <<< "${rows[0]}"
    default_minor=${default_torch%.*}
    torch=""
    for row in "${rows[@]}"; do
        read -r torch tch <<< "$row"
        [ "${torch%.*}" = "$want" ] || [ "$torch" = "$want" ] && break
        torch=""
    done
    [ -n "$torch" ] || { echo "torch $want is not a release of torch-matrix.txt" >&2; return 1; }
    minor=${torch%.*}
    RELEASE_MINOR=$minor
    if [ "$torch" = "$default_torch" ]; then
        RELEASE_TREE=$root
        RELEASE_ENV=(LIBTORCH_USE_PYTORCH=1)
        return 0
    fi

    libtorch=$root/matrix/libtorch-$torch
    if [ ! -f "$libtorch/torch/version.py" ]; then
        rm -rf "$libtorch" && mkdir -p "$libtorch"
        python -m pip download -q --no-deps --only-binary=:all: --no-cache-dir "torch==$torch" -d "$libtorch"
        (cd "$libtorch" && python -m zipfile -e torch-*.whl . && rm torch-*.whl)
    fi

    RELEASE_TREE=$root/matrix/torch$minor/tree
    mkdir -p "$RELEASE_TREE"
    # the working tree as git sees it (tracked and new files; nothing ignored, no build output),
    # copied over the last copy with the files' times, so cargo rebuilds only what changed (a file
    # deleted here stays there: rm -rf matrix/torch<X.Y> when that matters)
    git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
        | tar -cf - --null -T - | tar -xf - -C "$RELEASE_TREE"
    # build.rs writes python/qs_attn/_build_info.py; a first copy lacks it: make cargo run build.rs
    [ -f "$RELEASE_TREE/python/qs_attn/_build_info.py" ] || touch "$RELEASE_TREE/build.rs"
    sed -i -E "s/^(tch|torch-sys|pyo3-tch)( = .*)\"=$default_tch\"/\1\2\"=$tch\"/" "$RELEASE_TREE/Cargo.toml"
    sed -i -e "s/^version = \"\(.*\)+torch$default_minor\"/version = \"\1+torch$minor\"/" \
           -e "s/\"torch==$default_minor\.\*\"/\"torch==$minor.*\"/" "$RELEASE_TREE/pyproject.toml"
    [ "$(grep -c "\"=$tch\"" "$RELEASE_TREE/Cargo.toml")" -eq 3 ] \
        || { echo "Cargo.toml: the tch pins were not rewritten" >&2; return 1; }
    grep -q "+torch$minor\"" "$RELEASE_TREE/pyproject.toml" && grep -q "\"torch==$minor\.\*\"" "$RELEASE_TREE/pyproject.toml" \
        || { echo "pyproject.toml: the version or the torch pin was not rewritten" >&2; return 1; }
    # LIBTORCH (not LIBTORCH_USE_PYTORCH): link the unpacked release, not .venv's torch
    RELEASE_ENV=(-u LIBTORCH_USE_PYTORCH "LIBTORCH=$libtorch/torch" LIBTORCH_CXX11_ABI=1
                 "CARGO_TARGET_DIR=$root/matrix/target")
}
