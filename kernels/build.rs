//! Compile the C++ shim against the torch headers of the libtorch that tch links (the build
//! venv's torch with LIBTORCH_USE_PYTORCH=1), and link test binaries like lib/model's: keep
//! libtorch_cuda and add rpaths to the build venv's and the GPU machines' torch/lib.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/shim.cpp");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys did not report DEP_TCH_LIBTORCH_LIB (build with LIBTORCH_USE_PYTORCH=1)");
    let include = Path::new(&lib).parent().unwrap().join("include");
    cc::Build::new()
        .cpp(true)
        .file("src/shim.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-Wno-unused-parameter")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .compile("openseek_kernels_shim");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,-ltorch,--as-needed");
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    println!("cargo:rustc-link-arg=-Wl,-rpath,/opt/torch/.venv/lib/python3.12/site-packages/torch/lib");
}
