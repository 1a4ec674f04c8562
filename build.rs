//! Compiles the C++ of csrc/ (the autograd bridge, the optimiser's fused step, the divergence guard's finiteness test, the fast path's
//! switches, the fused norm's backward, leaky ReLU with a slope) against the libtorch headers torch-sys uses, and
//! lets `cargo test` binaries find libtorch without LD_LIBRARY_PATH.
use std::path::PathBuf;

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
}
