//! Compiles the C++ of csrc/ (the autograd bridge, the optimiser's fused step, the fast path's
//! switches, CUDA graphs, the fused norm's backward) against the libtorch headers torch-sys uses, and
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
    // CUDA graphs (csrc/cuda_graph.cpp) need the CUDA runtime's headers, for its types. PyPI's
    // torch brings them in its nvidia wheels (site-packages/nvidia/cu13/include for torch 2.11's
    // CUDA 13 build) but without the compiler's crt/ headers that cuda_runtime.h includes;
    // triton, a dependency of that torch, bundles those. A CUDA toolkit (CUDA_HOME) has both.
    // Without them (a CPU-only torch) cuda_graph.cpp compiles to entry points that say so.
    let site = root.parent().map(PathBuf::from).unwrap_or_default();
    let mut candidates: Vec<PathBuf> = std::env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("include")).into_iter().collect();
    if let Ok(entries) = std::fs::read_dir(site.join("nvidia")) {
        candidates.extend(entries.filter_map(Result::ok).map(|e| e.path().join("include")));
    }
    candidates.push(site.join("triton/backends/nvidia/include"));
    let runtime_api = candidates.iter().find(|d| d.join("cuda_runtime_api.h").exists());
    let crt = candidates.iter().find(|d| d.join("crt/host_config.h").exists());
    let torch_cuda = lib.join("libtorch_cuda.so").exists() && lib.join("libc10_cuda.so").exists();
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let mut build = cc::Build::new();
    if let (Some(runtime_api), Some(crt), true) = (runtime_api, crt, torch_cuda) {
        build.include(runtime_api).include(crt).define("QS_WITH_CUDA", None);
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    build
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
        .file("csrc/mixed_precision.cpp")
        .file("csrc/cuda_graph.cpp")
        .file("csrc/norm_relu.cpp")
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
