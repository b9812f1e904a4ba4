//! Compile the C++ shim against the torch headers of the libtorch that tch links (the build
//! venv's torch with LIBTORCH_USE_PYTORCH=1), and link test binaries as every torch-using crate
//! does (openseek-torch-link).

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=src/shim.cpp");
    let lib = openseek_torch_link::link_libtorch().expect("torch-sys did not report DEP_TCH_LIBTORCH_LIB (build with LIBTORCH_USE_PYTORCH=1)");
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
}
