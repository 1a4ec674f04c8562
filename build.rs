use std::path::PathBuf;

fn main() {
    // torch-sys has `links = "tch"` and prints `cargo:libtorch_lib=...`, so every crate that
    // depends on torch-sys directly sees DEP_TCH_LIBTORCH_LIB (= <site-packages>/torch/lib
    // when LIBTORCH_USE_PYTORCH=1). Headers live next to it in ../include.
    let lib = PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").expect("DEP_TCH_LIBTORCH_LIB"));
    let root = lib.parent().unwrap().to_path_buf();
    let cxx11_abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    println!("cargo:rerun-if-changed=csrc/autograd_bridge.cpp");
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
        .compile("qs_autograd_bridge");
    // Test binaries (cargo test) find libtorch via an rpath -> no LD_LIBRARY_PATH needed.
    // Not added to the cdylib: inside Python, `import torch` has already loaded libtorch.
    println!("cargo:rustc-link-arg-tests=-Wl,-rpath,{}", lib.display());
    // Without this, --as-needed drops libtorch_cuda.so from Rust-only binaries (nothing references
    // it directly) and tch::Cuda::is_available() is false even on a GPU box. Python is unaffected
    // (`import torch` loads libtorch_cuda itself).
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg-tests=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }

    // pyo3-tch force-enables pyo3/extension-module, so libpython is never linked. Test binaries
    // that embed Python (Python::with_gil in a #[test]) need it: link it for test targets only.
    let cfg = pyo3_build_config::get();
    if let (Some(dir), Some(name)) = (&cfg.lib_dir, &cfg.lib_name) {
        println!("cargo:rustc-link-arg-tests=-L{dir}");
        println!("cargo:rustc-link-arg-tests=-l{name}");
        println!("cargo:rustc-link-arg-tests=-Wl,-rpath,{dir}");
    } else {
        println!("cargo:warning=pyo3 config has no lib_dir/lib_name: {:?} {:?}", cfg.lib_dir, cfg.lib_name);
    }
}
