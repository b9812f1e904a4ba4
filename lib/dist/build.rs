//! Link libtorch as lib/model's build script does (keep libtorch_cuda, rpaths to the build venv's
//! torch/lib and to the GPU machines'), and tell the NCCL loader where this torch lives.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return };
    if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,-ltorch,--as-needed");
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    println!("cargo:rustc-link-arg=-Wl,-rpath,/opt/torch/.venv/lib/python3.12/site-packages/torch/lib");
    println!("cargo:rustc-env=OPENSEEK_TORCH_LIB={lib}");
}
