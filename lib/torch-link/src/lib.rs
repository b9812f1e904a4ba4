//! The link arguments every crate whose binaries or tests run libtorch needs, for its build script:
//! keep libtorch_cuda (rustc's `--as-needed` would drop it, leaving CUDA unavailable) and add rpaths
//! to the build venv's torch/lib and to the GPU machines' torch/lib, so one binary runs in both places.
//! Link arguments do not propagate to dependents, so each such crate calls this from its build.rs
//! (and depends on torch-sys directly, which is what hands its build script `DEP_TCH_LIBTORCH_LIB`).

/// Where PyTorch lives on the GPU machines (TOOLCHAIN.md).
pub const GPU_MACHINES_TORCH_LIB: &str = "/opt/torch/.venv/lib/python3.12/site-packages/torch/lib";

/// Print the link arguments, and set `OPENSEEK_TORCH_LIB` (the build's torch/lib) and
/// `OPENSEEK_GPU_MACHINES_TORCH_LIB` ([`GPU_MACHINES_TORCH_LIB`]) for the crate's code, where the
/// loaders of torch's pip-installed CUDA libraries (NVRTC, NCCL) look; returns the build's libtorch
/// directory (None when torch-sys gave none).
pub fn link_libtorch() -> Option<String> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-env=OPENSEEK_GPU_MACHINES_TORCH_LIB={GPU_MACHINES_TORCH_LIB}");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").ok()?;
    println!("cargo:rustc-env=OPENSEEK_TORCH_LIB={lib}");
    if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,-ltorch,--as-needed");
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{GPU_MACHINES_TORCH_LIB}");
    Some(lib)
}
