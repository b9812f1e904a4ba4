//! Compile the C++ shim against the torch headers of the libtorch that tch links (the build
//! venv's torch with LIBTORCH_USE_PYTORCH=1), and link test binaries as every torch-using crate
//! does (openseek-torch-link). Where that torch is a CUDA build with CUDA's headers beside it, the
//! shim's CUDA graphs are compiled in (OSKERN_CUDA_GRAPHS) and libc10_cuda linked: the runtime
//! headers of the wheel's `nvidia/cu13/include`, and for the compiler-support headers it lacks
//! (`crt/`) those triton's wheel (a dependency of CUDA torch) brings, searched after it.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=src/shim.cpp");
    let lib = openseek_torch_link::link_libtorch().expect("torch-sys did not report DEP_TCH_LIBTORCH_LIB (build with LIBTORCH_USE_PYTORCH=1)");
    let include = Path::new(&lib).parent().unwrap().join("include");
    let cuda_include = Path::new(&lib).join("../../nvidia/cu13/include");
    let crt_include = Path::new(&lib).join("../../triton/backends/nvidia/include");
    let graphs = Path::new(&lib).join("libc10_cuda.so").exists()
        && cuda_include.join("cuda_runtime_api.h").exists()
        && (cuda_include.join("crt/host_config.h").exists() || crt_include.join("crt/host_config.h").exists());
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("src/shim.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-Wno-unused-parameter")
        .define("_GLIBCXX_USE_CXX11_ABI", "1");
    if graphs {
        build.include(&cuda_include).flag(format!("-idirafter{}", crt_include.display())).define("OSKERN_CUDA_GRAPHS", None);
        println!("cargo:rustc-link-search=native={lib}");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
    }
    build.compile("openseek_kernels_shim");
}
