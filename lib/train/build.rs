//! Link libtorch so that the tests of this crate run here and on the GPU machines: keep
//! libtorch_cuda (rustc's `--as-needed` would drop it, leaving CUDA unavailable) and add rpaths to
//! the build venv's torch/lib and to the GPU machines' torch/lib. Binaries that use this crate
//! carry the same few lines in their own build script (link arguments do not propagate).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return };
    if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,-ltorch,--as-needed");
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    println!("cargo:rustc-link-arg=-Wl,-rpath,/opt/torch/.venv/lib/python3.12/site-packages/torch/lib");
}
