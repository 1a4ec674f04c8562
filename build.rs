//! Compiles the C++ of csrc/ (the autograd bridge, the optimiser's fused step, the divergence guard's finiteness test, the fast path's
//! switches, the fused norm's backward, leaky ReLU with a slope) against the libtorch headers torch-sys uses, and
//! lets `cargo test` binaries find libtorch without LD_LIBRARY_PATH, and records which torch
//! release the extension is compiled against (python/qs_attn/_build_info.py).
use std::path::{Path, PathBuf};

fn main() {
    // torch-sys (`links = "tch"`) exports its library folder, <site-packages>/torch/lib when
    // LIBTORCH_USE_PYTORCH=1; the headers are in ../include beside it.
    let lib = PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").expect("DEP_TCH_LIBTORCH_LIB is set by torch-sys"));
    let root = lib.parent().expect("libtorch lib folder has a parent").to_path_buf();
    let cxx11_abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={cxx11_abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/autograd_bridge.cpp")
        .file("csrc/optimizer.cpp")
        .file("csrc/finite_check.cpp")
        .file("csrc/mixed_precision.cpp")
        .file("csrc/norm_relu.cpp")
        .file("csrc/leaky_relu.cpp")
        .compile("qs_autograd_bridge");

    // Test binaries: an rpath to libtorch. Inside Python nothing is needed (`import torch`
    // has loaded libtorch before the extension).
    println!("cargo:rustc-link-arg-tests=-Wl,-rpath,{}", lib.display());
    // Nothing in a Rust binary references libtorch_cuda directly, so --as-needed would drop it
    // and CUDA would look unavailable to the Rust tests on a GPU machine.
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg-tests=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }

    write_build_info(&root);
}

/// The libtorch release of `root`: pip's torch/version.py, or a standalone libtorch's
/// build-version file.
fn torch_version(root: &Path) -> String {
    if let Ok(text) = std::fs::read_to_string(root.join("version.py")) {
        for line in text.lines() {
            // __version__ = '2.13.0+cu130'
            if let Some(value) = line.strip_prefix("__version__").and_then(|rest| rest.split(['\'', '"']).nth(1)) {
                return value.to_string();
            }
        }
    }
    match std::fs::read_to_string(root.join("build-version")) {
        Ok(text) => text.trim().to_string(),
        Err(_) => panic!("cannot tell the torch release of {}: neither version.py nor build-version", root.display()),
    }
}

/// Writes python/qs_attn/_build_info.py: the torch release compiled against (without its
/// local "+cu130" part), the commit of the sources (when the build script last ran), and the
/// releases of torch-matrix.txt. The package reads
/// it before loading the extension, so a wheel under another torch fails with an ImportError
/// that names both releases instead of an undefined symbol. Not in git: every build writes it.
fn write_build_info(torch_root: &Path) {
    println!("cargo:rerun-if-changed=torch-matrix.txt");
    let torch = torch_version(torch_root);
    let torch = torch.split('+').next().unwrap_or_default().to_string();
    let commit = git_commit().unwrap_or_else(|| "unknown".into());
    let matrix = std::fs::read_to_string("torch-matrix.txt").expect("torch-matrix.txt beside Cargo.toml");
    let supported: Vec<String> = matrix
        .lines()
        .filter_map(|line| line.split('#').next()?.split_whitespace().next())
        .map(|release| format!("{:?}", release.rsplit_once('.').map_or(release, |(minor, _patch)| minor)))
        .collect();
    let text = format!(
        "# Written by build.rs when the extension is compiled (not in git).\n\
         TORCH_VERSION = {torch:?}  # the libtorch release the extension is compiled against\n\
         GIT_COMMIT = {commit:?}\n\
         SUPPORTED_TORCH = ({},)  # the releases a wheel is built for (torch-matrix.txt)\n",
        supported.join(", ")
    );
    let path = Path::new("python/qs_attn/_build_info.py");
    if std::fs::read_to_string(path).ok().as_deref() != Some(text.as_str()) {
        std::fs::write(path, text).expect("write python/qs_attn/_build_info.py");
    }
}

/// The commit of the source tree, with "-dirty" when it has uncommitted changes; None outside git.
fn git_commit() -> Option<String> {
    let run = |args: &[&str]| std::process::Command::new("git").args(args).output().ok().filter(|o| o.status.success());
    let head = String::from_utf8(run(&["rev-parse", "HEAD"])?.stdout).ok()?.trim().to_string();
    let dirty = !run(&["status", "--porcelain", "--untracked-files=no"])?.stdout.is_empty();
    Some(if dirty { format!("{head}-dirty") } else { head })
}
